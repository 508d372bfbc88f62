//! The fast path's per-packet decision, sans-IO: `ChannelTable::route` (generation compare,
//! source check, peer lookup, atomic rate limit) and `ChannelTable::process` (header parse
//! first), for 1 pair and 1,000 pairs, 160 B and 1200 B datagrams. No sockets: this is the
//! relay's own CPU cost per forwarded packet, before the kernel's. Also the same lookup from
//! several threads at once over one shared table (`fastpath_route_contended`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duet_proto::fastpath::{FastPathHeader, FastPathKey, FastPathTicket, PacketType};
use duet_proto::MediaKind;
use duet_relay::fastpath::ChannelTable;
use duet_relay::forward::MediaLimits;

fn addr(i: u32, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)), port)
}

/// A table with `pairs` bound sessions; returns (table, [(channel, src, datagram)]).
fn setup(pairs: u32, len: usize) -> (ChannelTable, Vec<(FastPathHeader, SocketAddr, Vec<u8>)>) {
    let key = FastPathKey::new(&[1u8; 32]).unwrap();
    let table = ChannelTable::new(pairs, key.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut senders = Vec::new();
    for p in 0..pairs {
        let chans = table
            .allocate(MediaLimits {
                packets_per_sec: u32::MAX,
                bytes_per_sec: u64::MAX / 4,
            })
            .unwrap();
        for (side, ch) in chans.into_iter().enumerate() {
            let src = addr(p * 2 + side as u32, 40_000 + side as u16);
            let t = FastPathTicket {
                channel: ch,
                ip: src.ip(),
                expires_unix: now + 3600,
                seq: 0,
            };
            table.bind(src, ch, &t.encode(&key), now).unwrap();
            let h = FastPathHeader::new(PacketType::Media(MediaKind::Video), ch);
            let mut d = h.to_bytes().to_vec();
            d.resize(len, 0xA5);
            senders.push((h, src, d));
        }
    }
    (table, senders)
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("fastpath_route");
    g.throughput(Throughput::Elements(1));
    for pairs in [1u32, 1000] {
        for len in [160usize, 1200] {
            let (table, senders) = setup(pairs, len);
            let id = format!("{pairs}pairs/{len}B");
            g.bench_function(BenchmarkId::new("route", &id), |b| {
                let mut i = 0usize;
                b.iter(|| {
                    let (h, src, d) = &senders[i % senders.len()];
                    i = i.wrapping_add(7);
                    black_box(table.route(
                        *src,
                        black_box(h.channel),
                        MediaKind::Video,
                        d.len(),
                        Instant::now(),
                    ))
                })
            });
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            g.bench_function(BenchmarkId::new("process", &id), |b| {
                let mut i = 0usize;
                b.iter(|| {
                    let (_, src, d) = &senders[i % senders.len()];
                    i = i.wrapping_add(7);
                    black_box(table.process(*src, black_box(d), Instant::now(), unix))
                })
            });
        }
    }
    // The cost of a drop for a spoofed source (an attacker's packet).
    let (table, senders) = setup(1, 160);
    let (h, _, d) = &senders[0];
    let spoof = addr(999, 1);
    g.bench_function("route/spoofed_drop", |b| {
        b.iter(|| {
            black_box(table.route(
                spoof,
                black_box(h.channel),
                MediaKind::Video,
                d.len(),
                Instant::now(),
            ))
        })
    });
    g.finish();
}

/// The session lookup under contention: every worker thread routes over the same shared
/// table at once (as SO_REUSEPORT workers do), 1,000 bound pairs, each thread on its own
/// senders (like flows spread by 4-tuple) or all on the same pair (one hot call).
/// Time per routed packet per thread; compare with 1 thread to see what sharing costs.
fn bench_route_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("fastpath_route_contended");
    g.throughput(Throughput::Elements(1));
    let (table, senders) = setup(1000, 1200);
    let threads_max = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    for threads in [1usize, 2, threads_max] {
        for hot in [false, true] {
            let id = format!(
                "{threads}threads/{}",
                if hot { "one_pair" } else { "spread" }
            );
            g.bench_function(BenchmarkId::new("route", &id), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let (table, senders) = (&table, &senders);
                            s.spawn(move || {
                                let mut i = if hot { 0 } else { t * 97 };
                                for _ in 0..iters {
                                    let (h, src, d) = &senders[i % senders.len()];
                                    if !hot {
                                        i = i.wrapping_add(7);
                                    }
                                    black_box(table.route(
                                        *src,
                                        black_box(h.channel),
                                        MediaKind::Video,
                                        d.len(),
                                        Instant::now(),
                                    ))
                                    .ok();
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_route, bench_route_contended);
criterion_main!(benches);

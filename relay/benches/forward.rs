//! The per-datagram relay step, sans-IO: header parse + slot lookup + rate-limit check +
//! hand-off decision (`duet_relay::forward::forward_step`), on datagrams of typical sizes.
//! No sockets: this is the relay's own CPU cost per forwarded packet, before quinn's.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duet_proto::{MediaHeader, MediaKind};
use duet_relay::forward::forward_step;
use duet_relay::forward::MediaLimiter;

/// Stands in for the peer's connection handle.
struct Peer {
    forwarded: std::sync::atomic::AtomicU64,
}

fn datagram(kind: MediaKind, len: usize) -> Bytes {
    let mut v = MediaHeader::new(kind).to_bytes().to_vec();
    v.resize(len, 0xA5);
    Bytes::from(v)
}

fn bench_forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_step");
    for (kind, len) in [(MediaKind::Audio, 120usize), (MediaKind::Video, 1150)] {
        let d = datagram(kind, len);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new(kind.as_str(), len), &d, |b, d| {
            let peer = ArcSwapOption::from(Some(Arc::new(Peer {
                forwarded: Default::default(),
            })));
            // Limits high enough that the bench measures the pass path.
            let limiter = MediaLimiter::new(u32::MAX, u64::MAX / 4, Instant::now());
            b.iter(|| {
                let now = Instant::now();
                match forward_step(black_box(d), &limiter, &peer, now) {
                    Ok((k, to)) => {
                        if let Some(p) = to.as_ref() {
                            // The hand-off: a clone of the same Bytes, as send_datagram takes.
                            let out = d.clone();
                            p.forwarded
                                .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        black_box(k);
                    }
                    Err(r) => {
                        black_box(r);
                    }
                }
            });
        });
    }
    // The drop path for a bad header (never reaches the limiter or the lookup).
    let bad = Bytes::from_static(&[9, 1, 0, 0]);
    g.bench_function("bad_header", |b| {
        let peer: ArcSwapOption<Peer> = ArcSwapOption::empty();
        let limiter = MediaLimiter::new(1000, 1_000_000, Instant::now());
        b.iter(|| {
            black_box(forward_step(black_box(&bad), &limiter, &peer, Instant::now()).is_err())
        });
    });
    g.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);

//! The measured window of the raw targets (baseline, fastpath, turn), spread over
//! `--threads` generator workers so the generator is not one thread's worth of CPU.
//!
//! Owns the split of the pairs over workers (contiguous, both endpoints of a pair in the
//! same worker, each worker's share of the total rate proportional to its endpoints; with
//! `--addressing ips` a worker is exactly the endpoints of one shared socket), the
//! connection of per-endpoint sockets to their destination (so each send reuses the
//! socket's cached route), one pacer thread and one receiver thread per worker, one shared
//! start instant so the shares add up to a smooth total, and the merge of their counters
//! and histograms. Loss and latency stay exact with any number of workers: each packet is
//! counted once by the pacer that sent it and once by the receiver of its peer's worker,
//! and all stamps come from the one CLOCK_MONOTONIC. It does not set anything up (see
//! `udpbench`) nor read any other process.

use std::io;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::udp::{self, RecvStats, SendStats, BATCH};
use crate::udpnet::{Addressing, Net};

/// How far ahead of now the workers' shared start instant is set, so every pacer thread
/// is running before the first tick.
const START_DELAY: Duration = Duration::from_millis(5);

/// The endpoints of a window. Vectors indexed by endpoint are `net.endpoints()` long.
pub struct Endpoints {
    pub net: Arc<Net>,
    /// Endpoints that send, pairs adjacent: `[2i]` and `[2i + 1]` are a pair (all of
    /// `net`'s, or only the pairs that were set up).
    pub active: Vec<usize>,
    /// Where each endpoint sends.
    pub dests: Vec<SocketAddrV4>,
    /// Header each endpoint's packets start with.
    pub prefixes: Vec<Vec<u8>>,
    /// Header packets arriving at each endpoint must start with (its peer's, as relayed).
    pub expect: Arc<Vec<Vec<u8>>>,
}

/// The load of a window.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Total packets per second over all active endpoints.
    pub pps: f64,
    pub duration: Duration,
    /// UDP payload per packet, header included.
    pub size: usize,
    /// Generator workers asked for (capped at one per pair).
    pub threads: usize,
}

/// Endpoint ranges of the workers: the pairs split as evenly as possible, in order, at most
/// one worker per pair and at least one range.
pub fn split(endpoints: usize, threads: usize) -> Vec<Range<usize>> {
    let pairs = endpoints / 2;
    let n = threads.clamp(1, pairs.max(1));
    (0..n)
        .map(|t| 2 * (t * pairs / n)..2 * ((t + 1) * pairs / n))
        .collect()
}

/// One worker: the endpoints it sends from and the sockets it receives on.
#[derive(Debug, PartialEq)]
struct Worker {
    senders: Vec<usize>,
    sockets: Vec<usize>,
}

/// `ports`: the active pairs split over `threads`; `ips`: one worker per shared socket.
fn workers(net: &Net, active: &[usize], threads: usize) -> Vec<Worker> {
    let groups: Vec<Vec<usize>> = match net.addressing() {
        Addressing::Ports => split(active.len(), threads)
            .into_iter()
            .map(|r| active[r].to_vec())
            .collect(),
        Addressing::Ips => (0..net.sockets())
            .map(|s| {
                active
                    .iter()
                    .copied()
                    .filter(|&e| net.owner(e) == s)
                    .collect()
            })
            .collect(),
    };
    groups
        .into_iter()
        .filter(|g: &Vec<usize>| !g.is_empty())
        .map(|senders| Worker {
            sockets: net.sockets_of(senders.iter().copied()),
            senders,
        })
        .collect()
}

/// What a window did.
#[derive(Debug, Default)]
pub struct WindowStats {
    pub send: SendStats,
    pub recv: RecvStats,
    /// Workers used.
    pub threads: usize,
}

/// Runs one window: receivers on, `on_start()`, every pacer from one start instant, the
/// drain, `on_drained()`, receivers off. Bounded by `load.duration` plus the drain.
pub fn run(
    eps: &Endpoints,
    load: &Load,
    on_start: impl FnOnce(),
    on_drained: impl FnOnce(),
) -> io::Result<WindowStats> {
    for &e in &eps.active {
        eps.net.connect(e, eps.dests[e])?;
    }
    let ws = workers(&eps.net, &eps.active, load.threads);
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicU64::new(0));
    let mut rxs = Vec::with_capacity(ws.len());
    for w in &ws {
        match udp::spawn_receiver(
            eps.net.clone(),
            w.sockets.clone(),
            eps.expect.clone(),
            stop.clone(),
            live.clone(),
        ) {
            Ok(h) => rxs.push(h),
            Err(e) => {
                stop.store(true, Relaxed);
                rxs.into_iter().for_each(|h| drop(h.join()));
                return Err(e);
            }
        }
    }
    on_start();
    let t0 = udp::now_ns() + START_DELAY.as_nanos() as u64;
    let mut out = WindowStats {
        threads: ws.len(),
        ..WindowStats::default()
    };
    let total = eps.active.len().max(1) as f64;
    let mut spawn_err = None;
    std::thread::scope(|scope| {
        let mut txs = Vec::with_capacity(ws.len());
        for w in &ws {
            let share = load.pps * w.senders.len() as f64 / total;
            let prefixes: Vec<Vec<u8>> =
                w.senders.iter().map(|&e| eps.prefixes[e].clone()).collect();
            let (net, senders, dests) = (&eps.net, &w.senders, &eps.dests);
            let spawned = std::thread::Builder::new()
                .name("lt-udp-tx".into())
                .spawn_scoped(scope, move || {
                    let (mut ge, mut gd) = (
                        [0usize; BATCH],
                        [SocketAddrV4::new([0; 4].into(), 0); BATCH],
                    );
                    udp::pace_at(
                        t0,
                        &prefixes,
                        share,
                        load.duration,
                        load.size,
                        |local, bufs| {
                            for (i, &l) in local.iter().enumerate() {
                                ge[i] = senders[l];
                                gd[i] = dests[ge[i]];
                            }
                            net.send_batch(&ge[..local.len()], &gd[..local.len()], bufs)
                        },
                    )
                });
            match spawned {
                Ok(h) => txs.push(h),
                Err(e) => {
                    // The pacers already running stop at the next tick.
                    udp::STOP.store(true, Relaxed);
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        for h in txs {
            match h.join() {
                Ok(st) => out.send.merge(&st),
                Err(_) => spawn_err = Some(io::Error::other("a pacer thread panicked")),
            }
        }
    });
    if !out.send.interrupted && spawn_err.is_none() {
        std::thread::sleep(udp::DRAIN);
    }
    on_drained();
    stop.store(true, Relaxed);
    for h in rxs {
        match h.join() {
            Ok(st) => out.recv.merge(&st),
            Err(_) => spawn_err = Some(io::Error::other("a receiver thread panicked")),
        }
    }
    match spawn_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_evenly_and_never_apart() {
        assert_eq!(split(2, 4), vec![0..2]);
        assert_eq!(split(8, 1), vec![0..8]);
        assert_eq!(split(8, 2), vec![0..4, 4..8]);
        assert_eq!(split(10, 2), vec![0..4, 4..10]);
        assert_eq!(split(0, 3), vec![0..0]);
        let r = split(2000, 3);
        assert_eq!(r.len(), 3);
        assert_eq!(r.first().map(|r| r.start), Some(0));
        assert_eq!(r.last().map(|r| r.end), Some(2000));
        for w in r.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(r
            .iter()
            .all(|r| r.start % 2 == 0 && r.len() % 2 == 0 && r.len() >= 666));
    }

    /// Several workers over real loopback sockets in both layouts: every endpoint sends to
    /// its peer directly (a pair is its own forwarder), so nothing may be lost, latency
    /// merges exactly, and every worker's share of the rate is sent; an inactive pair
    /// sends nothing.
    fn loopback_window(addressing: Addressing) {
        let nep = 10;
        let net = Net::bind(nep, &split(nep, 3), addressing).unwrap();
        let dests: Vec<_> = (0..nep).map(|e| net.local(e ^ 1)).collect();
        let prefixes: Vec<Vec<u8>> = (0..nep as u64).map(|e| e.to_be_bytes().to_vec()).collect();
        let expect: Vec<Vec<u8>> = (0..nep).map(|e| prefixes[e ^ 1].clone()).collect();
        let eps = Endpoints {
            net: Arc::new(net),
            active: vec![0, 1, 2, 3, 6, 7, 8, 9],
            dests,
            prefixes,
            expect: Arc::new(expect),
        };
        let load = Load {
            pps: 2000.0,
            duration: Duration::from_millis(300),
            size: 64,
            threads: 3,
        };
        let (mut started, mut drained) = (false, false);
        let st = run(&eps, &load, || started = true, || drained = true).unwrap();
        assert!(started && drained);
        assert_eq!(st.threads, 3, "{addressing:?}");
        assert!(st.send.sent > 300, "{:?}", st.send);
        assert_eq!(st.send.send_failed, 0);
        assert_eq!(st.recv.received, st.send.sent, "{addressing:?}");
        assert_eq!(st.recv.bad, 0);
        assert_eq!(st.recv.latency.count(), st.recv.received);
        assert_eq!(st.recv.received_bytes, 64 * st.recv.received);
    }

    #[test]
    fn workers_merge_exactly_over_loopback_ports() {
        loopback_window(Addressing::Ports);
    }

    #[test]
    fn workers_merge_exactly_over_loopback_ips() {
        loopback_window(Addressing::Ips);
    }
}

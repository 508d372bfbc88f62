//! The running fast path: its worker threads and sockets, and what the QUIC side asks of it
//! at run time (send a bridged packet, sum the counters).
//!
//! Owns the lifecycle: `start` draws the ticket key (random per process, see
//! `FastPathConfig`), builds the channel table, binds one `SO_REUSEPORT` socket per worker on
//! one port (the kernel spreads flows over them by 4-tuple; the table is shared, so a flow that
//! lands on another worker after a NAT change still finds its channel) and `stop` joins the
//! threads. What the session core needs (channels, offers) it gets as a [`FastPathPlane`]
//! from [`FastPathService::plane`]. It does not own the session rules (`session`), the QUIC
//! connections (`quic`), or the per-packet decision (`table`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duet_proto::fastpath::{FastPathHeader, FastPathKey, PacketType, FASTPATH_HEADER_LEN};
use duet_proto::{ChannelId, MediaKind};

use super::plane::FastPathPlane;
use super::socket::{FastPathSocket, Offload};
use super::steering::Steering;
use super::table::{BindOutcome, ChannelTable};
use super::worker::{run_worker, ControlPlane, WorkerConfig, WorkerCounters};
use crate::config::FastPathConfig;
use crate::forward::DropReason;

/// How often a worker wakes up without traffic to check its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often the active-worker count is reconsidered.
const STEER_INTERVAL: Duration = Duration::from_millis(250);
/// Largest bridged packet: a QUIC datagram payload is below this by far.
const BRIDGE_BUF: usize = 2048;

/// Every worker's counters summed (what `/metrics` shows).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FastPathTotals {
    pub received: u64,
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    pub bridged_to_quic: u64,
    pub binds: [u64; BindOutcome::COUNT],
    pub drops: [u64; DropReason::COUNT],
}

/// The fast path of one relay.
pub struct FastPathService {
    plane: FastPathPlane,
    local_addr: SocketAddr,
    offload: Offload,
    /// A handle on worker 0's socket: bridged packets leave from the fast-path port.
    sender: FastPathSocket,
    counters: Vec<Arc<WorkerCounters>>,
    /// Workers that take new datagrams (all of them unless adaptive steering is on).
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<io::Result<()>>>>,
}

impl std::fmt::Debug for FastPathService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPathService")
            .field("local_addr", &self.local_addr)
            .field("workers", &self.counters.len())
            .finish_non_exhaustive()
    }
}

impl FastPathService {
    /// Binds the sockets on `listen` and starts the workers over a table of `capacity`
    /// sessions. `control` is how workers reach QUIC endpoints and confirm binds.
    pub fn start(
        cfg: &FastPathConfig,
        listen: SocketAddr,
        capacity: u32,
        control: Arc<dyn ControlPlane>,
    ) -> io::Result<Self> {
        let secret: [u8; 32] = rand::random();
        let key = FastPathKey::new(&secret).map_err(|e| io::Error::other(e.to_string()))?;
        let table = Arc::new(ChannelTable::new(capacity, key.clone()));
        let probed = Offload::probe();
        let wanted = Offload {
            gro: probed.gro && cfg.gro,
            gso: probed.gso && cfg.gso,
        };
        let first = FastPathSocket::bind_with(listen, STOP_POLL, wanted)?;
        let offload = first.offload();
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..cfg.worker_count() {
            // Same port: joins the first socket's SO_REUSEPORT group.
            sockets.push(FastPathSocket::bind_with(local_addr, STOP_POLL, wanted)?);
        }
        let sender = sockets[0].try_clone()?;
        let active = Arc::new(AtomicUsize::new(sockets.len()));
        // Adaptive: one active worker until the load asks for more (see `steering`). A
        // kernel that refuses the program leaves the 4-tuple hash over every socket.
        let steer = if cfg.adaptive_workers && sockets.len() > 1 {
            match sockets[0].steer(1) {
                Ok(()) => {
                    active.store(1, Ordering::Relaxed);
                    Some(sockets[0].try_clone()?)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fast path: cannot steer the reuseport group; every worker takes datagrams");
                    None
                }
            }
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let worker_cfg = WorkerConfig {
            coalesce: cfg.coalesce(),
            busy_poll: cfg.busy_poll(),
            ..WorkerConfig::default()
        };
        let mut counters = Vec::new();
        let mut threads = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let c = Arc::new(WorkerCounters::default());
            counters.push(c.clone());
            let (table, control, flag) = (table.clone(), control.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("duet-fastpath-{i}"))
                .spawn(move || {
                    let r = run_worker(&sock, &table, control.as_ref(), &c, &flag, worker_cfg);
                    if let Err(e) = &r {
                        tracing::error!(worker = i, error = %e, "fast-path worker stopped");
                    }
                    r
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        if let Some(sock) = steer {
            let (counters, flag, active) = (counters.clone(), stop.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("duet-fastpath-steer".into())
                .spawn(move || {
                    run_steering(&sock, &counters, &active, &flag);
                    Ok(())
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        tracing::info!(
            addr = %local_addr,
            workers = counters.len(),
            adaptive_workers = cfg.adaptive_workers,
            coalesce_us = cfg.coalesce_us,
            busy_poll_us = cfg.busy_poll_us,
            offload = %offload.describe(),
            "fast path listening"
        );
        Ok(Self {
            plane: FastPathPlane::new(
                table,
                key,
                local_addr.port(),
                cfg.advertise,
                cfg.ticket_ttl(),
            ),
            local_addr,
            offload,
            sender,
            counters,
            active,
            stop,
            threads: Mutex::new(threads),
        })
    }

    pub fn table(&self) -> &ChannelTable {
        self.plane.table()
    }

    /// Channels and offers, for the session core.
    pub fn plane(&self) -> FastPathPlane {
        self.plane.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// Sends a packet that came over QUIC to a fast-path endpoint at `to`:
    /// `header(kind, from_channel) | payload`, the same shape a fast-path sender produces.
    /// Never blocks and never allocates; false when it could not be sent.
    pub fn send_bridged(
        &self,
        to: SocketAddr,
        kind: MediaKind,
        from_channel: ChannelId,
        payload: &[u8],
    ) -> bool {
        let len = FASTPATH_HEADER_LEN + payload.len();
        let mut buf = [0u8; BRIDGE_BUF];
        let Some(out) = buf.get_mut(..len) else {
            return false;
        };
        out[..FASTPATH_HEADER_LEN].copy_from_slice(
            &FastPathHeader::new(PacketType::Media(kind), from_channel).to_bytes(),
        );
        out[FASTPATH_HEADER_LEN..].copy_from_slice(payload);
        self.sender.send_to_now(out, to).is_ok()
    }

    /// Worker threads started.
    pub fn workers(&self) -> usize {
        self.counters.len()
    }

    /// Workers that take new datagrams now (see `steering`).
    pub fn active_workers(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Worker `i`'s counters (datagrams per call, who took what).
    pub fn worker_counters(&self, i: usize) -> Option<&WorkerCounters> {
        self.counters.get(i).map(|c| c.as_ref())
    }

    /// The workers' counters, summed.
    pub fn totals(&self) -> FastPathTotals {
        let mut t = FastPathTotals::default();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for c in &self.counters {
            t.received += get(&c.received);
            t.forwarded += get(&c.forwarded);
            t.forwarded_bytes += get(&c.forwarded_bytes);
            t.bridged_to_quic += get(&c.bridged);
            for (sum, b) in t.binds.iter_mut().zip(&c.binds) {
                *sum += get(b);
            }
            for (sum, d) in t.drops.iter_mut().zip(&c.drops) {
                *sum += get(d);
            }
        }
        t
    }

    /// Stops the workers and waits for them (each notices within `STOP_POLL`).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("fast-path worker panicked");
            }
        }
    }
}

impl Drop for FastPathService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The adaptive steering loop: every [`STEER_INTERVAL`], each worker's on-CPU time from
/// `/proc` (no cost on the workers' path), the [`Steering`] decision, and the new program on
/// the reuseport group when the count changes. Stops with the workers.
fn run_steering(
    sock: &FastPathSocket,
    counters: &[Arc<WorkerCounters>],
    active: &AtomicUsize,
    stop: &AtomicBool,
) {
    let mut policy = Steering::new(counters.len());
    let mut last: Vec<Option<u64>> = vec![None; counters.len()];
    let mut busy = vec![0.0; counters.len()];
    let mut at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEER_INTERVAL);
        let now = Instant::now();
        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
        at = now;
        for (i, c) in counters.iter().enumerate() {
            let run = thread_run_ns(c.tid.load(Ordering::Relaxed));
            busy[i] = match (last[i], run) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9 / secs,
                _ => 0.0,
            };
            last[i] = run;
        }
        if let Some(n) = policy.update(&busy) {
            match sock.steer(n) {
                Ok(()) => {
                    active.store(n, Ordering::Relaxed);
                    tracing::debug!(active = n, "fast path: active workers");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fast path: steering failed; left as it was");
                    return;
                }
            }
        }
    }
}

/// A thread's time on a CPU so far, ns (`/proc/self/task/TID/schedstat`, first field).
fn thread_run_ns(tid: i32) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::MediaLimits;
    use duet_proto::clock::unix_now;
    use std::net::UdpSocket;

    /// Who takes the datagrams of 16 bound pairs (32 source ports) with two workers: with
    /// adaptive steering (the default) only the first worker at a light load, without it
    /// both (the kernel's 4-tuple hash; all 32 on one socket would be a 2^-31 chance).
    #[test]
    fn adaptive_steering_keeps_a_light_load_on_one_worker() {
        for adaptive in [true, false] {
            let cfg = FastPathConfig {
                workers: 2,
                adaptive_workers: adaptive,
                ..FastPathConfig::default()
            };
            let svc =
                FastPathService::start(&cfg, "127.0.0.1:0".parse().unwrap(), 64, Arc::new(()))
                    .unwrap();
            assert_eq!(svc.workers(), 2);
            assert_eq!(svc.active_workers(), if adaptive { 1 } else { 2 });
            let at = svc.local_addr();
            let limits = MediaLimits {
                packets_per_sec: 10_000,
                bytes_per_sec: 100_000_000,
            };
            let mut ends = Vec::new();
            for _ in 0..16 {
                for ch in svc.table().allocate(limits).unwrap() {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    let offer = svc
                        .plane()
                        .offer(ch, s.local_addr().unwrap().ip(), 1, unix_now());
                    let mut bind = FastPathHeader::new(PacketType::Bind, ch)
                        .to_bytes()
                        .to_vec();
                    bind.extend_from_slice(&offer.ticket);
                    s.send_to(&bind, at).unwrap();
                    ends.push((ch, s));
                }
            }
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while svc.totals().binds.iter().sum::<u64>() < 32 {
                assert!(std::time::Instant::now() < until, "binds");
                std::thread::sleep(Duration::from_millis(5));
            }
            for (ch, s) in &ends {
                let mut p = FastPathHeader::new(PacketType::Media(MediaKind::Audio), *ch)
                    .to_bytes()
                    .to_vec();
                p.extend_from_slice(b"audio");
                s.send_to(&p, at).unwrap();
            }
            while svc.totals().forwarded < 32 {
                assert!(std::time::Instant::now() < until, "forwards");
                std::thread::sleep(Duration::from_millis(5));
            }
            let took = |i: usize| {
                svc.worker_counters(i)
                    .unwrap()
                    .received
                    .load(Ordering::Relaxed)
            };
            if adaptive {
                assert_eq!((took(0), took(1)), (64, 0), "binds and media on worker 0");
            } else {
                assert!(took(0) > 0 && took(1) > 0, "{} / {}", took(0), took(1));
            }
            svc.stop();
        }
    }
}

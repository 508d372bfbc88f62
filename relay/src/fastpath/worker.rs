//! The fast path's worker loop: one per thread, each over its own `SO_REUSEPORT` socket.
//!
//! Owns the loop `recv batch -> ChannelTable::process per datagram -> queue forwards of the
//! same bytes to the bound peer -> send batch`, and the worker's counters (plain atomics,
//! one set per worker, so no contention; the service sums them for `/metrics`). It does not
//! decide (the table does), never sends anything on UDP but a forward to a bound peer, and
//! logs nothing per packet. What the fast path cannot do alone (reach an endpoint that is on
//! QUIC, confirm a bind on the control stream) goes through [`ControlPlane`]. It stops when
//! its flag is set (checked at least every read timeout).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use duet_proto::clock::unix_now;
use duet_proto::fastpath::FASTPATH_HEADER_LEN;
use duet_proto::{ChannelId, MediaKind};

use super::pacing::{Next, Pacer};
use super::socket::{FastPathSocket, RecvBatch, SendBatch};
use super::table::{BindOutcome, ChannelTable, Verdict};
use crate::forward::DropReason;

/// The control plane as seen from a worker thread. Called only for bridged media and for
/// binds, never for media between two fast-path endpoints; must not block.
pub trait ControlPlane: Send + Sync {
    /// Delivers `payload` (the bytes after the fast-path header) of `kind` to the endpoint
    /// owning `channel` over its QUIC connection; `NoPeer` when it has none, `SendFailed`
    /// when its connection refused the datagram.
    fn bridge_to_quic(
        &self,
        channel: ChannelId,
        kind: MediaKind,
        payload: &[u8],
    ) -> Result<(), DropReason>;
    /// A BIND from `addr` took effect on `channel`.
    fn bound(&self, channel: ChannelId, addr: SocketAddr, outcome: BindOutcome);
}

/// No control plane: nothing is bridged (counted as `no_peer`), binds are not confirmed.
impl ControlPlane for () {
    fn bridge_to_quic(&self, _: ChannelId, _: MediaKind, _: &[u8]) -> Result<(), DropReason> {
        Err(DropReason::NoPeer)
    }
    fn bound(&self, _: ChannelId, _: SocketAddr, _: BindOutcome) {}
}

/// Batch and buffer sizes of one worker, and when it reads (see `pacing`).
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Datagrams per `recvmmsg`/`sendmmsg`.
    pub batch: usize,
    /// Bytes per receive slot; larger datagrams are dropped as truncated.
    pub slot_size: usize,
    /// Coalescing window: after forwarding a batch of dense traffic, sleep this long before
    /// reading again (0 = off: block for the next datagram at once).
    pub coalesce: Duration,
    /// After the socket was found empty, keep reading it without blocking this long before
    /// blocking (0 = off).
    pub busy_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            slot_size: 2048,
            coalesce: Duration::ZERO,
            busy_poll: Duration::ZERO,
        }
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// The worker thread's kernel id once it runs (0 before): the service reads its CPU
    /// time from `/proc` to steer.
    pub tid: AtomicI32,
    pub received: AtomicU64,
    /// `recvmmsg` calls that returned datagrams, and `sendmmsg` batches: datagrams per
    /// call is what the coalescing window raises.
    pub receive_calls: AtomicU64,
    pub send_calls: AtomicU64,
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    /// Media handed to a peer's QUIC connection because the peer is not on the fast path.
    pub bridged: AtomicU64,
    /// Accepted binds, indexed by [`BindOutcome::index`].
    pub binds: [AtomicU64; BindOutcome::COUNT],
    /// Indexed by [`DropReason::index`].
    pub drops: [AtomicU64; DropReason::COUNT],
}

impl WorkerCounters {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Accepted binds of every outcome.
    pub fn binds_total(&self) -> u64 {
        self.binds.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn drops_by_label(&self, label: &str) -> u64 {
        DropReason::from_label(label).map_or(0, |r| self.drops(r))
    }

    #[inline]
    fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs until `stop` is set or the socket fails. Buffers are allocated once, here.
pub fn run_worker(
    sock: &FastPathSocket,
    table: &ChannelTable,
    control: &dyn ControlPlane,
    counters: &WorkerCounters,
    stop: &AtomicBool,
    cfg: WorkerConfig,
) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    counters
        .tid
        .store(unsafe { libc::gettid() }, Ordering::Relaxed);
    let mut rx = RecvBatch::new(cfg.batch, cfg.slot_size);
    let mut tx = SendBatch::new(cfg.batch);
    let mut pacer = Pacer::new(cfg.coalesce, cfg.busy_poll);
    if !cfg.coalesce.is_zero() {
        set_timer_slack(cfg.coalesce);
    }
    let mut next = Next::Block;
    // Set while `next` is `Poll`: when polling gives up.
    let mut poll_until = Instant::now();
    let mut last_batch = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let r = match next {
            Next::Block => sock.recv_batch(&mut rx),
            Next::Sleep(_) | Next::Poll(_) => sock.try_recv_batch(&mut rx),
        };
        let n = match r {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                next = match next {
                    // The read timeout: look at the stop flag, block again.
                    Next::Block => Next::Block,
                    Next::Sleep(_) => pacer.window_empty(),
                    Next::Poll(_) if Instant::now() < poll_until => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Next::Poll(_) => Next::Block,
                };
                if let Next::Poll(d) = next {
                    poll_until = Instant::now() + d;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Next::Sleep(_) = next {
            pacer.window_found(n);
        }
        let now = Instant::now();
        forward_batch(sock, table, control, counters, &rx, &mut tx, n, now);
        next = pacer.after_batch(
            now.duration_since(last_batch),
            n >= cfg.batch || rx.has_pending(),
        );
        last_batch = now;
        match next {
            Next::Sleep(d) => std::thread::sleep(d),
            Next::Poll(d) => poll_until = Instant::now() + d,
            Next::Block => {}
        }
    }
    Ok(())
}

/// Decides every datagram of the last receive and sends the forwards in one batch.
#[allow(clippy::too_many_arguments)]
fn forward_batch(
    sock: &FastPathSocket,
    table: &ChannelTable,
    control: &dyn ControlPlane,
    counters: &WorkerCounters,
    rx: &RecvBatch,
    tx: &mut SendBatch,
    n: usize,
    now: Instant,
) {
    counters.received.fetch_add(n as u64, Ordering::Relaxed);
    counters.receive_calls.fetch_add(1, Ordering::Relaxed);
    let now_unix = unix_now();
    tx.clear();
    let mut bytes = 0u64;
    for i in 0..n {
        let (data, src) = rx.get(i);
        let Some(src) = src else {
            counters.drop(DropReason::UnknownChannel);
            continue;
        };
        match table.process(src, data, now, now_unix) {
            Ok(Verdict::Forward(to)) => {
                bytes += data.len() as u64;
                // `tx` has as many entries as `rx`: push cannot fail here.
                tx.push(i, to);
            }
            Ok(Verdict::Bridge { peer_channel, kind }) => {
                let payload = data.get(FASTPATH_HEADER_LEN..).unwrap_or_default();
                match control.bridge_to_quic(peer_channel, kind, payload) {
                    Ok(()) => {
                        counters.bridged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(r) => counters.drop(r),
                }
            }
            Ok(Verdict::Bound { channel, outcome }) => {
                counters.binds[outcome.index()].fetch_add(1, Ordering::Relaxed);
                control.bound(channel, src, outcome);
            }
            Err(r) => counters.drop(r),
        }
    }
    if !tx.is_empty() {
        let (sent, failed) = sock.send_batch(tx, rx);
        counters.send_calls.fetch_add(1, Ordering::Relaxed);
        counters.forwarded.fetch_add(sent as u64, Ordering::Relaxed);
        counters.forwarded_bytes.fetch_add(bytes, Ordering::Relaxed);
        if failed > 0 {
            counters.drops[DropReason::SendFailed.index()]
                .fetch_add(failed as u64, Ordering::Relaxed);
        }
    }
}

/// Makes this thread's sleeps end close to when they were asked to: the default timer slack
/// (50 µs) would stretch a 100 µs window by half. A twentieth of the window, 1-50 µs; best
/// effort (a failure leaves the default).
fn set_timer_slack(window: Duration) {
    let ns = (window.as_nanos() / 20).clamp(1_000, 50_000) as libc::c_ulong;
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches only this thread.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            ns,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::MediaLimits;
    use duet_proto::clock::unix_now;
    use duet_proto::fastpath::{FastPathHeader, FastPathKey, FastPathTicket, PacketType};
    use duet_proto::{ChannelId, MediaKind};
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    const SECRET: [u8; 32] = [5u8; 32];

    struct Relay {
        table: Arc<ChannelTable>,
        counters: Arc<WorkerCounters>,
        stop: Arc<AtomicBool>,
        addr: SocketAddr,
        thread: Option<JoinHandle<io::Result<()>>>,
    }

    impl Relay {
        fn start() -> Self {
            Self::start_with(WorkerConfig::default())
        }

        fn start_with(cfg: WorkerConfig) -> Self {
            let table = Arc::new(ChannelTable::new(8, FastPathKey::new(&SECRET).unwrap()));
            let counters = Arc::new(WorkerCounters::default());
            let stop = Arc::new(AtomicBool::new(false));
            let sock =
                FastPathSocket::bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(20))
                    .unwrap();
            let addr = sock.local_addr().unwrap();
            let thread = {
                let (t, c, s) = (table.clone(), counters.clone(), stop.clone());
                std::thread::spawn(move || run_worker(&sock, &t, &(), &c, &s, cfg))
            };
            Self {
                table,
                counters,
                stop,
                addr,
                thread: Some(thread),
            }
        }

        fn pair(&self) -> [ChannelId; 2] {
            self.table
                .allocate(MediaLimits {
                    packets_per_sec: 10_000,
                    bytes_per_sec: 100_000_000,
                })
                .unwrap()
        }

        /// Waits (bounded) until `f` holds.
        fn wait(&self, what: &str, f: impl Fn(&Self) -> bool) {
            let until = Instant::now() + Duration::from_secs(3);
            while !f(self) {
                assert!(Instant::now() < until, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        fn bind(&self, sock: &UdpSocket, channel: ChannelId, seq: u32, expires_unix: u64) {
            let pkt = FastPathTicket {
                channel,
                ip: sock.local_addr().unwrap().ip(),
                expires_unix,
                seq,
            }
            .bind_packet(&FastPathKey::new(&SECRET).unwrap());
            sock.send_to(&pkt, self.addr).unwrap();
        }

        fn bind_ok(&self, sock: &UdpSocket, channel: ChannelId, seq: u32) {
            let before = self.counters.binds_total();
            self.bind(sock, channel, seq, unix_now() + 60);
            self.wait("bind", |r| r.counters.binds_total() > before);
            assert_eq!(
                self.table.bound_addr(channel),
                Some(sock.local_addr().unwrap())
            );
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap().unwrap();
            }
        }
    }

    fn client() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    fn media(channel: ChannelId, body: &[u8]) -> Vec<u8> {
        let mut v = FastPathHeader::new(PacketType::Media(MediaKind::Video), channel)
            .to_bytes()
            .to_vec();
        v.extend_from_slice(body);
        v
    }

    fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        match s.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn assert_silent(s: &UdpSocket) {
        assert_eq!(recv(s), None, "expected zero bytes back");
    }

    #[test]
    fn forwards_byte_exact_both_ways() {
        let r = Relay::start();
        let [c0, c1] = r.pair();
        let (a, b) = (client(), client());
        r.bind_ok(&a, c0, 1);
        r.bind_ok(&b, c1, 1);
        for (i, len) in [0usize, 1, 150, 1200, 1400].into_iter().enumerate() {
            let body: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
            let p = media(c0, &body);
            a.send_to(&p, r.addr).unwrap();
            let got = recv(&b).expect("forwarded");
            assert_eq!(got, p);
            let q = media(c1, &body);
            b.send_to(&q, r.addr).unwrap();
            assert_eq!(recv(&a).expect("forwarded back"), q);
        }
        // The worker counts after sendmmsg returns, which can be just after the peer
        // already has the packet: wait (bounded) for the count instead of racing it.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while r.counters.forwarded.load(Ordering::Relaxed) < 10
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(r.counters.forwarded.load(Ordering::Relaxed), 10);
        // Nothing was ever sent for the binds themselves.
        assert_silent(&a);
        assert_silent(&b);
    }

    #[test]
    fn spoofed_source_is_dropped() {
        let r = Relay::start();
        let [c0, c1] = r.pair();
        let (a, b, x) = (client(), client(), client());
        r.bind_ok(&a, c0, 1);
        r.bind_ok(&b, c1, 1);
        x.send_to(&media(c0, b"evil"), r.addr).unwrap();
        r.wait("spoof drop", |r| {
            r.counters.drops(DropReason::SpoofedSource) == 1
        });
        assert_silent(&b);
        assert_silent(&x);
        assert_eq!(r.counters.forwarded.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn unbound_sender_gets_zero_bytes_back() {
        let r = Relay::start();
        let [c0, _c1] = r.pair();
        let x = client();
        // Allocated but unbound, never-issued, garbage, a forged BIND.
        x.send_to(&media(c0, b"hello"), r.addr).unwrap();
        x.send_to(&media(ChannelId(c0.0 ^ (2 << 32)), b"hello"), r.addr)
            .unwrap();
        x.send_to(b"\x01", r.addr).unwrap();
        let mut forged = FastPathTicket {
            channel: c0,
            ip: x.local_addr().unwrap().ip(),
            expires_unix: unix_now() + 60,
            seq: 1,
        }
        .bind_packet(&FastPathKey::new(&[6u8; 32]).unwrap());
        x.send_to(&forged, r.addr).unwrap();
        forged[0] = 9;
        x.send_to(&forged, r.addr).unwrap();
        r.wait("five drops", |r| {
            r.counters.drops_by_label("unbound") == 1
                && r.counters.drops_by_label("unknown_channel") == 1
                && r.counters.drops_by_label("truncated") == 1
                && r.counters.drops_by_label("bad_mac") == 1
                && r.counters.drops_by_label("bad_version") == 1
        });
        assert_silent(&x);
        assert_eq!(r.table.bound_addr(c0), None);
    }

    #[test]
    fn rebind_after_port_change_needs_a_fresh_ticket() {
        let r = Relay::start();
        let [c0, c1] = r.pair();
        let (a, b) = (client(), client());
        r.bind_ok(&a, c0, 1);
        r.bind_ok(&b, c1, 1);
        // Same host, new source port (a NAT rebinding): the old ticket is refused...
        let a2 = client();
        r.bind(&a2, c0, 1, unix_now() + 60);
        r.wait("stale", |r| r.counters.drops(DropReason::StaleTicket) == 1);
        a2.send_to(&media(c0, b"x"), r.addr).unwrap();
        r.wait("spoof", |r| {
            r.counters.drops(DropReason::SpoofedSource) == 1
        });
        assert_silent(&b);
        assert_eq!(r.table.bound_addr(c0), Some(a.local_addr().unwrap()));
        // ...a fresh one (higher seq) moves the binding, both ways.
        r.bind_ok(&a2, c0, 2);
        let p = media(c0, b"from the new port");
        a2.send_to(&p, r.addr).unwrap();
        assert_eq!(recv(&b), Some(p));
        let q = media(c1, b"to the new port");
        b.send_to(&q, r.addr).unwrap();
        assert_eq!(recv(&a2), Some(q));
        // The old port is now a stranger.
        a.send_to(&media(c0, b"old"), r.addr).unwrap();
        r.wait("spoof 2", |r| {
            r.counters.drops(DropReason::SpoofedSource) == 2
        });
        assert_silent(&a);
    }

    #[test]
    fn expired_ticket_is_refused() {
        let r = Relay::start();
        let [c0, _] = r.pair();
        let a = client();
        r.bind(&a, c0, 1, unix_now().saturating_sub(1));
        r.wait("expired", |r| {
            r.counters.drops_by_label("ticket_expired") == 1
        });
        assert_eq!(r.table.bound_addr(c0), None);
        assert_silent(&a);
    }

    fn pair_bound(r: &Relay) -> ([ChannelId; 2], UdpSocket, UdpSocket) {
        let [c0, c1] = r.pair();
        let (a, b) = (client(), client());
        r.bind_ok(&a, c0, 1);
        r.bind_ok(&b, c1, 1);
        ([c0, c1], a, b)
    }

    /// The coalescing window, with a window long enough to see on a loaded box: a lone
    /// datagram after a silence is forwarded at once (no window before it); once datagrams
    /// come closer together than a window, the worker sleeps a window after forwarding, the
    /// datagrams that arrive meanwhile wait for its end and then all leave in one
    /// `sendmmsg`, and none waits much longer than the window. (Before the window existed,
    /// each of them was read and sent on arrival: no wait, and several sends.)
    #[test]
    fn coalescing_window_batches_dense_traffic_and_bounds_the_wait() {
        const WINDOW: Duration = Duration::from_millis(60);
        let r = Relay::start_with(WorkerConfig {
            coalesce: WINDOW,
            ..WorkerConfig::default()
        });
        let ([c0, _], a, b) = pair_bound(&r);
        // Let the windows after the binds run out: the worker is blocked again.
        std::thread::sleep(WINDOW * 2);
        let t = Instant::now();
        a.send_to(&media(c0, b"lone"), r.addr).unwrap();
        assert_eq!(recv(&b), Some(media(c0, b"lone")));
        assert!(
            t.elapsed() < WINDOW / 2,
            "lone datagram waited {:?}",
            t.elapsed()
        );
        std::thread::sleep(WINDOW * 2);
        // Two a few ms apart: a stream, so after forwarding the second the worker sleeps a
        // window...
        a.send_to(&media(c0, b"d0"), r.addr).unwrap();
        assert_eq!(recv(&b), Some(media(c0, b"d0")));
        std::thread::sleep(Duration::from_millis(3));
        a.send_to(&media(c0, b"d1"), r.addr).unwrap();
        assert_eq!(recv(&b), Some(media(c0, b"d1")));
        r.wait("first three", |r| {
            r.counters.send_calls.load(Ordering::Relaxed) >= 3
        });
        let sends_before = r.counters.send_calls.load(Ordering::Relaxed);
        // ...and 20 sent meanwhile wait for the window's end, then leave in one batch.
        let t = Instant::now();
        for i in 0..20u8 {
            a.send_to(&media(c0, &[i]), r.addr).unwrap();
        }
        for i in 0..20u8 {
            assert_eq!(recv(&b), Some(media(c0, &[i])));
        }
        let waited = t.elapsed();
        assert!(
            waited >= WINDOW / 4,
            "forwarded after {waited:?}: no window was slept"
        );
        assert!(
            waited < WINDOW * 3,
            "waited {waited:?}, far past the window"
        );
        r.wait("20 more", |r| {
            r.counters.forwarded.load(Ordering::Relaxed) >= 23
        });
        assert_eq!(
            r.counters.send_calls.load(Ordering::Relaxed) - sends_before,
            1,
            "the window's datagrams left in one sendmmsg"
        );
    }

    /// Busy polling keeps forwarding (every datagram, both ways) and the worker still
    /// stops; with both knobs on, a stream is forwarded complete and in order.
    #[test]
    fn busy_polling_and_coalescing_forward_everything() {
        let r = Relay::start_with(WorkerConfig {
            coalesce: Duration::from_micros(200),
            busy_poll: Duration::from_micros(50),
            ..WorkerConfig::default()
        });
        let ([c0, c1], a, b) = pair_bound(&r);
        for i in 0..200u32 {
            let body = i.to_le_bytes();
            a.send_to(&media(c0, &body), r.addr).unwrap();
            assert_eq!(recv(&b), Some(media(c0, &body)));
            b.send_to(&media(c1, &body), r.addr).unwrap();
            assert_eq!(recv(&a), Some(media(c1, &body)));
        }
        assert_eq!(r.counters.drops_by_label("unbound"), 0);
    }
}

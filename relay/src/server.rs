//! The QUIC I/O layer: accepts connections, runs each endpoint's control stream and media
//! datagrams, and carries out the session table's actions.
//!
//! Owns: sockets, tasks, per-connection state (control decoder, signal and media limiters),
//! the routing of media and signals to the peer's connection (lock-free: each session keeps
//! an `ArcSwapOption` per slot), and the QUIC close codes. It does not own the session rules
//! (`session`), the forwarding decision (`forward`), or TLS (`tls`).
//!
//! Per connection: one control task (reads and answers the one bidirectional stream), one
//! writer task (the only writer of that stream), one media task (reads datagrams and hands
//! the same `Bytes` to the peer). One ticker task per relay runs the table's timers.
//!
//! The fast path meets QUIC here: a session gets a pair of fast-path channels when it is
//! created (released when it closes), each endpoint's `Joined` carries its offer, and media
//! crosses between transports when one endpoint is bound on the fast path and the other is
//! not ([`FastPathRoutes`] for fast path -> QUIC, `media_loop` for QUIC -> fast path).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{BufMut, Bytes, BytesMut};
use duet_proto::control::encode;
use duet_proto::{
    ClientMessage, EndReason, FastPathOffer, Feature, FrameDecoder, MediaHeader, MediaKind,
    RefusalReason, RelayMessage, SessionId, Slot, TokenKeyring, MAX_CONTROL_FRAME,
    MEDIA_HEADER_LEN,
};
use quinn::VarInt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout_at;

use crate::config::Config;
use crate::fastpath::{
    channel_pair, channel_side, BindOutcome, ControlPlane, DropReason as FastPathDrop,
    EndpointBudget, FastPathLimits, FastPathService,
};
use crate::forward::{forward_step, DropReason};
use crate::limits::{Admission, MediaLimiter, TokenBucket};
use crate::metrics::RelayMetrics;
use crate::session::{Action, CloseReason, ConnId, JoinRequest, SessionTable, TableConfig};

/// QUIC application close codes the relay uses. Stable: documented for SDKs and operators.
pub mod close_code {
    /// The endpoint left.
    pub const LEFT: u32 = 0;
    /// The join was refused (the `Refused` message carries the reason).
    pub const REFUSED: u32 = 1;
    /// The relay ended the session (the `SessionEnded` message carries the reason).
    pub const SESSION_ENDED: u32 = 2;
    /// Replaced by the same device resuming on a new connection.
    pub const REPLACED: u32 = 3;
    /// A malformed, oversized, empty or unknown control frame, or a message out of place.
    pub const PROTOCOL_VIOLATION: u32 = 4;
    /// No Join within the join timeout.
    pub const JOIN_TIMEOUT: u32 = 5;
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 6;
    /// The connection's control stream ended.
    pub const GONE: u32 = 7;
}

const CONTROL_QUEUE: usize = 256;

fn close_code_of(r: CloseReason) -> (u32, &'static str) {
    match r {
        CloseReason::Left => (close_code::LEFT, "left"),
        CloseReason::Refused(r) => (close_code::REFUSED, r.as_str()),
        CloseReason::Ended(EndReason::Replaced) => (close_code::REPLACED, "replaced"),
        CloseReason::Ended(EndReason::ProtocolViolation) => {
            (close_code::PROTOCOL_VIOLATION, "protocol_violation")
        }
        CloseReason::Ended(e) => (close_code::SESSION_ENDED, e.as_str()),
    }
}

/// What a connection's writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Msg(RelayMessage),
    /// Flush what was queued, then close the connection.
    Close(CloseReason),
}

/// How the rest of the relay reaches one endpoint.
#[derive(Debug)]
pub struct PeerIo {
    pub conn: quinn::Connection,
    ctl: mpsc::Sender<Outgoing>,
}

/// Lock-free routing state of one session: who each slot's traffic goes to.
#[derive(Debug, Default)]
pub struct SessionIo {
    pub slots: [ArcSwapOption<PeerIo>; 2],
    /// Bumped on every packet or message received; the ticker turns changes into activity.
    activity: AtomicU64,
    seen: AtomicU64,
    /// The session's fast-path channels `[slot A, slot B]`, when the fast path is on and its
    /// table had room.
    fast_path: Option<[u64; 2]>,
    /// Last ticket sequence number handed to each slot (a move needs a higher one).
    ticket_seq: [AtomicU32; 2],
}

/// What fast-path workers reach through the control plane: the session behind each
/// channel pair, indexed like the channel table, so a lookup is an index and a load.
pub struct FastPathRoutes {
    sessions: Box<[ArcSwapOption<SessionIo>]>,
}

impl FastPathRoutes {
    pub fn new(capacity: usize) -> Self {
        Self {
            sessions: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    fn set(&self, channels: [u64; 2], sio: Option<Arc<SessionIo>>) {
        if let Some(slot) = self.sessions.get(channel_pair(channels[0])) {
            slot.store(sio);
        }
    }

    /// The QUIC side of the endpoint owning `channel`, if that channel is still live.
    fn endpoint(&self, channel: u64) -> Option<Arc<PeerIo>> {
        let sio = self.sessions.get(channel_pair(channel))?.load_full()?;
        let side = channel_side(channel);
        if sio.fast_path?[side] != channel {
            return None;
        }
        sio.slots[side].load_full()
    }
}

impl ControlPlane for FastPathRoutes {
    fn bridge_to_quic(
        &self,
        channel: u64,
        kind: MediaKind,
        payload: &[u8],
    ) -> Result<(), FastPathDrop> {
        let peer = self.endpoint(channel).ok_or(FastPathDrop::NoPeer)?;
        // quinn takes owned bytes: the one allocation of a bridged packet.
        let mut d = BytesMut::with_capacity(MEDIA_HEADER_LEN + payload.len());
        d.put_slice(&MediaHeader::new(kind).to_bytes());
        d.put_slice(payload);
        peer.conn
            .send_datagram(d.freeze())
            .map_err(|_| FastPathDrop::SendFailed)
    }

    fn bound(&self, channel: u64, addr: SocketAddr, outcome: BindOutcome) {
        // A refresh from the same address changes nothing the endpoint needs to hear.
        if outcome == BindOutcome::Refreshed {
            return;
        }
        if let Some(peer) = self.endpoint(channel) {
            let _ = peer
                .ctl
                .try_send(Outgoing::Msg(RelayMessage::FastPathBound {
                    channel: duet_proto::ChannelId(channel),
                    addr,
                }));
        }
    }
}

pub(crate) struct Core {
    pub table: SessionTable,
    conns: HashMap<ConnId, Arc<PeerIo>>,
    sessions: HashMap<SessionId, Arc<SessionIo>>,
    fast_path: Option<Arc<FastPathService>>,
    routes: Arc<FastPathRoutes>,
    fast_path_limits: FastPathLimits,
}

impl Core {
    /// The session's routing state, created (with its fast-path channels) on first use.
    fn session_io(&mut self, id: &SessionId) -> Arc<SessionIo> {
        if let Some(s) = self.sessions.get(id) {
            return s.clone();
        }
        let channels = self
            .fast_path
            .as_ref()
            .and_then(|fp| fp.table().allocate(self.fast_path_limits));
        let sio = Arc::new(SessionIo {
            fast_path: channels,
            ..SessionIo::default()
        });
        if let Some(c) = channels {
            self.routes.set(c, Some(sio.clone()));
        }
        self.sessions.insert(id.clone(), sio.clone());
        sio
    }

    /// A fresh offer for `conn` in `slot` of `sio`: a ticket for the IP its QUIC connection
    /// comes from now, with the next sequence number.
    fn fast_path_offer(&self, conn: ConnId, sio: &SessionIo, slot: Slot) -> Option<FastPathOffer> {
        let fp = self.fast_path.as_ref()?;
        let channel = sio.fast_path?[slot.index()];
        let ip = self.conns.get(&conn)?.conn.remote_address().ip();
        let seq = sio.ticket_seq[slot.index()].fetch_add(1, Ordering::Relaxed) + 1;
        Some(fp.offer(channel, ip, seq))
    }

    /// Carries out the table's queued actions.
    fn apply(&mut self, metrics: &RelayMetrics) {
        while let Some(action) = self.table.poll_action() {
            match action {
                Action::Send(c, msg) => {
                    if let Some(p) = self.conns.get(&c) {
                        if p.ctl.try_send(Outgoing::Msg(msg)).is_err() {
                            metrics.control_error("stream_error").increment(1);
                        }
                    }
                }
                Action::Close(c, why) => {
                    if let Some(p) = self.conns.get(&c) {
                        if p.ctl.try_send(Outgoing::Close(why)).is_err() {
                            let (code, text) = close_code_of(why);
                            p.conn.close(VarInt::from_u32(code), text.as_bytes());
                        }
                    }
                }
                Action::Route {
                    session,
                    slot,
                    conn,
                } => {
                    let to = conn.and_then(|c| self.conns.get(&c).cloned());
                    let sio = self.session_io(&session);
                    sio.slots[slot.index()].store(to);
                }
                Action::SessionClosed(session) => {
                    if let Some(sio) = self.sessions.remove(&session) {
                        for s in &sio.slots {
                            s.store(None);
                        }
                        if let (Some(c), Some(fp)) = (sio.fast_path, &self.fast_path) {
                            fp.table().release(c[0]);
                            self.routes.set(c, None);
                        }
                    }
                }
            }
        }
        metrics.sessions.set(self.table.session_count() as f64);
        metrics.endpoints.set(self.table.endpoint_count() as f64);
    }
}

/// State shared by every task of one relay.
pub(crate) struct Shared {
    pub cfg: Arc<Config>,
    pub keyring: TokenKeyring,
    pub metrics: Arc<RelayMetrics>,
    pub fast_path: Option<Arc<FastPathService>>,
    core: Mutex<Core>,
    pub draining: AtomicBool,
    drain_deadline: Mutex<Option<Instant>>,
    next_conn: AtomicU64,
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn new(
        cfg: Arc<Config>,
        keyring: TokenKeyring,
        metrics: Arc<RelayMetrics>,
        table: TableConfig,
        fast_path: Option<(Arc<FastPathService>, Arc<FastPathRoutes>)>,
    ) -> Arc<Self> {
        let fast_path_limits = FastPathLimits::from(&table.limits);
        let (service, routes) = match fast_path {
            Some((s, r)) => (Some(s), r),
            None => (None, Arc::new(FastPathRoutes::new(0))),
        };
        Arc::new(Self {
            cfg,
            keyring,
            metrics,
            fast_path: service.clone(),
            core: Mutex::new(Core {
                table: SessionTable::new(table),
                conns: HashMap::new(),
                sessions: HashMap::new(),
                fast_path: service,
                routes,
                fast_path_limits,
            }),
            draining: AtomicBool::new(false),
            drain_deadline: Mutex::new(None),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
        })
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock must not take the whole relay down with it.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn session_count(&self) -> usize {
        self.core().table.session_count()
    }

    /// The Prometheus text, with the fast-path workers' counters brought up to date.
    pub fn render_metrics(&self) -> String {
        if let Some(fp) = &self.fast_path {
            self.metrics.fast_path.sync(&fp.totals());
        }
        self.metrics.render()
    }

    pub fn endpoint_count(&self) -> usize {
        self.core().table.endpoint_count()
    }

    /// Readiness off, new joins refused; live sessions end at the deadline.
    pub fn drain(&self) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        *self
            .drain_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + self.cfg.drain_deadline());
        self.core().table.set_draining(true);
        self.metrics.draining.set(1.0);
        tracing::info!(
            deadline_ms = self.cfg.drain_deadline_ms,
            "draining: new joins refused"
        );
    }

    /// One run of the timers.
    fn tick(&self, now: Instant) {
        let deadline_passed = self
            .drain_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|d| now >= d);
        let mut core = self.core();
        let Core {
            table,
            sessions,
            fast_path,
            ..
        } = &mut *core;
        for (id, sio) in sessions.iter() {
            let on_fast_path = fast_path
                .as_ref()
                .zip(sio.fast_path)
                .and_then(|(fp, c)| fp.table().activity(c[0]))
                .unwrap_or(0);
            let a = sio.activity.load(Ordering::Relaxed) + on_fast_path;
            if sio.seen.swap(a, Ordering::Relaxed) != a {
                table.touch(id, now);
            }
        }
        table.handle_timeout(now);
        if deadline_passed && table.session_count() > 0 {
            tracing::info!(
                sessions = table.session_count(),
                "drain deadline passed: ending sessions"
            );
            table.end_all(EndReason::RelayShutdown);
        }
        core.apply(&self.metrics);
    }
}

/// The quinn server config: our TLS config, one bidirectional stream, datagrams on.
pub fn quinn_server_config(
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, crate::tls::TlsError> {
    let qsc = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| crate::tls::TlsError::Quic(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qsc));
    let mut tc = quinn::TransportConfig::default();
    tc.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(2 * 1024 * 1024))
        .datagram_send_buffer_size(2 * 1024 * 1024)
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()))
        // Both legs of a session keep the QUIC minimum MTU (see `bind_endpoint`).
        .initial_mtu(PINNED_UDP_PAYLOAD)
        .mtu_discovery_config(None);
    sc.transport_config(Arc::new(tc));
    Ok(sc)
}

/// UDP payload size of every connection, both ways. The relay forwards a datagram unchanged,
/// so a piece that fits the sender's leg must fit the receiver's leg too: with path-MTU
/// discovery on, one leg can grow before the other and the relay would have to drop. Pinning
/// both to QUIC's guaranteed minimum (advertised to clients as `max_udp_payload_size`, which
/// bounds their own discovery) makes every piece a client may send forwardable.
pub const PINNED_UDP_PAYLOAD: u16 = 1200;

/// Binds the relay's UDP socket (large kernel buffers, best effort) and its quinn endpoint.
pub fn bind_endpoint(
    server: quinn::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    let mut ep = quinn::EndpointConfig::default();
    ep.max_udp_payload_size(PINNED_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    quinn::Endpoint::new(ep, Some(server), socket.into(), runtime)
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            inc = endpoint.accept() => match inc {
                Some(incoming) => {
                    tokio::spawn(run_connection(shared.clone(), incoming));
                }
                None => break,
            },
        }
    }
}

/// Runs the timers until shutdown.
pub(crate) async fn ticker(shared: Arc<Shared>) {
    let l = &shared.cfg.limits;
    let shortest = l
        .idle_timeout_ms
        .min(l.resume_window_ms.max(1))
        .min(shared.cfg.drain_deadline_ms.max(1));
    let period = Duration::from_millis((shortest / 10).clamp(10, 250));
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = iv.tick() => shared.tick(Instant::now()),
        }
    }
}

async fn run_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let accepted_at = Instant::now();
    let deadline = tokio::time::Instant::from_std(accepted_at + shared.cfg.limits.join_timeout());
    let m = shared.metrics.clone();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(_) => return,
    };
    let conn = match timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    m.connections.increment(1.0);
    let id = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    tracing::debug!(conn = id.0, remote = %conn.remote_address(), "connected");

    // Media is read from the start, so datagrams sent before Join are seen and counted.
    let (joined_tx, joined_rx) = oneshot::channel();
    let media = tokio::spawn(media_loop(shared.clone(), conn.clone(), joined_rx));
    let (send, recv) = match timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => {
            media.abort();
            m.connections.decrement(1.0);
            return;
        }
        Err(_) => {
            media.abort();
            m.control_error("never_joined").increment(1);
            conn.close(VarInt::from_u32(close_code::JOIN_TIMEOUT), b"join timeout");
            m.connections.decrement(1.0);
            return;
        }
    };

    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let io = Arc::new(PeerIo {
        conn: conn.clone(),
        ctl: tx.clone(),
    });
    shared.core().conns.insert(id, io);
    let writer = tokio::spawn(writer(send, rx, conn.clone()));

    let mut ctl = Control {
        shared: shared.clone(),
        id,
        tx,
        joined_tx: Some(joined_tx),
        route: None,
        accepted_at,
        signals: TokenBucket::new(
            shared.cfg.limits.signals_per_sec.into(),
            shared.cfg.limits.signals_per_sec.into(),
            Instant::now(),
        ),
    };
    ctl.run(recv, deadline).await;
    drop(ctl);

    media.abort();
    {
        let mut core = shared.core();
        core.table.connection_lost(id, Instant::now());
        core.conns.remove(&id);
        core.apply(&m);
    }
    // Let the writer flush what it was asked to (a refusal, SessionEnded), then make sure the
    // connection is closed.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    conn.close(VarInt::from_u32(close_code::GONE), b"gone");
    m.connections.decrement(1.0);
}

/// The only writer of a connection's control stream.
async fn writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    conn: quinn::Connection,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Msg(msg) => {
                let Ok(frame) = encode(&msg) else { continue };
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
            Outgoing::Close(why) => {
                let _ = send.finish();
                // Wait (briefly) until the peer has the last messages before closing.
                let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
                let (code, text) = close_code_of(why);
                conn.close(VarInt::from_u32(code), text.as_bytes());
                return;
            }
        }
    }
    let _ = send.finish();
}

/// Reads media datagrams and hands them to the peer.
async fn media_loop(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut joined: oneshot::Receiver<(Arc<SessionIo>, Slot)>,
) {
    let m = shared.metrics.clone();
    let before_join = m.media_dropped(DropReason::BeforeJoin).clone();
    let (sio, slot) = loop {
        // Joined goes out only after the route was handed over, so a datagram the endpoint
        // sends on reading Joined finds the route here: look at it first.
        tokio::select! {
            biased;
            r = &mut joined => match r {
                Ok(v) => break v,
                Err(_) => return,
            },
            d = conn.read_datagram() => match d {
                Ok(_) => before_join.increment(1),
                Err(_) => return,
            },
        }
    };
    let peer = &sio.slots[slot.other().index()];
    // (service, this endpoint's channel, the peer's channel): QUIC media to a peer bound on
    // the fast path leaves on the fast path.
    let fast_path = shared
        .fast_path
        .as_deref()
        .zip(sio.fast_path)
        .map(|(fp, c)| (fp, c[slot.index()], c[slot.other().index()]));
    let bridged = &m.fast_path.bridged_to_fastpath;
    let l = &shared.cfg.limits;
    let mut limiter = match fast_path {
        // One budget per endpoint, whichever transport it sends on.
        Some((fp, mine, _)) => EndpointLimiter::Shared(fp.table().budget(mine)),
        None => EndpointLimiter::Own(MediaLimiter::new(
            l.media_packets_per_sec,
            l.media_bytes_per_sec,
            Instant::now(),
        )),
    };
    let send_failed = m.media_dropped(DropReason::SendFailed).clone();
    let send_too_large = m.media_dropped(DropReason::TooLargeForPeer).clone();
    loop {
        let Ok(d) = conn.read_datagram().await else {
            return;
        };
        sio.activity.fetch_add(1, Ordering::Relaxed);
        match forward_step(&d, &mut limiter, peer, Instant::now()) {
            Ok((kind, to)) => {
                if let Some((fp, mine, theirs)) = fast_path {
                    if let Some(addr) = fp.table().bound_addr(theirs) {
                        let body = d.get(MEDIA_HEADER_LEN..).unwrap_or_default();
                        if fp.send_bridged(addr, kind, mine, body) {
                            bridged.increment(1);
                        } else {
                            send_failed.increment(1);
                        }
                        continue;
                    }
                }
                let len = d.len() as u64;
                let Some(to) = to.as_ref() else { continue };
                match to.conn.send_datagram(d) {
                    Ok(()) => {
                        m.forwarded_packets[kind.index()].increment(1);
                        m.forwarded_bytes[kind.index()].increment(len);
                    }
                    Err(quinn::SendDatagramError::TooLarge) => send_too_large.increment(1),
                    Err(_) => send_failed.increment(1),
                }
            }
            Err(r) => m.media_dropped(r).increment(1),
        }
    }
}

/// Where an endpoint's QUIC media is charged.
enum EndpointLimiter<'a> {
    Own(MediaLimiter),
    Shared(EndpointBudget<'a>),
}

impl Admission for EndpointLimiter<'_> {
    #[inline]
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        match self {
            Self::Own(l) => l.admit(len, now),
            Self::Shared(b) => b.admit(len, now),
        }
    }
}

/// One connection's control stream.
struct Control {
    shared: Arc<Shared>,
    id: ConnId,
    tx: mpsc::Sender<Outgoing>,
    joined_tx: Option<oneshot::Sender<(Arc<SessionIo>, Slot)>>,
    route: Option<(SessionId, Arc<SessionIo>, Slot)>,
    accepted_at: Instant,
    signals: TokenBucket,
}

enum Flow {
    Continue,
    Stop,
}

impl Control {
    async fn reply(&self, msg: RelayMessage) {
        let _ = self.tx.send(Outgoing::Msg(msg)).await;
    }

    async fn run(&mut self, mut recv: quinn::RecvStream, deadline: tokio::time::Instant) {
        let mut dec = FrameDecoder::new(MAX_CONTROL_FRAME);
        loop {
            let chunk = if self.route.is_none() {
                match timeout_at(deadline, recv.read_chunk(MAX_CONTROL_FRAME, true)).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.shared
                            .metrics
                            .control_error("never_joined")
                            .increment(1);
                        let _ = self
                            .tx
                            .send(Outgoing::Close(CloseReason::Refused(
                                RefusalReason::ProtocolViolation,
                            )))
                            .await;
                        return;
                    }
                }
            } else {
                recv.read_chunk(MAX_CONTROL_FRAME, true).await
            };
            match chunk {
                Ok(Some(c)) => dec.extend(&c.bytes),
                Ok(None) | Err(_) => return,
            }
            loop {
                match dec.next_message::<ClientMessage>() {
                    Ok(None) => break,
                    Ok(Some(msg)) => {
                        if let Some((_, sio, _)) = &self.route {
                            sio.activity.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Flow::Stop = self.handle(msg).await {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(conn = self.id.0, error = %e, "bad control frame");
                        self.shared.metrics.control_error(e.as_str()).increment(1);
                        self.violation().await;
                        return;
                    }
                }
            }
        }
    }

    /// A protocol violation: told, disconnected; the peer's session goes on.
    async fn violation(&mut self) {
        if self.route.is_some() {
            let mut core = self.shared.core();
            core.table.protocol_violation(self.id, Instant::now());
            core.apply(&self.shared.metrics);
        } else {
            self.refuse(RefusalReason::ProtocolViolation).await;
        }
    }

    async fn refuse(&self, r: RefusalReason) {
        self.shared.metrics.refusal(r).increment(1);
        self.reply(RelayMessage::Refused(r)).await;
        let _ = self.tx.send(Outgoing::Close(CloseReason::Refused(r))).await;
    }

    async fn handle(&mut self, msg: ClientMessage) -> Flow {
        match msg {
            ClientMessage::Join {
                session,
                token,
                resume,
                e2ee,
            } => {
                if self.route.is_some() {
                    self.shared
                        .metrics
                        .refusal(RefusalReason::AlreadyJoined)
                        .increment(1);
                    self.reply(RelayMessage::Dropped(RefusalReason::AlreadyJoined))
                        .await;
                    return Flow::Continue;
                }
                self.join(session, token, resume, e2ee).await
            }
            ClientMessage::Signal(data) => {
                if self.route.is_none() {
                    self.shared.metrics.control_error("not_joined").increment(1);
                    self.refuse(RefusalReason::ProtocolViolation).await;
                    return Flow::Stop;
                }
                self.signal(data).await;
                Flow::Continue
            }
            ClientMessage::Request(feature) => {
                self.feature(feature).await;
                Flow::Continue
            }
            ClientMessage::Leave => {
                if self.route.is_some() {
                    let mut core = self.shared.core();
                    core.table.leave(self.id, Instant::now());
                    core.apply(&self.shared.metrics);
                } else {
                    let _ = self.tx.send(Outgoing::Close(CloseReason::Left)).await;
                }
                Flow::Stop
            }
            ClientMessage::Ping(n) => {
                self.reply(RelayMessage::Pong(n)).await;
                Flow::Continue
            }
            ClientMessage::FastPathTicket => {
                self.fast_path_ticket().await;
                Flow::Continue
            }
            ClientMessage::FastPathUnbind => {
                if let (Some((_, sio, slot)), Some(fp)) = (&self.route, &self.shared.fast_path) {
                    if let Some(c) = sio.fast_path {
                        fp.table().unbind(c[slot.index()]);
                    }
                }
                Flow::Continue
            }
        }
    }

    /// A fresh ticket (next seq, the connection's current IP), charged to the signal
    /// budget since each costs an HMAC; refused before join or without a fast path.
    async fn fast_path_ticket(&mut self) {
        let m = &self.shared.metrics;
        let Some((_, sio, slot)) = &self.route else {
            m.refusal(RefusalReason::FastPathUnavailable).increment(1);
            self.reply(RelayMessage::Dropped(RefusalReason::FastPathUnavailable))
                .await;
            return;
        };
        if !self.signals.try_take(1, Instant::now()) {
            m.refusal(RefusalReason::RateLimited).increment(1);
            self.reply(RelayMessage::Dropped(RefusalReason::RateLimited))
                .await;
            return;
        }
        let offer = self.shared.core().fast_path_offer(self.id, sio, *slot);
        match offer {
            Some(o) => self.reply(RelayMessage::FastPathTicket(o)).await,
            None => {
                m.refusal(RefusalReason::FastPathUnavailable).increment(1);
                self.reply(RelayMessage::Dropped(RefusalReason::FastPathUnavailable))
                    .await
            }
        }
    }

    async fn feature(&self, feature: Feature) {
        // The relay never holds media keys: every plaintext feature is refused, known or not.
        let m = &self.shared.metrics;
        m.feature_refused(feature).increment(1);
        m.refusal(RefusalReason::PlaintextRequired).increment(1);
        self.reply(RelayMessage::FeatureRefused {
            feature,
            reason: RefusalReason::PlaintextRequired,
        })
        .await;
    }

    async fn signal(&mut self, data: Bytes) {
        let m = &self.shared.metrics;
        let Some((_, sio, slot)) = &self.route else {
            return;
        };
        if data.len() > self.shared.cfg.limits.max_signal_bytes as usize {
            m.signal_dropped("too_large").increment(1);
            m.refusal(RefusalReason::TooLarge).increment(1);
            self.reply(RelayMessage::Dropped(RefusalReason::TooLarge))
                .await;
            return;
        }
        if !self.signals.try_take(1, Instant::now()) {
            m.signal_dropped("rate_limited").increment(1);
            m.refusal(RefusalReason::RateLimited).increment(1);
            self.reply(RelayMessage::Dropped(RefusalReason::RateLimited))
                .await;
            return;
        }
        let peer = sio.slots[slot.other().index()].load();
        let Some(peer) = peer.as_ref() else {
            m.signal_dropped("no_peer").increment(1);
            return;
        };
        let len = data.len() as u64;
        match peer.ctl.try_send(Outgoing::Msg(RelayMessage::Signal(data))) {
            Ok(()) => {
                m.signals_forwarded.increment(1);
                m.signal_bytes_forwarded.increment(len);
            }
            Err(_) => m.signal_dropped("peer_backlog").increment(1),
        }
    }

    async fn join(
        &mut self,
        session: SessionId,
        token: String,
        resume: Option<duet_proto::ResumeSecret>,
        e2ee: bool,
    ) -> Flow {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        // Draining is checked before any token work.
        if shared.draining.load(Ordering::Relaxed) {
            self.refuse(RefusalReason::RelayDraining).await;
            return Flow::Stop;
        }
        let claims = match shared.keyring.verify(
            &token,
            &shared.cfg.verify_options(duet_proto::clock::unix_now()),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(conn = self.id.0, error = %e, "join refused: token");
                self.refuse(e.refusal()).await;
                return Flow::Stop;
            }
        };
        let result = {
            let mut core = shared.core();
            let r = core.table.join_as(
                self.id,
                &JoinRequest {
                    session: &session,
                    claims: &claims,
                    token: &token,
                    resume: resume.as_ref(),
                    e2ee,
                },
                Instant::now(),
            );
            match r {
                Ok(mut joined) => {
                    let sio = core.session_io(&session);
                    joined.fast_path = core.fast_path_offer(self.id, &sio, joined.slot);
                    // The media task gets its route, and the fast path can find this
                    // connection to confirm a BIND, before the endpoint can read Joined.
                    sio.slots[joined.slot.index()].store(core.conns.get(&self.id).cloned());
                    if let Some(tx) = self.joined_tx.take() {
                        let _ = tx.send((sio.clone(), joined.slot));
                    }
                    // Joined goes out before anything the table queued for this connection.
                    let _ = self
                        .tx
                        .try_send(Outgoing::Msg(RelayMessage::Joined(joined.clone())));
                    core.apply(m);
                    Ok((joined, sio))
                }
                Err(r) => {
                    core.apply(m);
                    Err(r)
                }
            }
        };
        match result {
            Ok((joined, sio)) => {
                m.joins.increment(1);
                if joined.resumed {
                    m.resumes.increment(1);
                }
                m.join_latency
                    .record(self.accepted_at.elapsed().as_secs_f64());
                tracing::debug!(conn = self.id.0, session = %session, slot = ?joined.slot, resumed = joined.resumed, "joined");
                self.route = Some((session, sio, joined.slot));
                Flow::Continue
            }
            Err(r) => {
                tracing::debug!(conn = self.id.0, session = %session, reason = %r, "join refused");
                self.refuse(r).await;
                Flow::Stop
            }
        }
    }
}

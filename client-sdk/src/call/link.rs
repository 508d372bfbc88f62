//! One link: a QUIC connection to a relay node, its control stream, its fast path, and the
//! tasks that move bytes between them and the call's engine (control, media and timers,
//! fast-path binding, and, when the call recovers by itself, liveness probing). Dropping a
//! link ends its tasks and closes its connection.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use duet_proto::control::encode;
use duet_proto::{ClientMessage, FrameDecoder, Joined, NodeId, RefusalReason, RelayMessage};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::liveness::{Action, Health, Liveness};
use super::Event;
use super::{Core, Dial, Joining, Out};
use crate::engine::SignalUse;
use crate::error::SdkError;
use crate::fastpath::{self, BindConfig, FastLink, FastPathMode, GenSocket};
use crate::options::ConnectOptions;

/// One link: a QUIC connection to a relay node and its control stream.
pub(crate) struct Shared {
    pub(super) conn: quinn::Connection,
    pub(super) control_send: tokio::sync::Mutex<quinn::SendStream>,
    /// The fast path, when `FastPathMode::Prefer` and the relay offered one.
    pub(super) fast: Option<Arc<FastLink>>,
    pub(super) core: Arc<Core>,
    /// The relay said `Draining`: move now.
    pub(super) draining: Notify,
    /// `ConnectOptions::nodes` is set: a lost connection is the recovery task's to mend, not
    /// the end of the call (`Disconnected` then comes only if it gives up).
    pub(super) recovers: bool,
    /// What the liveness detector says of this link (only with `recovers`).
    pub(super) health: tokio::sync::watch::Sender<Health>,
    /// The peer is on this link's node (its `Joined`, then `PeerJoined`/`PeerLeft`...).
    pub(super) peer_here: AtomicBool,
    /// Wakes an idle liveness task when the app sends something that asks for an answer.
    pub(super) send_wake: SendWake,
}

/// Tells an idle liveness task that something was sent: the task arms it before an idle
/// sleep, and the first send after that (one relaxed load per send otherwise) wakes it, so
/// the silence clock starts on time without the task polling an idle link.
#[derive(Default)]
pub(crate) struct SendWake {
    armed: AtomicBool,
    notify: Notify,
}

impl SendWake {
    /// Called after every send of the app's (frames, control messages, raw datagrams).
    pub(crate) fn sent(&self) {
        if self.armed.load(Relaxed) && self.armed.swap(false, Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Resolves at the first send after this call (or at once if one raced the arming).
    async fn next_send(&self) {
        self.armed.store(true, Relaxed);
        self.notify.notified().await;
    }
}

impl Shared {
    /// Queues a fast-path event (never blocks: `Call::transport` is the state, events tell
    /// of changes).
    pub(crate) fn emit_fast_event(&self, ev: Event) {
        let _ = self.core.step(|e| e.push_fast_event(ev));
    }

    /// Resolves once the QUIC connection is closed.
    pub(crate) async fn closed(&self) {
        self.conn.closed().await;
    }

    pub(crate) async fn send_control(&self, msg: &ClientMessage) -> Result<(), SdkError> {
        let frame = encode(msg)?;
        self.control_send.lock().await.write_all(&frame).await?;
        self.send_wake.sent();
        Ok(())
    }

    /// Moves what an engine step produced; `false` once the app stopped taking frames.
    pub(super) async fn deliver(&self, out: Out) -> bool {
        for s in out.signals {
            if let Err(e) = self.send_control(&ClientMessage::Signal(s)).await {
                tracing::debug!(error = %e, "could not send an engine signal");
            }
        }
        for f in out.frames {
            if self.core.media_tx.send(f).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// A link and what runs on it; dropping it ends its tasks and closes its connection.
pub(super) struct Link {
    pub(super) shared: Arc<Shared>,
    pub(super) joined: Joined,
    /// The node this link is on (from the token's list), when known.
    pub(super) node: Option<NodeId>,
    /// The link's own QUIC endpoint (its UDP socket lives as long as the link);
    /// `Call::rebind_quic` moves it to a new socket.
    pub(super) endpoint: quinn::Endpoint,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.conn.close(0u32.into(), b"link replaced");
    }
}

/// The node the app dialled: from the address book, else the token's first.
pub(super) fn node_of(dial: &Dial) -> Option<NodeId> {
    dial.opts.node_at(dial.relay).or_else(|| {
        crate::secure::token_claims(&dial.token)
            .ok()
            .and_then(|c| c.nodes.first().cloned())
    })
}

/// Starts a link's tasks for `core`.
pub(super) fn attach(
    core: Arc<Core>,
    j: Joining,
    opts: &ConnectOptions,
    node: Option<NodeId>,
) -> Link {
    let Joining {
        endpoint,
        conn,
        streams: (send, recv, decoder),
        joined,
    } = j;
    let prefer = opts.fast_path == FastPathMode::Prefer;
    let (fast, fast_inputs) = match joined.fast_path.as_ref().filter(|_| prefer) {
        Some(offer) => {
            let (link, rx) = FastLink::new(offer.channel);
            (Some(link), Some(rx))
        }
        None => (None, None),
    };
    let target = joined
        .fast_path
        .as_ref()
        .map(|o| o.target(conn.remote_address()));
    let shared = Arc::new(Shared {
        conn,
        control_send: tokio::sync::Mutex::new(send),
        fast,
        core,
        draining: Notify::new(),
        recovers: !opts.nodes.is_empty(),
        health: tokio::sync::watch::Sender::new(Health::Alive),
        peer_here: AtomicBool::new(joined.peer_present),
        send_wake: SendWake::default(),
    });
    let control = tokio::spawn(control_task(shared.clone(), recv, decoder));
    let media = tokio::spawn(media_task(shared.clone()));
    let mut tasks = vec![control, media];
    if shared.recovers {
        tasks.push(tokio::spawn(liveness_task(shared.clone(), opts.dead_relay)));
    }
    match (shared.fast.clone(), fast_inputs, &joined.fast_path, target) {
        (Some(link), Some(inputs), Some(offer), Some(target)) => {
            tasks.push(tokio::spawn(
                fastpath::Driver {
                    shared: shared.clone(),
                    link,
                    inputs,
                    offer: offer.clone(),
                    target,
                    cfg: BindConfig {
                        bind_timeout: opts.fast_path_bind_timeout,
                        refresh: opts.fast_path_refresh,
                        ticket_timeout: opts.join_timeout,
                    },
                }
                .run(),
            ));
        }
        _ if prefer => shared.emit_fast_event(Event::FastPathFallback {
            reason: "the relay offers no fast path".into(),
        }),
        _ => {}
    }
    Link {
        shared,
        joined,
        node,
        endpoint,
        tasks,
    }
}

async fn control_task(shared: Arc<Shared>, mut recv: quinn::RecvStream, mut decoder: FrameDecoder) {
    loop {
        loop {
            match decoder.next_message::<RelayMessage>() {
                Ok(Some(msg)) => {
                    if !dispatch(&shared, msg).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "relay sent a bad control frame; closing");
                    shared.conn.close(1u32.into(), b"bad control frame");
                    let _ = shared
                        .core
                        .step(|en| en.push_event(Event::Disconnected(e.to_string())));
                    return;
                }
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) | Err(_) => break,
        }
    }
    let reason = shared.conn.closed().await;
    let _ = shared.core.step(|e| {
        // A stateless reset: the relay restarted and does not know this connection; told at
        // once (the recovery task, with `ConnectOptions::nodes`, reconnects on it).
        if matches!(reason, quinn::ConnectionError::Reset) {
            e.push_event(Event::ConnectionReset);
        }
        if !shared.recovers {
            e.push_event(Event::Disconnected(reason.to_string()))
        }
    });
}

/// One relay message; `false` once the app stopped listening.
async fn dispatch(shared: &Shared, msg: RelayMessage) -> bool {
    let core = &shared.core;
    let event = match msg {
        RelayMessage::Signal(data) => {
            core.counters.signals_received.fetch_add(1, Relaxed);
            let Ok((used, out)) = core.step(|e| e.handle_signal(Instant::now(), &data)) else {
                return false;
            };
            shared.deliver(out).await;
            if used == SignalUse::App {
                let _ = core.signal_tx.send(data).await;
            }
            return true;
        }
        RelayMessage::FeatureRefused { feature, reason } => {
            if let Ok(mut w) = core.waiters.lock() {
                if let Some(i) = w.features.iter().position(|(f, _)| *f == feature) {
                    if let Some((_, tx)) = w.features.remove(i) {
                        let _ = tx.send(reason);
                    }
                }
            }
            return true;
        }
        RelayMessage::Pong(nonce) => {
            if let Some(tx) = core
                .waiters
                .lock()
                .ok()
                .and_then(|mut w| w.pings.remove(&nonce))
            {
                let _ = tx.send(());
            }
            return true;
        }
        RelayMessage::PeerJoined => {
            shared.peer_here.store(true, Relaxed);
            Event::PeerJoined
        }
        RelayMessage::PeerLeft(r) => {
            shared.peer_here.store(false, Relaxed);
            Event::PeerLeft(r)
        }
        RelayMessage::PeerReconnecting => {
            shared.peer_here.store(false, Relaxed);
            Event::PeerReconnecting
        }
        RelayMessage::PeerResumed => {
            shared.peer_here.store(true, Relaxed);
            Event::PeerResumed
        }
        // The claim is the relay's word until the token is checked (the handshake does).
        RelayMessage::PeerE2eeUnavailable { claim, token } => {
            let _ = core.step(|e| e.note_peer_unavailable_token(token));
            Event::PeerE2eeUnavailable(claim)
        }
        RelayMessage::Draining { deadline_ms } => {
            tracing::info!(deadline_ms, "the relay is draining");
            shared.draining.notify_one();
            return true;
        }
        RelayMessage::Dropped(RefusalReason::FastPathUnavailable) if shared.fast.is_some() => {
            if let Some(f) = &shared.fast {
                f.tell(fastpath::Input::TicketUnavailable);
            }
            return true;
        }
        RelayMessage::Dropped(r) => Event::Dropped(r),
        RelayMessage::SessionEnded(r) => Event::SessionEnded(r),
        RelayMessage::FastPathTicket(offer) => {
            if let Some(f) = &shared.fast {
                f.tell(fastpath::Input::Ticket(offer));
            }
            return true;
        }
        RelayMessage::FastPathBound { channel, addr } => {
            if let Some(f) = &shared.fast {
                f.tell(fastpath::Input::Bound { channel, addr });
            }
            return true;
        }
        RelayMessage::Joined(_) | RelayMessage::Refused(_) => {
            tracing::warn!("relay sent a second join answer; ignored");
            return true;
        }
    };
    match core.step(|e| e.handle_event(Instant::now(), event)) {
        Ok(((), out)) => shared.deliver(out).await,
        Err(_) => false,
    }
}

/// Reads one link's media (QUIC datagrams and the fast-path socket) into the engine.
struct Inbound {
    shared: Arc<Shared>,
}

impl Inbound {
    /// Takes one media datagram in the QUIC form; `false` once the app stopped listening.
    async fn on_datagram(&mut self, datagram: Bytes) -> bool {
        let core = &self.shared.core;
        let c = &core.counters;
        c.datagrams_received.fetch_add(1, Relaxed);
        core.tap(&datagram);
        let Ok((completed, out)) = core.step(|e| e.handle_datagram(Instant::now(), datagram))
        else {
            return false;
        };
        if completed {
            c.frames_received.fetch_add(1, Relaxed);
        }
        self.shared.deliver(out).await
    }

    /// Reads what the fast-path socket holds (a bounded batch); `false` once the app
    /// stopped listening. Errors go to the fast-path driver; a socket that fails with
    /// anything but "refused" is no longer read.
    async fn on_readable(
        &mut self,
        link: &FastLink,
        socket: &mut Option<GenSocket>,
        buf: &mut BytesMut,
    ) -> bool {
        let Some(s) = socket.clone() else {
            return true;
        };
        for _ in 0..64 {
            if buf.capacity() < fastpath::RECV_ROOM {
                buf.reserve(4 * fastpath::RECV_ROOM);
            }
            match s.socket.try_recv_buf(buf) {
                Ok(_) => {
                    let d = buf.split();
                    match fastpath::to_media_datagram(d) {
                        Some(q) => {
                            link.counters.received.fetch_add(1, Relaxed);
                            if !self.on_datagram(q).await {
                                return false;
                            }
                        }
                        None => {
                            link.counters.malformed.fetch_add(1, Relaxed);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    buf.clear();
                    if e.kind() != std::io::ErrorKind::ConnectionRefused {
                        *socket = None;
                    }
                    link.tell(fastpath::Input::SocketError {
                        generation: s.generation,
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
        true
    }
}

/// Waits until `socket` is readable; never, without one.
async fn readable(socket: Option<&GenSocket>) {
    match socket {
        Some(s) => {
            if s.socket.readable().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn media_task(shared: Arc<Shared>) {
    let mut inbound = Inbound {
        shared: shared.clone(),
    };
    let link = shared.fast.clone();
    let mut sockets_rx = link.as_ref().map(|l| l.subscribe());
    // The driver may have opened its socket already: start from what is there now.
    let mut sockets = sockets_rx
        .as_mut()
        .map(|rx| rx.borrow_and_update().clone())
        .unwrap_or_default();
    let mut buf = BytesMut::new();
    loop {
        let deadline = shared
            .core
            .engine
            .lock()
            .ok()
            .and_then(|e| e.poll_timeout());
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let sockets_changed = async {
            match sockets_rx.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        // Which fast-path socket is readable: 0 current, 1 previous.
        let udp = async {
            tokio::select! {
                _ = readable(sockets.current.as_ref()) => 0,
                _ = readable(sockets.previous.as_ref()) => 1,
            }
        };
        tokio::select! {
            datagram = shared.conn.read_datagram() => {
                let Ok(datagram) = datagram else { return };
                if !inbound.on_datagram(datagram).await {
                    return;
                }
            }
            which = udp => {
                if let Some(link) = link.as_deref() {
                    let socket = if which == 0 {
                        &mut sockets.current
                    } else {
                        &mut sockets.previous
                    };
                    if !inbound.on_readable(link, socket, &mut buf).await {
                        return;
                    }
                }
            }
            ok = sockets_changed => {
                match sockets_rx.as_mut() {
                    Some(rx) if ok => sockets = rx.borrow_and_update().clone(),
                    _ => sockets_rx = None,
                }
            }
            _ = expiry => {
                let Ok(((), out)) = shared.core.step(|e| e.handle_timeout(Instant::now())) else {
                    return;
                };
                if !shared.deliver(out).await {
                    return;
                }
            }
            _ = shared.core.wake.notified() => {}
        }
    }
}

/// Probe nonces carry this bit, so a probe's `Pong` never answers a `Call::ping`.
const PROBE_NONCE: u64 = 1 << 63;

/// Feeds the link's liveness detector: everything received from and sent to the relay
/// (QUIC datagrams, fast-path media) and the smoothed RTT, read a few times per threshold
/// while the relay owes an answer and otherwise at the app's next send; sends the probes it
/// asks for and publishes its verdicts for the recovery task.
async fn liveness_task(shared: Arc<Shared>, cfg: crate::options::DeadRelay) {
    // heard: every UDP datagram of the QUIC connection plus fast-path media; sent: only
    // what asks for an answer (stream, datagram and PING frames, which QUIC acknowledges,
    // plus fast-path media). Not our acknowledgements: nothing answers those, and counting
    // them would keep an idle call probing.
    let counts = |s: &Shared| {
        let (fast_rx, fast_tx) = s.fast.as_ref().map_or((0, 0), |f| {
            (
                f.counters.received.load(Relaxed),
                f.counters.sent.load(Relaxed),
            )
        });
        let q = s.conn.stats();
        let asks = q.frame_tx.stream + q.frame_tx.datagram + q.frame_tx.ping;
        (q.udp_rx.datagrams + fast_rx, asks + fast_tx)
    };
    let (heard, sent) = counts(&shared);
    let mut live = Liveness::new(cfg, heard, sent);
    let mut nonce = PROBE_NONCE;
    loop {
        let next = live.next_check(Instant::now());
        if let Some(until) = next.idle_until {
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                () = shared.send_wake.next_send() => {
                    tokio::time::sleep_until(next.at.into()).await;
                }
            }
        } else {
            tokio::time::sleep_until(next.at.into()).await;
        }
        let now = Instant::now();
        let (heard, sent) = counts(&shared);
        match live.observe(now, heard, sent, shared.conn.rtt()) {
            Action::Nothing => {}
            Action::Probe => {
                live.probe_sent(now);
                nonce = nonce.wrapping_add(1) | PROBE_NONCE;
                // A probe that cannot be written soon is itself a sign; the verdict follows.
                let ping = ClientMessage::Ping(nonce);
                let _ = tokio::time::timeout(cfg.probe_after, shared.send_control(&ping)).await;
            }
            Action::Became(h) => {
                tracing::debug!(health = ?h, silence = ?live.dead_after(), "relay link health");
                shared.health.send_replace(h);
                if h == Health::Dead {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SendWake;
    use std::time::Duration;

    #[tokio::test]
    async fn an_armed_wake_fires_at_the_next_send_and_not_before() {
        let wake = std::sync::Arc::new(SendWake::default());
        let w = wake.clone();
        let waiter = tokio::spawn(async move { w.next_send().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "woke without a send");
        wake.sent();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the send woke the idle task")
            .expect("waiter ran");
        // Disarmed by that wake: the next sends are one relaxed load each.
        assert!(!wake.armed.load(std::sync::atomic::Ordering::Relaxed));
    }
}

//! A joined call: the tokio driver around one [`Engine`], over one QUIC connection at a
//! time (and, when bound, the relay's raw-UDP fast path).
//!
//! The engine (sans-IO, [`crate::engine`]) owns everything that survives a connection:
//! keys, epochs, counters, reassembly, held frames, events. This module owns the
//! *link* (a connection, its control stream, its fast path and the tasks that read them)
//! and moves bytes and timers between the link and the engine. [`Call::resume`] and
//! [`Call::migrate`] attach a new link to the same engine; the old link's tasks end and its
//! connection closes.
//!
//! Two tasks per link: one reads the control stream and dispatches what the relay says,
//! one reads datagrams (QUIC, and the fast-path socket) and runs the engine's timers. With
//! the fast path on, a third, in [`crate::fastpath`], binds it. The app's calls
//! (`send_media`, `recv_media`, `send_signal`, ...) lock the engine only to seal or to
//! take what it produced.
//!
//! | module | owns |
//! |---|---|
//! | this one | [`Call`] (the app's handle), the call's [`Core`] (engine, counters, waiters) |
//! | `link` | one connection: its tasks (control, media and timers, fast path) and their I/O |
//! | `recovery` | which link carries the call: resume, migrate, the recovery task |
//! | `liveness` | sans-IO: when a silent relay is probed, suspect, dead (thresholds, no clock) |
//!
//! Size: ~650 lines, most of them the `Call` API's documented methods; its mechanisms are
//! in `link` and `recovery`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duet_proto::fastpath::{FastPathHeader, PacketType};
use duet_proto::{
    ClientMessage, FastPathOffer, Feature, FrameDecoder, Joined, Limits, MediaKind, NodeId,
    RefusalReason, SessionId, Slot,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::client::ResumeTicket;
use crate::e2ee::{Established, IdentityCheck, PeerIdentity, SecurityCode};
use crate::engine::Engine;
use crate::error::SdkError;
use crate::fastpath::{self, GenSocket, Transport};
use crate::fragment::MediaFrame;
use crate::options::ConnectOptions;

mod link;
mod liveness;
mod recovery;

pub(crate) use link::Shared;
use link::{attach, node_of, Link};
use recovery::{recover_task, Attach};

pub use crate::engine::{E2eeStats, Event, MAX_FRAMES_BEFORE_KEYS};

/// Counters of one call, monotonically increasing. Datagram counts cover both transports;
/// the `fast_path_` ones are the part that went over the raw-UDP fast path (current link).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallStats {
    pub frames_sent: u64,
    pub datagrams_sent: u64,
    pub frames_received: u64,
    pub datagrams_received: u64,
    /// Media datagrams sent over the fast path.
    pub fast_path_datagrams_sent: u64,
    /// Media datagrams received over the fast path (well-formed fast-path headers).
    pub fast_path_datagrams_received: u64,
    /// Fast-path datagrams dropped for a bad header or a non-media type.
    pub fast_path_malformed: u64,
    /// Frames dropped because a piece did not arrive before the reassembly deadline.
    pub incomplete_frames_dropped: u64,
    /// Received datagrams that were not valid pieces.
    pub malformed_datagrams: u64,
    pub signals_sent: u64,
    pub signals_received: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) frames_sent: AtomicU64,
    pub(super) datagrams_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) datagrams_received: AtomicU64,
    pub(super) signals_sent: AtomicU64,
    pub(super) signals_received: AtomicU64,
}

/// Answers the control task hands back to callers waiting on them.
#[derive(Default)]
pub(super) struct Waiters {
    pub(super) features: VecDeque<(Feature, oneshot::Sender<RefusalReason>)>,
    pub(super) pings: HashMap<u64, oneshot::Sender<()>>,
}

/// What a call keeps whatever link carries it.
pub(crate) struct Core {
    pub(super) engine: Mutex<Engine>,
    /// An event was queued in the engine.
    pub(super) events_ready: Notify,
    /// The engine's next deadline may have moved.
    pub(super) wake: Notify,
    pub(super) counters: Counters,
    pub(super) waiters: Mutex<Waiters>,
    /// Copies of every received datagram, before reassembly and opening (`tap_raw`).
    pub(super) tap: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    pub(super) tapping: AtomicBool,
    pub(super) media_tx: mpsc::Sender<MediaFrame>,
    pub(super) signal_tx: mpsc::Sender<Bytes>,
}

/// What one engine step produced for the driver to move.
#[derive(Default)]
pub(super) struct Out {
    pub(super) frames: Vec<MediaFrame>,
    pub(super) signals: Vec<Bytes>,
}

impl Core {
    /// Runs `f` on the engine and collects its outputs (frames, signals); wakes event
    /// readers and the timer.
    pub(super) fn step<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Result<(R, Out), SdkError> {
        let mut out = Out::default();
        let (r, events) = {
            let mut e = self.engine.lock().map_err(|_| SdkError::Closed)?;
            let r = f(&mut e);
            while let Some(fr) = e.poll_frame() {
                out.frames.push(fr);
            }
            while let Some(s) = e.poll_transmit() {
                out.signals.push(s);
            }
            (r, e.has_events())
        };
        if events {
            self.events_ready.notify_one();
        }
        self.wake.notify_one();
        Ok((r, out))
    }

    pub(super) fn tap(&self, datagram: &Bytes) {
        if self.tapping.load(std::sync::atomic::Ordering::Acquire) {
            if let Ok(t) = self.tap.lock() {
                if let Some(t) = t.as_ref() {
                    let _ = t.send(datagram.clone());
                }
            }
        }
    }
}

/// How to reach the relay again: for `resume` and `migrate`.
#[derive(Clone)]
pub(crate) struct Dial {
    pub relay: SocketAddr,
    pub token: String,
    pub opts: ConnectOptions,
}

/// A freshly joined link, before it is attached to a call.
pub(crate) struct Joining {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub streams: (quinn::SendStream, quinn::RecvStream, FrameDecoder),
    pub joined: Joined,
}

/// Where [`Call::rebind`] moved the call's sockets.
#[derive(Debug)]
pub struct Rebound {
    /// The QUIC connection's new local address.
    pub quic: SocketAddr,
    /// The fast path's new local address, or why it stayed on QUIC; `None` when the call
    /// has no fast path.
    pub fast_path: Option<Result<SocketAddr, SdkError>>,
}

/// A joined call. Dropping it closes the connection without `Leave`, which the relay
/// treats as a lost connection (the place is kept for `resume`).
pub struct Call {
    att: Arc<Attach>,
    core: Arc<Core>,
    event_reader: tokio::sync::Mutex<()>,
    pub(super) signals: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    media: tokio::sync::Mutex<mpsc::Receiver<MediaFrame>>,
    next_ping: AtomicU64,
    request_timeout: Duration,
    recovery: Option<JoinHandle<()>>,
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(t) = &self.recovery {
            t.abort();
        }
    }
}

impl Call {
    pub(crate) fn start(j: Joining, dial: Dial, engine: Engine) -> Call {
        let (signal_tx, signal_rx) = mpsc::channel(256);
        let (media_tx, media_rx) = mpsc::channel(1024);
        let core = Arc::new(Core {
            engine: Mutex::new(engine),
            events_ready: Notify::new(),
            wake: Notify::new(),
            counters: Counters::default(),
            waiters: Mutex::new(Waiters::default()),
            tap: Mutex::new(None),
            tapping: AtomicBool::new(false),
            media_tx,
            signal_tx,
        });
        let node = node_of(&dial);
        let link = attach(core.clone(), j, &dial.opts, node);
        let fleet = !dial.opts.nodes.is_empty();
        let request_timeout = dial.opts.join_timeout;
        let att = Arc::new(Attach {
            core: core.clone(),
            link: Mutex::new(Arc::new(link)),
            reattach: tokio::sync::Mutex::new(()),
            dial: Mutex::new(dial),
            leaving: AtomicBool::new(false),
            standby: Mutex::new(None),
        });
        let recovery = fleet.then(|| tokio::spawn(recover_task(Arc::downgrade(&att))));
        Call {
            att,
            core,
            request_timeout,
            event_reader: tokio::sync::Mutex::new(()),
            signals: tokio::sync::Mutex::new(signal_rx),
            media: tokio::sync::Mutex::new(media_rx),
            next_ping: AtomicU64::new(1),
            recovery,
        }
    }

    fn link(&self) -> Arc<Link> {
        self.att.link()
    }

    fn shared(&self) -> Arc<Shared> {
        self.link().shared.clone()
    }

    fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> Option<R> {
        self.core.engine.lock().ok().map(|e| f(&e))
    }

    /// Installs the agreed keys (`E2eeEstablished` first, then what waited for it).
    pub(crate) async fn install_e2ee(&self, est: Established) -> Result<(), SdkError> {
        let (r, out) = self.core.step(|e| e.install(Instant::now(), est))?;
        r?;
        self.shared().deliver(out).await;
        Ok(())
    }

    /// This call's join token (sent to the peer in the handshake).
    pub(crate) fn token(&self) -> String {
        self.att
            .dial
            .lock()
            .map(|d| d.token.clone())
            .unwrap_or_default()
    }

    /// The token the relay forwarded with its last `PeerE2eeUnavailable`.
    pub(crate) fn take_peer_unavailable_token(&self) -> Option<String> {
        self.core
            .engine
            .lock()
            .ok()
            .and_then(|mut e| e.take_peer_unavailable_token())
    }

    /// Whether this call is end-to-end encrypted (keys agreed).
    pub fn is_e2ee(&self) -> bool {
        self.with_engine(|e| e.is_e2ee()).unwrap_or(false)
    }

    /// Whether received media waits for a key confirmation (after a resume or a move).
    pub fn is_confirming(&self) -> bool {
        self.with_engine(|e| e.is_confirming()).unwrap_or(false)
    }

    /// The security code both users compare (read aloud, four groups of five digits):
    /// equal on both sides exactly when no one sits in the middle. `None` on a plain call.
    /// The same for the whole call, across resumes and moves.
    pub fn security_code(&self) -> Option<SecurityCode> {
        self.with_engine(|e| e.verdict().map(|v| v.code.clone()))
            .flatten()
    }

    /// The peer's long-term identity fingerprint: pin it (`CallOptions::pinned_peer`) once
    /// the users compared the code, so a changed key is reported next time.
    pub fn peer_identity(&self) -> Option<PeerIdentity> {
        self.with_engine(|e| e.verdict().map(|v| v.peer)).flatten()
    }

    /// The peer's user id as its signed token says, bound into the transcript: show it
    /// next to the code.
    pub fn peer_user(&self) -> Option<duet_proto::UserId> {
        self.with_engine(|e| e.verdict().and_then(|v| v.peer_user.clone()))
            .flatten()
    }

    /// The peer's identity against the pin given in `CallOptions::pinned_peer` (kept for
    /// the call's life; `Changed` only under `IdentityPolicy::Warn`).
    pub fn identity_check(&self) -> Option<IdentityCheck> {
        self.with_engine(|e| e.verdict().map(|v| v.identity_check))
            .flatten()
    }

    /// Starts a new sending epoch now (new key, new KID). Frames of the old epoch still in
    /// flight are accepted by the peer during a grace period. Returns the new epoch.
    pub fn rekey(&self) -> Result<u64, SdkError> {
        let (r, _) = self.core.step(|e| e.rekey(Instant::now()))?;
        r
    }

    /// Starts an in-call hybrid rekey now: fresh X25519 + ML-KEM-768 secrets, exchanged
    /// under the current keys, mixed into new roots for both directions (a key leaked
    /// earlier does not expose what follows). The initiator also runs one every
    /// `RekeyPolicy::hybrid_interval`. Rate-limited: [`SdkError::RekeyLimited`].
    pub async fn rekey_hybrid(&self) -> Result<(), SdkError> {
        let (r, out) = self.core.step(|e| e.rekey_hybrid(Instant::now()))?;
        r?;
        self.shared().deliver(out).await;
        Ok(())
    }

    /// How this side pads its sealed frames from now on (see [`crate::engine::padding`]).
    pub fn set_padding(&self, padding: crate::engine::Padding) {
        if let Ok(mut e) = self.core.engine.lock() {
            e.set_padding(padding);
        }
    }

    /// E2EE counters; `None` on a plain call.
    pub fn e2ee_stats(&self) -> Option<E2eeStats> {
        self.with_engine(|e| e.e2ee_stats()).flatten()
    }

    /// Copies of every datagram this endpoint receives from now on, exactly as the relay
    /// forwarded them (before reassembly and decryption). For tests and diagnostics: on an
    /// E2EE call it shows what the relay could see. Fast-path arrivals are shown in the QUIC
    /// media-datagram form (`MediaHeader | body`, the body unchanged), so there is one format.
    pub fn tap_raw(&self) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut t) = self.core.tap.lock() {
            *t = Some(tx);
        }
        self.core
            .tapping
            .store(true, std::sync::atomic::Ordering::Release);
        rx
    }

    /// The session the app joined (checked against what the relay answered).
    pub fn session(&self) -> SessionId {
        self.with_engine(|e| e.session().clone())
            .unwrap_or_else(|| self.link().joined.session.clone())
    }

    pub fn slot(&self) -> Slot {
        self.link().joined.slot
    }

    /// Whether the other endpoint was already in the session when this link joined.
    pub fn peer_present_at_join(&self) -> bool {
        self.link().joined.peer_present
    }

    /// Whether the current link took back an earlier connection's place.
    pub fn resumed(&self) -> bool {
        self.link().joined.resumed
    }

    pub fn limits(&self) -> Limits {
        self.link().joined.limits.clone()
    }

    /// The relay node the call is on now, when the token lists nodes.
    pub fn node(&self) -> Option<NodeId> {
        self.link().node.clone()
    }

    /// What this device needs to resume the call on a new connection. An E2EE call's
    /// ticket is marked so: it resumes only through [`Call::resume`] (which keeps the keys),
    /// never through `Client::resume`.
    pub fn resume_ticket(&self) -> ResumeTicket {
        let link = self.link();
        ResumeTicket {
            session: self.session(),
            secret: link.joined.resume.clone(),
            e2ee: self.with_engine(|e| e.is_e2ee_session()).unwrap_or(true),
        }
    }

    pub fn connection(&self) -> quinn::Connection {
        self.shared().conn.clone()
    }

    /// What this endpoint's media is being sent on now.
    pub fn transport(&self) -> Transport {
        self.shared()
            .fast
            .as_ref()
            .map_or(Transport::Quic, |f| f.transport())
    }

    /// The fast-path offer the relay made in the current link's `Joined` (whatever the
    /// `FastPathMode`), for tools that drive raw UDP themselves. Fresh tickets from
    /// refreshes are not reflected.
    pub fn fast_path_offer(&self) -> Option<FastPathOffer> {
        self.link().joined.fast_path.clone()
    }

    /// The local address of the current fast-path socket, when the fast path is on.
    pub fn fast_path_local_addr(&self) -> Option<SocketAddr> {
        self.shared().fast.as_ref()?.local_addr()
    }

    /// For a network change the app learned about: opens a new fast-path socket (a new
    /// local port), gets a fresh ticket, binds it and waits for the relay's confirmation.
    /// Media goes over QUIC until then. Returns the new socket's local address.
    ///
    /// Errors: [`SdkError::FastPathUnavailable`] when the fast path is off, the relay
    /// offered none or has no ticket, or the socket failed; [`SdkError::Timeout`] when the
    /// ticket or the confirmation did not come in time. Media stays on QUIC then; the call
    /// carries on.
    pub async fn rebind_fast_path(&self) -> Result<SocketAddr, SdkError> {
        let shared = self.shared();
        let link = shared.fast.as_ref().ok_or_else(|| {
            SdkError::FastPathUnavailable("the fast path is not in use on this call".into())
        })?;
        let (tx, rx) = oneshot::channel();
        link.tell(fastpath::Input::Rebind(tx));
        rx.await.map_err(|_| SdkError::Closed)?
    }

    /// The local address of the current link's QUIC socket.
    pub fn quic_local_addr(&self) -> Option<SocketAddr> {
        self.link().endpoint.local_addr().ok()
    }

    /// For a network change the app learned about: moves the call's QUIC connection to a
    /// new local UDP socket (a new port on the same local address), which is QUIC connection
    /// migration. quinn sends from the new socket at once under a fresh connection id; the
    /// relay validates the new path and carries on with the same connection, so the call
    /// keeps its keys, epochs and security code with no new join or handshake. Datagrams
    /// already on their way to the old socket are lost. Returns the new local address.
    /// The fast path has a socket of its own: [`Call::rebind`] moves both.
    ///
    /// Errors: [`SdkError::Io`] when no new socket could be bound (the old one stays);
    /// [`SdkError::EndpointShared`] when the call connects through a
    /// [`crate::SharedEndpoint`] (its socket carries other calls too).
    pub fn rebind_quic(&self) -> Result<SocketAddr, SdkError> {
        let shared = self
            .att
            .dial
            .lock()
            .map(|d| d.opts.endpoint.is_some())
            .unwrap_or(false);
        if shared {
            return Err(SdkError::EndpointShared("move one call to a new socket"));
        }
        let link = self.link();
        let old = link.endpoint.local_addr()?;
        let socket = std::net::UdpSocket::bind(SocketAddr::new(old.ip(), 0))?;
        link.endpoint.rebind(socket)?;
        Ok(link.endpoint.local_addr()?)
    }

    /// For a network change the app learned about: moves both of the call's sockets,
    /// QUIC first ([`Call::rebind_quic`], at once) and then the fast path's, when the call
    /// has one ([`Call::rebind_fast_path`], which waits for the relay's confirmation;
    /// media goes over QUIC meanwhile). One call for what a network change needs, so an app
    /// cannot move one transport and forget the other.
    ///
    /// Errors: only the QUIC move's ([`SdkError::Io`]; then nothing moved). A failed
    /// fast-path move is reported in [`Rebound::fast_path`]: the call carries on over QUIC.
    pub async fn rebind(&self) -> Result<Rebound, SdkError> {
        let quic = self.rebind_quic()?;
        let has_fast_path = self.shared().fast.is_some();
        let fast_path = if has_fast_path {
            Some(self.rebind_fast_path().await)
        } else {
            None
        };
        Ok(Rebound { quic, fast_path })
    }

    /// The next event. Events live in the engine, so none is lost across a resume; the
    /// security verdicts are never shed (see [`crate::engine::events`]).
    pub async fn next_event(&self) -> Option<Event> {
        let _reader = self.event_reader.lock().await;
        loop {
            let ready = self.core.events_ready.notified();
            if let Some(ev) = self
                .core
                .engine
                .lock()
                .ok()
                .and_then(|mut e| e.poll_event())
            {
                return Some(ev);
            }
            ready.await;
        }
    }

    /// Sends one media frame (up to 1 MiB, less the SFrame overhead on an E2EE call),
    /// split into datagrams that fit the path now. On an E2EE call the whole frame is
    /// sealed once first; the relay sees its kind, size and timing, not its content.
    pub async fn send_media(&self, kind: MediaKind, frame: &[u8]) -> Result<(), SdkError> {
        let shared = self.shared();
        let conn = &shared.conn;
        let max = conn
            .max_datagram_size()
            .ok_or(SdkError::DatagramsUnsupported)?;
        let c = &self.core.counters;
        let fast = shared.fast.as_ref().and_then(|f| Some((f, f.sender()?)));
        if let Some((link, GenSocket { generation, socket })) = fast {
            // Sized from the QUIC connection so a piece the relay bridges to the peer's QUIC
            // leg still fits; only the header differs.
            let header = FastPathHeader::new(PacketType::Media(kind), link.channel).to_bytes();
            let (pieces, _) = self
                .core
                .step(|e| e.seal_and_split(Instant::now(), kind, frame, max, Some(&header)))?;
            let pieces = pieces?;
            let n = pieces.len() as u64;
            let mut pieces = pieces.into_iter();
            let mut sent = 0u64;
            for piece in pieces.by_ref() {
                match socket.send(&piece).await {
                    Ok(_) => sent += 1,
                    Err(e) => {
                        // Media keeps flowing: this piece and the rest go over QUIC.
                        link.send_failed(generation, e.to_string());
                        if let Some(q) = fastpath::fast_piece_to_quic(&piece) {
                            conn.send_datagram_wait(q).await?;
                        }
                        break;
                    }
                }
            }
            for piece in pieces {
                if let Some(q) = fastpath::fast_piece_to_quic(&piece) {
                    conn.send_datagram_wait(q).await?;
                }
            }
            link.counters.sent.fetch_add(sent, Relaxed);
            c.datagrams_sent.fetch_add(n, Relaxed);
        } else {
            let (pieces, _) = self
                .core
                .step(|e| e.seal_and_split(Instant::now(), kind, frame, max, None))?;
            let pieces = pieces?;
            let n = pieces.len() as u64;
            for piece in pieces {
                conn.send_datagram_wait(piece).await?;
            }
            c.datagrams_sent.fetch_add(n, Relaxed);
        }
        c.frames_sent.fetch_add(1, Relaxed);
        shared.send_wake.sent();
        Ok(())
    }

    /// The next whole media frame from the peer.
    pub async fn recv_media(&self) -> Result<MediaFrame, SdkError> {
        self.media.lock().await.recv().await.ok_or(SdkError::Closed)
    }

    /// Sends one datagram exactly as given (relay header included). For tests and
    /// diagnostics; apps use `send_media`.
    pub fn send_raw_datagram(&self, datagram: Bytes) -> Result<(), SdkError> {
        let shared = self.shared();
        shared.conn.send_datagram(datagram)?;
        shared.send_wake.sent();
        Ok(())
    }

    async fn send_control(&self, msg: &ClientMessage) -> Result<(), SdkError> {
        self.shared().send_control(msg).await
    }

    /// Sends opaque bytes to the peer through the relay's control plane. (On an E2EE call,
    /// payloads starting `0x01 0x06` are the engine's key confirmations.)
    pub async fn send_signal(&self, data: &[u8]) -> Result<(), SdkError> {
        let max = self.link().joined.limits.max_signal_bytes as usize;
        if data.len() > max {
            return Err(SdkError::SignalTooLarge {
                len: data.len(),
                max,
            });
        }
        self.send_control(&ClientMessage::Signal(Bytes::copy_from_slice(data)))
            .await?;
        self.core.counters.signals_sent.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The next signal from the peer.
    pub async fn recv_signal(&self) -> Result<Bytes, SdkError> {
        self.signals
            .lock()
            .await
            .recv()
            .await
            .ok_or(SdkError::Closed)
    }

    /// A signal already queued, if any (the handshake driver drains these).
    pub(crate) async fn try_recv_signal(&self) -> Option<Bytes> {
        self.signals.lock().await.try_recv().ok()
    }

    /// Asks the relay for a call feature; returns its typed refusal (an E2EE relay refuses
    /// every feature that needs plaintext).
    pub async fn request(&self, feature: Feature) -> Result<RefusalReason, SdkError> {
        let (tx, rx) = oneshot::channel();
        self.waiters()?.features.push_back((feature, tx));
        self.send_control(&ClientMessage::Request(feature)).await?;
        tokio::time::timeout(self.request_timeout, rx)
            .await
            .map_err(|_| SdkError::Timeout("the answer to a feature request"))?
            .map_err(|_| SdkError::Closed)
    }

    /// Round trip to the relay over the control stream.
    pub async fn ping(&self) -> Result<Duration, SdkError> {
        let nonce = self.next_ping.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters()?.pings.insert(nonce, tx);
        let t0 = Instant::now();
        self.send_control(&ClientMessage::Ping(nonce)).await?;
        tokio::time::timeout(self.request_timeout, rx)
            .await
            .map_err(|_| SdkError::Timeout("Pong"))?
            .map_err(|_| SdkError::Closed)?;
        Ok(t0.elapsed())
    }

    fn waiters(&self) -> Result<std::sync::MutexGuard<'_, Waiters>, SdkError> {
        self.core.waiters.lock().map_err(|_| SdkError::Closed)
    }

    /// Leaves the session for good; the peer is told `PeerLeft(Left)`.
    pub async fn leave(self) -> Result<(), SdkError> {
        self.att
            .leaving
            .store(true, std::sync::atomic::Ordering::Release);
        let shared = self.shared();
        shared.send_control(&ClientMessage::Leave).await?;
        {
            let mut send = shared.control_send.lock().await;
            let _ = send.finish();
            // Wait (briefly) until the relay has the Leave, so it is not taken for a loss.
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.conn.closed()).await;
        Ok(())
    }

    pub fn stats(&self) -> CallStats {
        let c = &self.core.counters;
        let shared = self.shared();
        let fast = |f: fn(&fastpath::FastCounters) -> &AtomicU64| {
            shared
                .fast
                .as_ref()
                .map_or(0, |l| f(&l.counters).load(Relaxed))
        };
        let r = self
            .with_engine(|e| e.reassembly_stats())
            .unwrap_or_default();
        CallStats {
            fast_path_datagrams_sent: fast(|c| &c.sent),
            fast_path_datagrams_received: fast(|c| &c.received),
            fast_path_malformed: fast(|c| &c.malformed),
            frames_sent: c.frames_sent.load(Relaxed),
            datagrams_sent: c.datagrams_sent.load(Relaxed),
            frames_received: c.frames_received.load(Relaxed),
            datagrams_received: c.datagrams_received.load(Relaxed),
            incomplete_frames_dropped: r.frames_incomplete,
            malformed_datagrams: r.malformed_datagrams,
            signals_sent: c.signals_sent.load(Relaxed),
            signals_received: c.signals_received.load(Relaxed),
        }
    }

    /// Takes this device's place back on a new connection to the same relay (after the old
    /// one was lost), continuing the same engine: same keys, epochs, counters and code, no
    /// new handshake. On an E2EE call received media is held until both sides proved they
    /// hold the keys ([`Event::KeysConfirmed`]).
    ///
    /// Errors (typed; the call keeps its keys and may try again): connecting or joining
    /// failed, or [`SdkError::Resume`] when the relay's answer does not continue this call
    /// (another session or slot, or not a resume).
    pub async fn resume(&self) -> Result<(), SdkError> {
        self.att.reconnect(true).await
    }

    /// Moves the call to relay node `to` at `addr` (the next one of the token's list, when
    /// the current node died or is draining): a fresh join there, the same engine, key
    /// confirmation before media is delivered. Emits [`Event::Migrated`]. With
    /// [`ConnectOptions::nodes`] set the call does this by itself.
    ///
    /// Errors: [`SdkError::Resume`] with `NodeNotListed` when the token does not list `to`;
    /// connecting or joining failed.
    pub async fn migrate(&self, to: NodeId, addr: SocketAddr) -> Result<(), SdkError> {
        self.att.migrate(to, addr).await
    }

    /// The nodes to try after the current one, in the token's order (then the current one,
    /// for a fresh join after a restart).
    pub fn fallback_nodes(&self) -> Vec<NodeId> {
        self.att.fallback_nodes()
    }
}

//! A joined call: events, signals, feature requests and media over one QUIC connection
//! (and, when bound, the relay's raw-UDP fast path).
//!
//! Two background tasks drive it: one reads the control stream and dispatches what the
//! relay says, one reads datagrams (QUIC, and the fast-path socket) and reassembles frames.
//! With the fast path on, a third, in [`crate::fastpath`], binds it. The app's calls
//! (`send_media`, `recv_media`, `send_signal`, ...) only touch channels, the connection and
//! the fast-path socket.
//!
//! On an end-to-end encrypted call (`Client::join_e2ee`) `send_media` seals each whole
//! frame once with the call's [`FrameSealer`] and then splits it; the media task opens each
//! reassembled frame with the [`FrameOpener`] and drops (and counts) any that fail. Without
//! keys (plain `join`) frames are carried as given.
//!
//! Frames that arrive before this side holds its opener (slot A: the peer may send its
//! first frames before A has processed `Finished`) are buffered, up to
//! [`MAX_FRAMES_BEFORE_KEYS`], and opened once the keys are in; beyond that the oldest are
//! dropped and counted in [`E2eeStats::dropped_before_keys`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duet_proto::control::encode;
use duet_proto::fastpath::{FastPathHeader, PacketType};
use duet_proto::{
    ClientMessage, E2eeClaim, EndReason, FastPathOffer, Feature, FrameDecoder, Joined, Limits,
    MediaKind, PeerLeftReason, RefusalReason, RelayMessage, SessionId, Slot,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::ResumeTicket;
use crate::e2ee::{
    Established, FrameOpener, FrameSealer, IdentityCheck, PeerIdentity, RecvStats, SecurityCode,
};
use crate::error::SdkError;
use crate::fastpath::{self, BindConfig, FastLink, FastPathMode, GenSocket, Transport};
use crate::fragment::{Fragmenter, MediaFrame, Reassembler};
use crate::options::ConnectOptions;

/// What happened in the call, in the order the relay said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PeerJoined,
    PeerLeft(PeerLeftReason),
    /// The peer's connection dropped or moved; its place is kept for it.
    PeerReconnecting,
    /// The peer is back; the call carries on.
    PeerResumed,
    /// The peer cannot use E2EE for this call; the app may fall back to its ordinary path.
    PeerE2eeUnavailable(E2eeClaim),
    /// The relay dropped one of this endpoint's messages.
    Dropped(RefusalReason),
    SessionEnded(EndReason),
    /// The connection closed; the text says why.
    Disconnected(String),
    /// The keys are agreed: the call is end-to-end encrypted from here on. The first event
    /// an app sees on a call from `Client::join_e2ee`.
    E2eeEstablished {
        code: SecurityCode,
        identity_check: IdentityCheck,
    },
    /// The peer's long-term identity key differs from the one pinned in
    /// `CallOptions::pinned_peer`: ask the user to compare the security code again.
    PeerIdentityChanged {
        peer: PeerIdentity,
    },
    /// Media keys rolled over to a new epoch: `by_peer` for the peer's sending keys (seen on
    /// its first frame of the new epoch), otherwise this side's (on demand or on schedule).
    Rekeyed {
        by_peer: bool,
        epoch: u64,
    },
    /// The relay confirmed the fast-path binding (it saw this endpoint at `addr`): media is
    /// now sent over raw UDP. Also after a rebind, or when a NAT moved the binding.
    FastPathBound {
        addr: SocketAddr,
    },
    /// Media stays on (or went back to) QUIC datagrams: the bind was not confirmed in time,
    /// the fast-path socket failed (UDP blocked, port closed) or the relay offers none. The
    /// call carries on.
    FastPathFallback {
        reason: String,
    },
}

/// Frames kept while waiting for the keys (see the module docs).
pub const MAX_FRAMES_BEFORE_KEYS: usize = 64;

/// End-to-end encryption counters of one call. Rejected frames are never delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct E2eeStats {
    pub frames_sealed: u64,
    pub frames_opened: u64,
    /// This side's epochs started after the first (on demand or on schedule).
    pub rekeys_sent: u64,
    /// The peer's new epochs seen.
    pub rekeys_received: u64,
    /// Failed authentication: flipped bits, forged frames, wrong key.
    pub rejected_tampered: u64,
    /// Already seen, or older than the replay window.
    pub rejected_replayed: u64,
    /// An epoch older than the current one, past its grace period.
    pub rejected_stale_epoch: u64,
    /// A KID that is not the peer's direction, or too far ahead.
    pub rejected_unknown_kid: u64,
    /// Not an SFrame frame at all.
    pub rejected_malformed: u64,
    /// Frames that arrived before the keys and were opened once they were in.
    pub buffered_before_keys: u64,
    /// Frames that arrived before the keys and were dropped (buffer full).
    pub dropped_before_keys: u64,
}

impl E2eeStats {
    /// Every frame dropped by the E2EE layer.
    pub fn rejected(&self) -> u64 {
        self.rejected_tampered
            + self.rejected_replayed
            + self.rejected_stale_epoch
            + self.rejected_unknown_kid
            + self.rejected_malformed
            + self.dropped_before_keys
    }
}

/// The sending half of an established E2EE call, and what the handshake proved.
struct E2eeSend {
    sealer: Mutex<FrameSealer>,
    code: SecurityCode,
    peer: PeerIdentity,
    identity_check: IdentityCheck,
}

/// Counters of one call, monotonically increasing. Datagram counts cover both transports;
/// the `fast_path_` ones are the part that went over the raw-UDP fast path.
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
struct Counters {
    frames_sent: AtomicU64,
    datagrams_sent: AtomicU64,
    frames_received: AtomicU64,
    datagrams_received: AtomicU64,
    incomplete_frames_dropped: AtomicU64,
    malformed_datagrams: AtomicU64,
    signals_sent: AtomicU64,
    signals_received: AtomicU64,
}

/// Answers the control task hands back to callers waiting on them.
#[derive(Default)]
struct Waiters {
    features: VecDeque<(Feature, oneshot::Sender<RefusalReason>)>,
    pings: HashMap<u64, oneshot::Sender<()>>,
}

pub(crate) struct Shared {
    conn: quinn::Connection,
    control_send: tokio::sync::Mutex<quinn::SendStream>,
    /// The fast path, when `FastPathMode::Prefer` and the relay offered one.
    fast: Option<Arc<FastLink>>,
    counters: Counters,
    waiters: Mutex<Waiters>,
    recv_e2ee: Mutex<RecvStats>,
    buffered_before_keys: AtomicU64,
    dropped_before_keys: AtomicU64,
    /// Copies of every received datagram, before reassembly and opening (`tap_raw`).
    tap: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    tapping: std::sync::atomic::AtomicBool,
    /// Fast-path events held back while an E2EE call waits for its keys, so that
    /// `E2eeEstablished` stays the call's first event; `None` once they flow.
    fast_events: Mutex<Option<Vec<Event>>>,
    events: mpsc::Sender<Event>,
}

impl Shared {
    /// Queues a fast-path event (never blocks: `Call::transport` is the state, events tell
    /// of changes).
    pub(crate) fn emit_fast_event(&self, ev: Event) {
        if let Ok(mut gate) = self.fast_events.lock() {
            if let Some(held) = gate.as_mut() {
                held.push(ev);
                return;
            }
        }
        if self.events.try_send(ev).is_err() {
            tracing::debug!("event queue full; a fast-path event was dropped");
        }
    }

    /// Resolves once the QUIC connection is closed.
    pub(crate) async fn closed(&self) {
        self.conn.closed().await;
    }

    pub(crate) async fn send_control(&self, msg: &ClientMessage) -> Result<(), SdkError> {
        let frame = encode(msg)?;
        self.control_send.lock().await.write_all(&frame).await?;
        Ok(())
    }

    fn tap(&self, datagram: &Bytes) {
        if self.tapping.load(std::sync::atomic::Ordering::Acquire) {
            if let Ok(t) = self.tap.lock() {
                if let Some(t) = t.as_ref() {
                    let _ = t.send(datagram.clone());
                }
            }
        }
    }
}

/// A joined call. Dropping it closes the connection without `Leave`, which the relay
/// treats as a lost connection (the place is kept for `resume`).
pub struct Call {
    shared: Arc<Shared>,
    // Kept so the socket lives as long as the call.
    _endpoint: quinn::Endpoint,
    joined: Joined,
    fragmenter: Mutex<Fragmenter>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    signals: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    media: tokio::sync::Mutex<mpsc::Receiver<MediaFrame>>,
    next_ping: AtomicU64,
    request_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
    event_tx: mpsc::Sender<Event>,
    /// Whether media must be sealed (a call from `join_e2ee`): then no media moves until
    /// `e2ee` is set.
    e2ee_required: bool,
    e2ee: std::sync::OnceLock<E2eeSend>,
    opener_tx: Mutex<Option<oneshot::Sender<FrameOpener>>>,
}

impl Call {
    pub(crate) fn start(
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        (send, recv, decoder): (quinn::SendStream, quinn::RecvStream, FrameDecoder),
        joined: Joined,
        opts: &ConnectOptions,
        e2ee_required: bool,
    ) -> Call {
        let (event_tx, event_rx) = mpsc::channel(256);
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
            counters: Counters::default(),
            waiters: Mutex::new(Waiters::default()),
            recv_e2ee: Mutex::new(RecvStats::default()),
            buffered_before_keys: AtomicU64::new(0),
            dropped_before_keys: AtomicU64::new(0),
            tap: Mutex::new(None),
            tapping: std::sync::atomic::AtomicBool::new(false),
            fast_events: Mutex::new(e2ee_required.then(Vec::new)),
            events: event_tx.clone(),
        });
        let (signal_tx, signal_rx) = mpsc::channel(256);
        let (media_tx, media_rx) = mpsc::channel(1024);
        let (opener_tx, opener_rx) = if e2ee_required {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let control = tokio::spawn(control_task(
            shared.clone(),
            recv,
            decoder,
            event_tx.clone(),
            signal_tx,
        ));
        let media = tokio::spawn(media_task(
            shared.clone(),
            media_tx,
            opts.reassembly_timeout,
            opener_rx,
            event_tx.clone(),
        ));
        let mut tasks = vec![control, media];
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
        Call {
            shared,
            _endpoint: endpoint,
            joined,
            fragmenter: Mutex::new(Fragmenter::default()),
            events: tokio::sync::Mutex::new(event_rx),
            signals: tokio::sync::Mutex::new(signal_rx),
            media: tokio::sync::Mutex::new(media_rx),
            next_ping: AtomicU64::new(1),
            request_timeout: opts.join_timeout,
            tasks,
            event_tx,
            e2ee_required,
            e2ee: std::sync::OnceLock::new(),
            opener_tx: Mutex::new(opener_tx),
        }
    }

    /// Installs the agreed keys: the opener goes to the media task, the sealer to
    /// `send_media`. Emits `E2eeEstablished` (and `PeerIdentityChanged` when it did).
    pub(crate) fn install_e2ee(&self, est: Established) -> Result<(), SdkError> {
        let Established {
            code,
            peer,
            identity_check,
            sealer,
            opener,
            ..
        } = est;
        let tx = self
            .opener_tx
            .lock()
            .map_err(|_| SdkError::Closed)?
            .take()
            .ok_or(SdkError::Closed)?;
        tx.send(opener).map_err(|_| SdkError::Closed)?;
        // Under the gate's lock, so no fast-path event slips in before these.
        let mut gate = self.shared.fast_events.lock().ok();
        let _ = self.event_tx.try_send(Event::E2eeEstablished {
            code: code.clone(),
            identity_check,
        });
        if identity_check == IdentityCheck::Changed {
            let _ = self.event_tx.try_send(Event::PeerIdentityChanged { peer });
        }
        if let Some(held) = gate.as_mut().and_then(|g| g.take()) {
            for ev in held {
                let _ = self.event_tx.try_send(ev);
            }
        }
        drop(gate);
        self.e2ee
            .set(E2eeSend {
                sealer: Mutex::new(sealer),
                code,
                peer,
                identity_check,
            })
            .map_err(|_| SdkError::Protocol("keys installed twice".into()))
    }

    /// The locked event and signal receivers, for the E2EE handshake driver.
    pub(crate) async fn handshake_channels(
        &self,
    ) -> (
        tokio::sync::MutexGuard<'_, mpsc::Receiver<Event>>,
        tokio::sync::MutexGuard<'_, mpsc::Receiver<Bytes>>,
    ) {
        (self.events.lock().await, self.signals.lock().await)
    }

    /// Whether this call is end-to-end encrypted (keys agreed).
    pub fn is_e2ee(&self) -> bool {
        self.e2ee.get().is_some()
    }

    /// The security code both users compare (read aloud, four groups of five digits):
    /// equal on both sides exactly when no one sits in the middle. `None` on a plain call.
    pub fn security_code(&self) -> Option<&SecurityCode> {
        self.e2ee.get().map(|e| &e.code)
    }

    /// The peer's long-term identity fingerprint: pin it (`CallOptions::pinned_peer`) once
    /// the users compared the code, so a changed key is reported next time.
    pub fn peer_identity(&self) -> Option<PeerIdentity> {
        self.e2ee.get().map(|e| e.peer)
    }

    /// The peer's identity against the pin given in `CallOptions::pinned_peer`.
    pub fn identity_check(&self) -> Option<IdentityCheck> {
        self.e2ee.get().map(|e| e.identity_check)
    }

    /// Starts a new sending epoch now (new key, new KID). Frames of the old epoch still in
    /// flight are accepted by the peer during a grace period. Returns the new epoch.
    pub fn rekey(&self) -> Result<u64, SdkError> {
        let e = self.e2ee.get().ok_or(SdkError::E2eeNotEstablished)?;
        let epoch = e
            .sealer
            .lock()
            .map_err(|_| SdkError::Closed)?
            .rekey(Instant::now())?;
        let _ = self.event_tx.try_send(Event::Rekeyed {
            by_peer: false,
            epoch,
        });
        Ok(epoch)
    }

    /// E2EE counters; `None` on a plain call.
    pub fn e2ee_stats(&self) -> Option<E2eeStats> {
        let e = self.e2ee.get()?;
        let send = e.sealer.lock().ok()?.stats();
        let recv = *self.shared.recv_e2ee.lock().ok()?;
        Some(E2eeStats {
            frames_sealed: send.frames_sealed,
            frames_opened: recv.frames_opened,
            rekeys_sent: send.rekeys,
            rekeys_received: recv.rekeys,
            rejected_tampered: recv.auth_failed,
            rejected_replayed: recv.replayed,
            rejected_stale_epoch: recv.stale_epoch,
            rejected_unknown_kid: recv.unknown_kid,
            rejected_malformed: recv.malformed,
            buffered_before_keys: self.shared.buffered_before_keys.load(Relaxed),
            dropped_before_keys: self.shared.dropped_before_keys.load(Relaxed),
        })
    }

    /// Copies of every datagram this endpoint receives from now on, exactly as the relay
    /// forwarded them (before reassembly and decryption). For tests and diagnostics: on an
    /// E2EE call it shows what the relay could see. Fast-path arrivals are shown in the QUIC
    /// media-datagram form (`MediaHeader | body`, the body unchanged), so there is one format.
    pub fn tap_raw(&self) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut t) = self.shared.tap.lock() {
            *t = Some(tx);
        }
        self.shared
            .tapping
            .store(true, std::sync::atomic::Ordering::Release);
        rx
    }

    pub fn session(&self) -> &SessionId {
        &self.joined.session
    }

    pub fn slot(&self) -> Slot {
        self.joined.slot
    }

    /// Whether the other endpoint was already in the session when this one joined.
    pub fn peer_present_at_join(&self) -> bool {
        self.joined.peer_present
    }

    /// Whether this call took back an earlier connection's place.
    pub fn resumed(&self) -> bool {
        self.joined.resumed
    }

    pub fn limits(&self) -> &Limits {
        &self.joined.limits
    }

    /// What this device needs to resume the call on a new connection.
    pub fn resume_ticket(&self) -> ResumeTicket {
        ResumeTicket {
            session: self.joined.session.clone(),
            secret: self.joined.resume.clone(),
        }
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.shared.conn
    }

    /// What this endpoint's media is being sent on now.
    pub fn transport(&self) -> Transport {
        self.shared
            .fast
            .as_ref()
            .map_or(Transport::Quic, |f| f.transport())
    }

    /// The fast-path offer the relay made in `Joined` (whatever the `FastPathMode`), for
    /// tools that drive raw UDP themselves. Fresh tickets from refreshes are not reflected.
    pub fn fast_path_offer(&self) -> Option<&FastPathOffer> {
        self.joined.fast_path.as_ref()
    }

    /// The local address of the current fast-path socket, when the fast path is on.
    pub fn fast_path_local_addr(&self) -> Option<SocketAddr> {
        self.shared.fast.as_ref()?.local_addr()
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
        let link = self.shared.fast.as_ref().ok_or_else(|| {
            SdkError::FastPathUnavailable("the fast path is not in use on this call".into())
        })?;
        let (tx, rx) = oneshot::channel();
        link.tell(fastpath::Input::Rebind(tx));
        rx.await.map_err(|_| SdkError::Closed)?
    }

    /// The next event, or `None` once the call is over and every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// Sends one media frame (up to 1 MiB, less the SFrame overhead on an E2EE call),
    /// split into datagrams that fit the path now. On an E2EE call the whole frame is
    /// sealed once first; the relay sees its kind, size and timing, not its content.
    pub async fn send_media(&self, kind: MediaKind, frame: &[u8]) -> Result<(), SdkError> {
        let conn = &self.shared.conn;
        let max = conn
            .max_datagram_size()
            .ok_or(SdkError::DatagramsUnsupported)?;
        let sealed;
        let frame = if self.e2ee_required {
            let e = self.e2ee.get().ok_or(SdkError::E2eeNotEstablished)?;
            let mut out = Vec::with_capacity(frame.len() + 64);
            let (before, after) = {
                let mut sealer = e.sealer.lock().map_err(|_| SdkError::Closed)?;
                let before = sealer.epoch();
                (
                    before,
                    // The kind is authenticated (SFrame metadata) so a relay cannot
                    // relabel audio as video or the like.
                    sealer.seal_with_metadata_into(
                        Instant::now(),
                        &[kind as u8],
                        frame,
                        &mut out,
                    )?,
                )
            };
            if after != before {
                let _ = self.event_tx.try_send(Event::Rekeyed {
                    by_peer: false,
                    epoch: after,
                });
            }
            sealed = out;
            &sealed[..]
        } else {
            frame
        };
        let c = &self.shared.counters;
        let fast = self
            .shared
            .fast
            .as_ref()
            .and_then(|f| Some((f, f.sender()?)));
        if let Some((link, GenSocket { generation, socket })) = fast {
            // Sized from the QUIC connection so a piece the relay bridges to the peer's QUIC
            // leg still fits; only the header differs.
            let header = FastPathHeader::new(PacketType::Media(kind), link.channel).to_bytes();
            let pieces = self
                .fragmenter
                .lock()
                .map_err(|_| SdkError::Closed)?
                .split_with_header(kind, frame, max, &header)?;
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
            let pieces = self
                .fragmenter
                .lock()
                .map_err(|_| SdkError::Closed)?
                .split(kind, frame, max)?;
            let n = pieces.len() as u64;
            for piece in pieces {
                conn.send_datagram_wait(piece).await?;
            }
            c.datagrams_sent.fetch_add(n, Relaxed);
        }
        c.frames_sent.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The next whole media frame from the peer.
    pub async fn recv_media(&self) -> Result<MediaFrame, SdkError> {
        self.media.lock().await.recv().await.ok_or(SdkError::Closed)
    }

    /// Sends one datagram exactly as given (relay header included). For tests and
    /// diagnostics; apps use `send_media`.
    pub fn send_raw_datagram(&self, datagram: Bytes) -> Result<(), SdkError> {
        Ok(self.shared.conn.send_datagram(datagram)?)
    }

    async fn send_control(&self, msg: &ClientMessage) -> Result<(), SdkError> {
        self.shared.send_control(msg).await
    }

    /// Sends opaque bytes to the peer through the relay's control plane.
    pub async fn send_signal(&self, data: &[u8]) -> Result<(), SdkError> {
        let max = self.joined.limits.max_signal_bytes as usize;
        if data.len() > max {
            return Err(SdkError::SignalTooLarge {
                len: data.len(),
                max,
            });
        }
        self.send_control(&ClientMessage::Signal(Bytes::copy_from_slice(data)))
            .await?;
        self.shared.counters.signals_sent.fetch_add(1, Relaxed);
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
        self.shared.waiters.lock().map_err(|_| SdkError::Closed)
    }

    /// Leaves the session for good; the peer is told `PeerLeft(Left)`.
    pub async fn leave(self) -> Result<(), SdkError> {
        self.send_control(&ClientMessage::Leave).await?;
        {
            let mut send = self.shared.control_send.lock().await;
            let _ = send.finish();
            // Wait (briefly) until the relay has the Leave, so it is not taken for a loss.
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.conn.closed()).await;
        Ok(())
    }

    pub fn stats(&self) -> CallStats {
        let c = &self.shared.counters;
        let fast = |f: fn(&fastpath::FastCounters) -> &AtomicU64| {
            self.shared
                .fast
                .as_ref()
                .map_or(0, |l| f(&l.counters).load(Relaxed))
        };
        CallStats {
            fast_path_datagrams_sent: fast(|c| &c.sent),
            fast_path_datagrams_received: fast(|c| &c.received),
            fast_path_malformed: fast(|c| &c.malformed),
            frames_sent: c.frames_sent.load(Relaxed),
            datagrams_sent: c.datagrams_sent.load(Relaxed),
            frames_received: c.frames_received.load(Relaxed),
            datagrams_received: c.datagrams_received.load(Relaxed),
            incomplete_frames_dropped: c.incomplete_frames_dropped.load(Relaxed),
            malformed_datagrams: c.malformed_datagrams.load(Relaxed),
            signals_sent: c.signals_sent.load(Relaxed),
            signals_received: c.signals_received.load(Relaxed),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.conn.close(0u32.into(), b"call dropped");
    }
}

async fn control_task(
    shared: Arc<Shared>,
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    events: mpsc::Sender<Event>,
    signals: mpsc::Sender<Bytes>,
) {
    loop {
        loop {
            match decoder.next_message::<RelayMessage>() {
                Ok(Some(msg)) => dispatch(&shared, msg, &events, &signals).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "relay sent a bad control frame; closing");
                    shared.conn.close(1u32.into(), b"bad control frame");
                    let _ = events.send(Event::Disconnected(e.to_string())).await;
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
    let _ = events.send(Event::Disconnected(reason.to_string())).await;
}

async fn dispatch(
    shared: &Shared,
    msg: RelayMessage,
    events: &mpsc::Sender<Event>,
    signals: &mpsc::Sender<Bytes>,
) {
    let event = match msg {
        RelayMessage::Signal(data) => {
            shared.counters.signals_received.fetch_add(1, Relaxed);
            let _ = signals.send(data).await;
            return;
        }
        RelayMessage::FeatureRefused { feature, reason } => {
            if let Ok(mut w) = shared.waiters.lock() {
                if let Some(i) = w.features.iter().position(|(f, _)| *f == feature) {
                    if let Some((_, tx)) = w.features.remove(i) {
                        let _ = tx.send(reason);
                    }
                }
            }
            return;
        }
        RelayMessage::Pong(nonce) => {
            if let Some(tx) = shared
                .waiters
                .lock()
                .ok()
                .and_then(|mut w| w.pings.remove(&nonce))
            {
                let _ = tx.send(());
            }
            return;
        }
        RelayMessage::PeerJoined => Event::PeerJoined,
        RelayMessage::PeerLeft(r) => Event::PeerLeft(r),
        RelayMessage::PeerReconnecting => Event::PeerReconnecting,
        RelayMessage::PeerResumed => Event::PeerResumed,
        // The claim is the relay's word until the token is checked (the E2EE layer does).
        RelayMessage::PeerE2eeUnavailable { claim, .. } => Event::PeerE2eeUnavailable(claim),
        RelayMessage::Draining { deadline_ms } => {
            tracing::info!(deadline_ms, "the relay is draining");
            return;
        }
        RelayMessage::Dropped(RefusalReason::FastPathUnavailable) if shared.fast.is_some() => {
            if let Some(f) = &shared.fast {
                f.tell(fastpath::Input::TicketUnavailable);
            }
            return;
        }
        RelayMessage::Dropped(r) => Event::Dropped(r),
        RelayMessage::SessionEnded(r) => Event::SessionEnded(r),
        RelayMessage::FastPathTicket(offer) => {
            if let Some(f) = &shared.fast {
                f.tell(fastpath::Input::Ticket(offer));
            }
            return;
        }
        RelayMessage::FastPathBound { channel, addr } => {
            if let Some(f) = &shared.fast {
                f.tell(fastpath::Input::Bound { channel, addr });
            }
            return;
        }
        RelayMessage::Joined(_) | RelayMessage::Refused(_) => {
            tracing::warn!("relay sent a second join answer; ignored");
            return;
        }
    };
    let _ = events.send(event).await;
}

/// Opens one reassembled frame; `None` = dropped (counted by the opener).
fn open_frame(
    shared: &Shared,
    opener: &mut FrameOpener,
    events: &mpsc::Sender<Event>,
    frame: MediaFrame,
) -> Option<MediaFrame> {
    let mut out = Vec::with_capacity(frame.data.len());
    let res =
        opener.open_with_metadata_into(Instant::now(), &[frame.kind as u8], &frame.data, &mut out);
    if let Ok(mut s) = shared.recv_e2ee.lock() {
        *s = opener.stats();
    }
    match res {
        Ok(opened) => {
            if opened.switched_epoch {
                let _ = events.try_send(Event::Rekeyed {
                    by_peer: true,
                    epoch: opened.epoch,
                });
            }
            Some(MediaFrame {
                kind: frame.kind,
                data: out.into(),
            })
        }
        Err(e) => {
            tracing::debug!(
                reason = e.as_str(),
                "dropped a media frame that did not open"
            );
            None
        }
    }
}

/// Reassembly and opening of received pieces, whatever transport carried them.
struct Inbound {
    reassembler: Reassembler,
    /// E2EE: frames wait in `early` until the opener arrives.
    opener: Option<FrameOpener>,
    waiting_for_keys: bool,
    early: VecDeque<MediaFrame>,
}

impl Inbound {
    /// Takes one media datagram in the QUIC form; `false` once the app stopped listening.
    async fn on_datagram(
        &mut self,
        shared: &Shared,
        datagram: Bytes,
        frames: &mpsc::Sender<MediaFrame>,
        events: &mpsc::Sender<Event>,
    ) -> bool {
        let c = &shared.counters;
        c.datagrams_received.fetch_add(1, Relaxed);
        shared.tap(&datagram);
        if let Ok(Some(frame)) = self.reassembler.push(datagram, Instant::now()) {
            c.frames_received.fetch_add(1, Relaxed);
            let frame = if let Some(o) = self.opener.as_mut() {
                open_frame(shared, o, events, frame)
            } else if self.waiting_for_keys {
                if self.early.len() >= MAX_FRAMES_BEFORE_KEYS {
                    self.early.pop_front();
                    shared.dropped_before_keys.fetch_add(1, Relaxed);
                }
                self.early.push_back(frame);
                None
            } else {
                Some(frame)
            };
            if let Some(frame) = frame {
                if frames.send(frame).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Reads what the fast-path socket holds (a bounded batch); `false` once the app
    /// stopped listening. Errors go to the fast-path driver; a socket that fails with
    /// anything but "refused" is no longer read.
    async fn on_readable(
        &mut self,
        shared: &Shared,
        link: &FastLink,
        socket: &mut Option<GenSocket>,
        buf: &mut BytesMut,
        frames: &mpsc::Sender<MediaFrame>,
        events: &mpsc::Sender<Event>,
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
                            if !self.on_datagram(shared, q, frames, events).await {
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

async fn media_task(
    shared: Arc<Shared>,
    frames: mpsc::Sender<MediaFrame>,
    timeout: Duration,
    mut opener_rx: Option<oneshot::Receiver<FrameOpener>>,
    events: mpsc::Sender<Event>,
) {
    let mut inbound = Inbound {
        reassembler: Reassembler::new(timeout),
        opener: None,
        waiting_for_keys: opener_rx.is_some(),
        early: VecDeque::new(),
    };
    let c = &shared.counters;
    let link = shared.fast.clone();
    let mut sockets_rx = link.as_ref().map(|l| l.subscribe());
    // The driver may have opened its socket already: start from what is there now.
    let mut sockets = sockets_rx
        .as_mut()
        .map(|rx| rx.borrow_and_update().clone())
        .unwrap_or_default();
    let mut buf = BytesMut::new();
    loop {
        let deadline = inbound.reassembler.next_deadline();
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let keys = async {
            match opener_rx.as_mut() {
                Some(rx) => rx.await.ok(),
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
            got = keys => {
                opener_rx = None;
                inbound.waiting_for_keys = false;
                let Some(mut o) = got else { return };
                while let Some(frame) = inbound.early.pop_front() {
                    shared.buffered_before_keys.fetch_add(1, Relaxed);
                    if let Some(f) = open_frame(&shared, &mut o, &events, frame) {
                        if frames.send(f).await.is_err() {
                            return;
                        }
                    }
                }
                inbound.opener = Some(o);
            }
            datagram = shared.conn.read_datagram() => {
                let Ok(datagram) = datagram else { return };
                if !inbound.on_datagram(&shared, datagram, &frames, &events).await {
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
                    if !inbound
                        .on_readable(&shared, link, socket, &mut buf, &frames, &events)
                        .await
                    {
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
                inbound.reassembler.expire(Instant::now());
            }
        }
        let s = inbound.reassembler.stats();
        c.incomplete_frames_dropped
            .store(s.frames_incomplete, Relaxed);
        c.malformed_datagrams.store(s.malformed_datagrams, Relaxed);
    }
}

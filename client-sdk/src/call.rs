//! A joined call: events, signals, feature requests and media over one QUIC connection.
//!
//! Two background tasks drive it: one reads the control stream and dispatches what the
//! relay says, one reads datagrams and reassembles frames. The app's calls (`send_media`,
//! `recv_media`, `send_signal`, ...) only touch channels and the connection. This module
//! does not encrypt: the E2EE layer seals a frame before `send_media` splits it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duet_proto::control::encode;
use duet_proto::{
    ClientMessage, E2eeClaim, EndReason, Feature, FrameDecoder, Joined, Limits, MediaKind,
    PeerLeftReason, RefusalReason, RelayMessage, SessionId, Slot,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::ResumeTicket;
use crate::error::SdkError;
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
}

/// Counters of one call, monotonically increasing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallStats {
    pub frames_sent: u64,
    pub datagrams_sent: u64,
    pub frames_received: u64,
    pub datagrams_received: u64,
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

struct Shared {
    conn: quinn::Connection,
    counters: Counters,
    waiters: Mutex<Waiters>,
}

/// A joined call. Dropping it closes the connection without `Leave`, which the relay
/// treats as a lost connection (the place is kept for `resume`).
pub struct Call {
    shared: Arc<Shared>,
    // Kept so the socket lives as long as the call.
    _endpoint: quinn::Endpoint,
    joined: Joined,
    send: tokio::sync::Mutex<quinn::SendStream>,
    fragmenter: Mutex<Fragmenter>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    signals: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    media: tokio::sync::Mutex<mpsc::Receiver<MediaFrame>>,
    next_ping: AtomicU64,
    request_timeout: Duration,
    tasks: [JoinHandle<()>; 2],
}

impl Call {
    pub(crate) fn start(
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
        joined: Joined,
        opts: &ConnectOptions,
    ) -> Call {
        let shared = Arc::new(Shared {
            conn,
            counters: Counters::default(),
            waiters: Mutex::new(Waiters::default()),
        });
        let (event_tx, event_rx) = mpsc::channel(256);
        let (signal_tx, signal_rx) = mpsc::channel(256);
        let (media_tx, media_rx) = mpsc::channel(1024);
        let control = tokio::spawn(control_task(
            shared.clone(),
            recv,
            decoder,
            event_tx,
            signal_tx,
        ));
        let media = tokio::spawn(media_task(
            shared.clone(),
            media_tx,
            opts.reassembly_timeout,
        ));
        Call {
            shared,
            _endpoint: endpoint,
            joined,
            send: tokio::sync::Mutex::new(send),
            fragmenter: Mutex::new(Fragmenter::default()),
            events: tokio::sync::Mutex::new(event_rx),
            signals: tokio::sync::Mutex::new(signal_rx),
            media: tokio::sync::Mutex::new(media_rx),
            next_ping: AtomicU64::new(1),
            request_timeout: opts.join_timeout,
            tasks: [control, media],
        }
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

    /// The next event, or `None` once the call is over and every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// Sends one media frame (up to 1 MiB), split into datagrams that fit the path now.
    pub async fn send_media(&self, kind: MediaKind, frame: &[u8]) -> Result<(), SdkError> {
        let conn = &self.shared.conn;
        let max = conn
            .max_datagram_size()
            .ok_or(SdkError::DatagramsUnsupported)?;
        let pieces = self
            .fragmenter
            .lock()
            .map_err(|_| SdkError::Closed)?
            .split(kind, frame, max)?;
        let n = pieces.len() as u64;
        for piece in pieces {
            conn.send_datagram_wait(piece).await?;
        }
        let c = &self.shared.counters;
        c.datagrams_sent.fetch_add(n, Relaxed);
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
        let frame = encode(msg)?;
        self.send.lock().await.write_all(&frame).await?;
        Ok(())
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
            let mut send = self.send.lock().await;
            let _ = send.finish();
            // Wait (briefly) until the relay has the Leave, so it is not taken for a loss.
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.conn.closed()).await;
        Ok(())
    }

    pub fn stats(&self) -> CallStats {
        let c = &self.shared.counters;
        CallStats {
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
        RelayMessage::PeerE2eeUnavailable(c) => Event::PeerE2eeUnavailable(c),
        RelayMessage::Dropped(r) => Event::Dropped(r),
        RelayMessage::SessionEnded(r) => Event::SessionEnded(r),
        RelayMessage::Joined(_) | RelayMessage::Refused(_) => {
            tracing::warn!("relay sent a second join answer; ignored");
            return;
        }
    };
    let _ = events.send(event).await;
}

async fn media_task(shared: Arc<Shared>, frames: mpsc::Sender<MediaFrame>, timeout: Duration) {
    let mut reassembler = Reassembler::new(timeout);
    let c = &shared.counters;
    loop {
        let deadline = reassembler.next_deadline();
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            datagram = shared.conn.read_datagram() => {
                let Ok(datagram) = datagram else { return };
                c.datagrams_received.fetch_add(1, Relaxed);
                if let Ok(Some(frame)) = reassembler.push(datagram, Instant::now()) {
                    c.frames_received.fetch_add(1, Relaxed);
                    if frames.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            _ = expiry => {
                reassembler.expire(Instant::now());
            }
        }
        let s = reassembler.stats();
        c.incomplete_frames_dropped
            .store(s.frames_incomplete, Relaxed);
        c.malformed_datagrams.store(s.malformed_datagrams, Relaxed);
    }
}

//! The session core: every rule of the control plane, sans-IO in the manner of quinn-proto.
//!
//! Input: `handle_connected` (a QUIC connection is up), `handle_control` (one decoded
//! `ClientMessage`), `handle_bad_frame`, `handle_conn_lost`, `handle_timeout`, `drain`.
//! Output: [`Action`]s (`poll_action`) the driver carries out in order (send a message,
//! close a connection, open, re-point or close a session's media routes), and
//! `poll_timeout`, the next instant `handle_timeout` must run at. No sockets, no runtime, no
//! clock (every input takes `now`, and `now_unix` where tokens and tickets need wall time),
//! resume secrets from an injected RNG: tests drive it deterministically.
//!
//! Owns: who holds which slot of which session (`pairing`), what each message from a
//! connection leads to (`control`: join with token verification, signals and their limits,
//! feature refusals, Ping, Leave, fast-path tickets), the drain (`drain`), the timers
//! (`timers`), and the fast-path channel pair of each session (allocated and released here,
//! through [`FastPathPlane`]). Media activity is read from cells the data path stamps
//! ([`MediaActivity`], the channel table), so no packet ever calls into the core. It does not
//! decode frames, read media, or know about QUIC.

mod control;
mod drain;
mod pairing;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::{
    ChannelId, CloseCode, DeviceId, EndReason, Limits, NodeId, RefusalReason, RelayMessage,
    ResumeSecret, SessionId, Slot, UserId,
};
use rand::rngs::StdRng;

use crate::config::{Config, ConfigError};
use crate::fastpath::FastPathPlane;
use crate::forward::{Epoch, Gcra};
use crate::keyring::LiveKeyring;
use crate::metrics::RelayMetrics;

pub use control::BEFORE_JOIN_MAX;
pub use drain::{DrainState, DrainStatus};
pub use pairing::{JoinRequest, DECLINE_MEMORY};
use timers::{Timer, Timers};

/// The driver's name for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Why the relay closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The endpoint said Leave.
    Left,
    /// The relay ended the session.
    Ended(EndReason),
    /// The join was refused.
    Refused(RefusalReason),
    /// No Join within the join timeout.
    JoinTimeout,
}

impl CloseReason {
    /// The QUIC application close code and its reason text.
    pub fn code(self) -> (CloseCode, &'static str) {
        match self {
            Self::Left => (CloseCode::Left, "left"),
            Self::Refused(r) => (CloseCode::Refused, r.as_str()),
            Self::Ended(EndReason::Replaced) => (CloseCode::Replaced, "replaced"),
            Self::Ended(EndReason::ProtocolViolation) => {
                (CloseCode::ProtocolViolation, "protocol_violation")
            }
            Self::Ended(e) => (CloseCode::SessionEnded, e.as_str()),
            Self::JoinTimeout => (CloseCode::JoinTimeout, "join timeout"),
        }
    }
}

/// Something the driver must do, in the order given.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send `msg` on the connection's control stream.
    Send(ConnId, RelayMessage),
    /// Close the connection once what was queued for it has been sent.
    Close(ConnId, CloseReason),
    /// A session begins: its routing state, its fast-path channels `[slot A, slot B]` (when
    /// the fast path is on and had room), and the cell its QUIC media stamps.
    SessionOpened {
        session: SessionId,
        fast_path: Option<[ChannelId; 2]>,
        activity: Arc<MediaActivity>,
    },
    /// Media and signals for `slot` of `session` now go to `conn` (`None`: nobody).
    Route {
        session: SessionId,
        slot: Slot,
        conn: Option<ConnId>,
    },
    /// The session is gone (its channels are released); its routing state can be dropped.
    SessionClosed(SessionId),
}

/// When a session's QUIC media was last seen: stamped by the media task per datagram (one
/// relaxed store), read by the core at the session's idle deadline.
#[derive(Debug)]
pub struct MediaActivity {
    epoch: Epoch,
    last_ns: AtomicU64,
}

impl MediaActivity {
    fn new(epoch: Epoch) -> Self {
        Self {
            epoch,
            last_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn stamp(&self, now: Instant) {
        self.last_ns.store(self.epoch.ns(now), Ordering::Relaxed);
    }

    fn last(&self) -> Option<Instant> {
        match self.last_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch.instant(ns)),
        }
    }
}

/// What the core enforces.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub node: NodeId,
    pub max_sessions: usize,
    pub resume_window: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// A connection must have joined this long after it was accepted.
    pub join_timeout: Duration,
    pub max_signal_bytes: usize,
    /// Signals (and fast-path tickets) per second per connection, one second of burst.
    pub signals_per_sec: u32,
    /// Allowed clock difference for a token's issue time, and its longest lifetime.
    pub token_skew_secs: u64,
    pub token_max_lifetime_secs: u64,
    /// Told to each endpoint in `Joined`.
    pub limits: Limits,
}

impl CoreConfig {
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let l = &cfg.limits;
        Ok(Self {
            node: cfg.node()?,
            max_sessions: l.max_sessions as usize,
            resume_window: l.resume_window(),
            idle_timeout: l.idle_timeout(),
            max_lifetime: l.max_session(),
            join_timeout: l.join_timeout(),
            max_signal_bytes: l.max_signal_bytes as usize,
            signals_per_sec: l.signals_per_sec,
            token_skew_secs: cfg.token_clock_skew_secs,
            token_max_lifetime_secs: cfg.token_max_lifetime_secs,
            limits: l.to_wire(),
        })
    }
}

#[derive(Debug)]
struct Endpoint {
    user: UserId,
    device: DeviceId,
    /// `None` while the connection is lost and the slot waits for a resume.
    conn: Option<ConnId>,
    lost_at: Option<Instant>,
    resume: ResumeSecret,
}

#[derive(Debug)]
struct Session {
    slots: [Option<Endpoint>; 2],
    /// Distinguishes this session from an earlier one of the same id (for its timers).
    generation: u64,
    started: Instant,
    /// Last join or control message from either endpoint.
    last_activity: Instant,
    media: Arc<MediaActivity>,
    fast_path: Option<[ChannelId; 2]>,
    /// Last ticket sequence number handed to each slot (a move needs a higher one).
    ticket_seq: [u32; 2],
    /// Users refused for their E2EE claim (and that claim) the waiting endpoint was
    /// already told about.
    told_unavailable: Vec<(UserId, duet_proto::E2eeClaim)>,
}

impl Session {
    fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// One open connection's control state.
#[derive(Debug)]
struct Conn {
    remote: SocketAddr,
    accepted_at: Instant,
    /// Closed by the relay: nothing more it sends is processed.
    closing: bool,
    /// Signals and ticket requests.
    signals: Gcra,
    /// Pings and feature requests answered before Join (bounded: see `control`).
    before_join: u32,
}

/// The sessions and connections of one relay node. See the module docs.
pub struct SessionCore {
    cfg: CoreConfig,
    keyring: Arc<LiveKeyring>,
    fast_path: Option<FastPathPlane>,
    metrics: Arc<RelayMetrics>,
    rng: StdRng,
    epoch: Epoch,
    sessions: HashMap<SessionId, Session>,
    declined: HashMap<SessionId, pairing::Declined>,
    by_conn: HashMap<ConnId, (SessionId, Slot)>,
    conns: HashMap<ConnId, Conn>,
    actions: VecDeque<Action>,
    timers: Timers,
    drain: DrainState,
    next_generation: u64,
}

impl std::fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore")
            .field("sessions", &self.sessions.len())
            .field("connections", &self.conns.len())
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}

impl SessionCore {
    /// `keyring` verifies join tokens (read afresh per join: a reload takes effect at
    /// once); `fast_path` gives sessions their channels; `rng` draws resume secrets
    /// (`StdRng::from_os_rng()` in a relay, seeded in tests).
    pub fn new(
        cfg: CoreConfig,
        keyring: Arc<LiveKeyring>,
        fast_path: Option<FastPathPlane>,
        metrics: Arc<RelayMetrics>,
        rng: StdRng,
        now: Instant,
    ) -> Self {
        Self {
            cfg,
            keyring,
            fast_path,
            metrics,
            rng,
            // One second back, so a stamp at start-up never reads as "never" (0).
            epoch: Epoch::new(now.checked_sub(Duration::from_secs(1)).unwrap_or(now)),
            sessions: HashMap::new(),
            declined: HashMap::new(),
            by_conn: HashMap::new(),
            conns: HashMap::new(),
            actions: VecDeque::new(),
            timers: Timers::default(),
            drain: DrainState::Serving,
            next_generation: 0,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Next thing the driver must do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must run next, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.next();
        let drain = self.drain_deadline();
        match (timer, drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`: join deadlines, resume windows, idle timeouts,
    /// maximum lifetimes, forgotten declines, the drain deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Join(c) => self.join_deadline(c),
                Timer::Session(id, generation) => self.session_deadline(&id, generation, now),
                Timer::Lost(id, generation, slot) => {
                    self.resume_deadline(&id, generation, slot, now)
                }
                Timer::Declined(id) => {
                    if self.declined.get(&id).is_some_and(|d| d.until <= now) {
                        self.declined.remove(&id);
                    }
                }
            }
        }
        self.drain_timeout(now);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Endpoints with a live connection.
    pub fn endpoint_count(&self) -> usize {
        self.by_conn.len()
    }

    /// Session and slot a connection holds, if it joined and was not replaced.
    pub fn slot_of(&self, conn: ConnId) -> Option<(&SessionId, Slot)> {
        self.by_conn.get(&conn).map(|(s, slot)| (s, *slot))
    }

    /// Queues `msg` for `conn`.
    fn send(&mut self, conn: ConnId, msg: RelayMessage) {
        self.actions.push_back(Action::Send(conn, msg));
    }

    /// Queues the close of `conn`; from now on nothing it sends is processed.
    fn close(&mut self, conn: ConnId, why: CloseReason) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closing = true;
        }
        self.actions.push_back(Action::Close(conn, why));
    }

    /// The session's idle or lifetime deadline came: end it, or look again later.
    fn session_deadline(&mut self, id: &SessionId, generation: u64, now: Instant) {
        let Some(s) = self.sessions.get(id).filter(|s| s.generation == generation) else {
            return;
        };
        let end_of_life = s.started + self.cfg.max_lifetime;
        if now >= end_of_life {
            self.end_session(id, EndReason::MaxLifetime);
            return;
        }
        let on_fast_path = self
            .fast_path
            .as_ref()
            .zip(s.fast_path)
            .and_then(|(fp, c)| fp.table().last_activity(c[0]));
        let last = [Some(s.last_activity), s.media.last(), on_fast_path]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(s.last_activity);
        let idle_at = last + self.cfg.idle_timeout;
        if now >= idle_at {
            self.end_session(id, EndReason::IdleTimeout);
            return;
        }
        self.timers.push(
            idle_at.min(end_of_life),
            Timer::Session(id.clone(), generation),
        );
    }

    /// A lost endpoint's resume window came: its slot is freed unless it came back.
    fn resume_deadline(&mut self, id: &SessionId, generation: u64, slot: Slot, now: Instant) {
        let Some(s) = self.sessions.get(id).filter(|s| s.generation == generation) else {
            return;
        };
        let lost = s.slots[slot.index()].as_ref().and_then(|e| e.lost_at);
        if lost.is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.resume_window) {
            self.free_slot(id, slot, duet_proto::PeerLeftReason::ConnectionLost);
        }
    }

    /// Something was received from the session's endpoints.
    fn touch(&mut self, session: &SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(session) {
            s.last_activity = s.last_activity.max(now);
        }
    }

    fn new_resume_secret(&mut self) -> ResumeSecret {
        use rand::Rng;
        ResumeSecret(self.rng.random())
    }
}

#[cfg(test)]
mod tests;

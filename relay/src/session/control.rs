//! What each message from a connection leads to: the control rules.
//!
//! Before Join a connection may only send `Join` (or `Leave`), and up to
//! [`BEFORE_JOIN_MAX`] Pings and feature requests in all: anything else is a protocol
//! violation (refused, closed), and a connection that has not joined by its join deadline is
//! closed with `JoinTimeout` whether or not it opened its stream. `Join` is refused at once
//! while draining (before any token work), else its token is verified here and the pairing
//! rules decide; a second `Join` on a joined connection is `Dropped(AlreadyJoined)`.
//! Joined, a connection's `Signal`s are size- and rate-limited and forwarded verbatim to
//! the peer, feature requests are refused `PlaintextRequired` (the relay never holds media
//! keys), `Ping` is answered, ticket requests share the signal budget (each costs an HMAC),
//! and a malformed frame ends its session for it alone. After the relay closed a
//! connection, nothing it sends is processed.

use std::net::SocketAddr;
use std::time::Instant;

use duet_proto::{
    ClientMessage, FastPathOffer, Feature, RefusalReason, RelayMessage, ResumeSecret, SessionId,
    Slot, VerifyOptions,
};

use super::pairing::JoinRequest;
use super::timers::Timer;
use super::{CloseReason, Conn, ConnId, SessionCore};
use crate::forward::Gcra;

/// Pings and feature requests answered before Join; the next one is a protocol violation
/// (refused, closed). A client needs a few (probe the relay, learn what it refuses) and
/// never a stream of them, and each answer costs the relay a write.
pub const BEFORE_JOIN_MAX: u32 = 8;

impl SessionCore {
    /// A connection from `remote` is up (accepted at `accepted_at`): it must join within
    /// the join timeout.
    pub fn handle_connected(&mut self, conn: ConnId, remote: SocketAddr, accepted_at: Instant) {
        self.conns.insert(
            conn,
            Conn {
                remote,
                accepted_at,
                closing: false,
                signals: Gcra::new(self.cfg.signals_per_sec.into()),
                before_join: 0,
            },
        );
        self.timers
            .push(accepted_at + self.cfg.join_timeout, Timer::Join(conn));
    }

    /// The connection's peer address changed (QUIC migration, which quinn validated): later
    /// tickets are for it. Counted once per change, however many tasks report it.
    pub fn handle_remote(&mut self, conn: ConnId, remote: SocketAddr) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.remote != remote {
                tracing::debug!(conn = conn.0, from = %c.remote, to = %remote, "migrated");
                c.remote = remote;
                self.metrics.quic_migrations.increment(1);
            }
        }
    }

    /// The address `conn` comes from, as last told.
    pub fn remote_of(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns.get(&conn).map(|c| c.remote)
    }

    /// The connection is gone (stream ended, connection closed): a joined endpoint keeps
    /// its slot for a resume.
    pub fn handle_conn_lost(&mut self, conn: ConnId, now: Instant) {
        self.conns.remove(&conn);
        self.connection_lost(conn, now);
    }

    /// An undecodable control frame (`kind`: the codec's error label): counted; a joined
    /// endpoint's session ends for it alone, a connection that has not joined is refused.
    pub fn handle_bad_frame(&mut self, conn: ConnId, kind: &'static str) {
        if !self.is_open(conn) {
            return;
        }
        self.metrics.control_error(kind).increment(1);
        if self.by_conn.contains_key(&conn) {
            self.protocol_violation(conn);
        } else {
            self.refuse(conn, RefusalReason::ProtocolViolation);
        }
    }

    /// One message from `conn`. `now_unix` (seconds) checks token and ticket lifetimes.
    pub fn handle_control(
        &mut self,
        conn: ConnId,
        msg: ClientMessage,
        now: Instant,
        now_unix: u64,
    ) {
        if !self.is_open(conn) {
            return;
        }
        let Some((session, slot)) = self.by_conn.get(&conn).cloned() else {
            self.before_join(conn, msg, now, now_unix);
            return;
        };
        self.touch(&session, now);
        match msg {
            ClientMessage::Join { .. } => self.drop_msg(conn, RefusalReason::AlreadyJoined),
            ClientMessage::Signal(data) => self.signal(conn, &session, slot, data, now),
            ClientMessage::Request(feature) => self.refuse_feature(conn, feature),
            ClientMessage::Leave => self.leave(conn),
            ClientMessage::Ping(n) => self.send(conn, RelayMessage::Pong(n)),
            ClientMessage::FastPathTicket => self.ticket(conn, &session, slot, now, now_unix),
            ClientMessage::FastPathUnbind => {
                let channel = self.sessions.get(&session).and_then(|s| s.fast_path);
                if let (Some(c), Some(fp)) = (channel, &self.fast_path) {
                    fp.table().unbind(c[slot.index()]);
                }
            }
        }
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.closing)
    }

    fn before_join(&mut self, conn: ConnId, msg: ClientMessage, now: Instant, now_unix: u64) {
        match msg {
            ClientMessage::Join {
                session,
                token,
                resume,
                e2ee,
            } => self.join(conn, &session, &token, resume.as_ref(), e2ee, now, now_unix),
            ClientMessage::Leave => self.close(conn, CloseReason::Left),
            ClientMessage::Request(_) | ClientMessage::Ping(_)
                if !self.answer_before_join(conn) =>
            {
                self.metrics.control_error("before_join_limit").increment(1);
                self.refuse(conn, RefusalReason::ProtocolViolation);
            }
            ClientMessage::Request(feature) => self.refuse_feature(conn, feature),
            ClientMessage::Ping(n) => self.send(conn, RelayMessage::Pong(n)),
            ClientMessage::FastPathTicket => {
                self.drop_msg(conn, RefusalReason::FastPathUnavailable)
            }
            ClientMessage::FastPathUnbind => {}
            ClientMessage::Signal(_) => {
                self.metrics.control_error("not_joined").increment(1);
                self.refuse(conn, RefusalReason::ProtocolViolation);
            }
        }
    }

    /// Counts one Ping or feature request before Join; false past [`BEFORE_JOIN_MAX`].
    fn answer_before_join(&mut self, conn: ConnId) -> bool {
        self.conns.get_mut(&conn).is_some_and(|c| {
            c.before_join += 1;
            c.before_join <= BEFORE_JOIN_MAX
        })
    }

    /// The join deadline of `conn` came.
    pub(super) fn join_deadline(&mut self, conn: ConnId) {
        if self.is_open(conn) && !self.by_conn.contains_key(&conn) {
            self.metrics.control_error("never_joined").increment(1);
            self.close(conn, CloseReason::JoinTimeout);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        token: &str,
        resume: Option<&ResumeSecret>,
        e2ee: bool,
        now: Instant,
        now_unix: u64,
    ) {
        // Draining is checked before any token work.
        if self.drain.is_draining() {
            self.refuse(conn, RefusalReason::RelayDraining);
            return;
        }
        let opts = VerifyOptions {
            now: now_unix,
            skew_secs: self.cfg.token_skew_secs,
            max_lifetime_secs: self.cfg.token_max_lifetime_secs,
        };
        let claims = match self.keyring.current().verify(token, &opts) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(conn = conn.0, error = %e, "join refused: token");
                self.refuse(conn, e.refusal());
                return;
            }
        };
        let req = JoinRequest {
            session,
            claims: &claims,
            token,
            resume,
            e2ee,
        };
        match self.join_verified(conn, &req, now, now_unix) {
            Ok(joined) => {
                let m = &self.metrics;
                m.joins.increment(1);
                if joined.resumed {
                    m.resumes.increment(1);
                }
                if let Some(c) = self.conns.get(&conn) {
                    m.join_latency
                        .record(now.saturating_duration_since(c.accepted_at).as_secs_f64());
                }
                tracing::debug!(conn = conn.0, session = %session, slot = ?joined.slot, resumed = joined.resumed, "joined");
            }
            Err(r) => {
                tracing::debug!(conn = conn.0, session = %session, reason = %r, "join refused");
                self.refuse(conn, r);
            }
        }
    }

    /// `Refused(r)`, then the connection is closed.
    fn refuse(&mut self, conn: ConnId, r: RefusalReason) {
        self.metrics.refusal(r).increment(1);
        self.send(conn, RelayMessage::Refused(r));
        self.close(conn, CloseReason::Refused(r));
    }

    /// `Dropped(r)`: one message was not acted on; the connection goes on.
    fn drop_msg(&mut self, conn: ConnId, r: RefusalReason) {
        self.metrics.refusal(r).increment(1);
        self.send(conn, RelayMessage::Dropped(r));
    }

    fn refuse_feature(&mut self, conn: ConnId, feature: Feature) {
        // The relay never holds media keys: every plaintext feature is refused, known or not.
        let m = &self.metrics;
        m.feature_refused(feature).increment(1);
        m.refusal(RefusalReason::PlaintextRequired).increment(1);
        self.send(
            conn,
            RelayMessage::FeatureRefused {
                feature,
                reason: RefusalReason::PlaintextRequired,
            },
        );
    }

    /// Takes one unit of `conn`'s signal budget.
    fn take_signal(&self, conn: ConnId, now: Instant) -> bool {
        let now_ns = self.epoch.ns(now);
        self.conns
            .get(&conn)
            .is_some_and(|c| c.signals.admit(1, now_ns))
    }

    fn signal(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        slot: Slot,
        data: bytes::Bytes,
        now: Instant,
    ) {
        if data.len() > self.cfg.max_signal_bytes {
            self.metrics.signal_dropped("too_large").increment(1);
            self.drop_msg(conn, RefusalReason::TooLarge);
            return;
        }
        if !self.take_signal(conn, now) {
            self.metrics.signal_dropped("rate_limited").increment(1);
            self.drop_msg(conn, RefusalReason::RateLimited);
            return;
        }
        let peer = self
            .sessions
            .get(session)
            .and_then(|s| s.slots[slot.other().index()].as_ref())
            .and_then(|e| e.conn);
        match peer {
            // The driver counts it forwarded once the peer's queue took it.
            Some(p) => self.send(p, RelayMessage::Signal(data)),
            None => self.metrics.signal_dropped("no_peer").increment(1),
        }
    }

    /// A fresh ticket (next seq, the connection's current IP), charged to the signal budget.
    fn ticket(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        slot: Slot,
        now: Instant,
        now_unix: u64,
    ) {
        if !self.take_signal(conn, now) {
            self.drop_msg(conn, RefusalReason::RateLimited);
            return;
        }
        match self.offer_for(conn, session, slot, now_unix) {
            Some(o) => self.send(conn, RelayMessage::FastPathTicket(o)),
            None => self.drop_msg(conn, RefusalReason::FastPathUnavailable),
        }
    }

    /// A fresh offer for `conn` in `slot` of `session`: a ticket for the IP it comes from
    /// now, with the slot's next sequence number. `None` without a fast path or channels.
    pub(super) fn offer_for(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        slot: Slot,
        now_unix: u64,
    ) -> Option<FastPathOffer> {
        let fp = self.fast_path.as_ref()?;
        let ip = self.conns.get(&conn)?.remote.ip();
        let s = self.sessions.get_mut(session)?;
        let channel = s.fast_path?[slot.index()];
        let seq = &mut s.ticket_seq[slot.index()];
        *seq = seq.wrapping_add(1);
        Some(fp.offer(channel, ip, *seq, now_unix))
    }
}

//! The session table: who holds which slot of which session, and what follows from each
//! join, leave, lost connection and timer.
//!
//! Sans-IO in the manner of quinn-proto: no sockets, no runtime, no clock of its own (every
//! call takes `now`). Calls mutate the table and queue `Action`s that the I/O layer
//! (`server`) drains with `poll_action` and carries out: send a control message, close a
//! connection, re-point a slot's media route, drop a session's I/O state.
//! It does not verify tokens (the caller passes verified claims), read media, or rate-limit.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use duet_proto::{
    DeviceId, E2eeClaim, EndReason, JoinClaims, Joined, Limits, NodeId, PeerLeftReason,
    RefusalReason, RelayMessage, ResumeSecret, SessionId, Slot, UserId,
};
use subtle::ConstantTimeEq;

/// The I/O layer's name for one QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Why the relay closes a connection (the I/O layer maps it to a QUIC close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The endpoint said Leave.
    Left,
    /// The relay ended the session.
    Ended(EndReason),
    /// The join was refused.
    Refused(RefusalReason),
}

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` on the connection's control stream.
    Send(ConnId, RelayMessage),
    /// Close the connection once what was queued for it has been sent.
    Close(ConnId, CloseReason),
    /// Media and signals for `slot` of `session` now go to `conn` (`None`: nobody).
    Route {
        session: SessionId,
        slot: Slot,
        conn: Option<ConnId>,
    },
    /// The session is gone; its I/O state can be dropped.
    SessionClosed(SessionId),
}

/// What the table enforces.
#[derive(Debug, Clone)]
pub struct TableConfig {
    pub node: NodeId,
    pub max_sessions: usize,
    pub resume_window: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// Told to each endpoint in `Joined`.
    pub limits: Limits,
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
    started: Instant,
    last_activity: Instant,
}

impl Session {
    fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// How long a join refused for its E2EE claim is remembered for its session, so a peer
/// that joins after it (the callee answering late) still learns the call cannot be E2EE
/// instead of waiting out its handshake.
pub const DECLINE_MEMORY: Duration = Duration::from_secs(120);

/// A join refused for its E2EE claim, kept for the peer that has not joined yet.
#[derive(Debug)]
struct Declined {
    user: UserId,
    claim: E2eeClaim,
    token: String,
    until: Instant,
}

/// One `Join` as the I/O layer verified it.
#[derive(Debug, Clone, Copy)]
pub struct JoinRequest<'a> {
    /// The session the endpoint asked for; the token must be for it.
    pub session: &'a SessionId,
    pub claims: &'a JoinClaims,
    /// The token as presented: a waiting peer gets it when this join is refused for its
    /// E2EE claim (the backend's signature is the proof, not the relay's word).
    pub token: &'a str,
    pub resume: Option<&'a ResumeSecret>,
    /// The endpoint encrypts end to end.
    pub e2ee: bool,
}

/// Sessions of one relay node. See the module docs.
#[derive(Debug)]
pub struct SessionTable {
    cfg: TableConfig,
    sessions: HashMap<SessionId, Session>,
    declined: HashMap<SessionId, Declined>,
    by_conn: HashMap<ConnId, (SessionId, Slot)>,
    actions: VecDeque<Action>,
    draining: bool,
}

fn new_resume_secret() -> ResumeSecret {
    ResumeSecret(rand::random())
}

fn secrets_match(a: &ResumeSecret, b: &ResumeSecret) -> bool {
    a.0.ct_eq(&b.0).into()
}

impl SessionTable {
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            declined: HashMap::new(),
            by_conn: HashMap::new(),
            actions: VecDeque::new(),
            draining: false,
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// Next thing the I/O layer must do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Endpoints with a live connection.
    pub fn endpoint_count(&self) -> usize {
        self.by_conn.len()
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Session and slot a connection holds, if it joined and was not replaced.
    pub fn slot_of(&self, conn: ConnId) -> Option<(&SessionId, Slot)> {
        self.by_conn.get(&conn).map(|(s, slot)| (s, *slot))
    }

    /// A `Join` whose token verified to `claims`. On success the caller sends the returned
    /// `Joined` to `conn` before carrying out the queued actions.
    pub fn join(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        claims: &JoinClaims,
        resume: Option<&ResumeSecret>,
        now: Instant,
    ) -> Result<Joined, RefusalReason> {
        self.join_as(
            conn,
            &JoinRequest {
                session,
                claims,
                token: "",
                resume,
                e2ee: true,
            },
            now,
        )
    }

    /// A `Join` (see [`JoinRequest`]): a plain join (`e2ee: false`) under a `required`
    /// claim is refused with `E2eeRequired`.
    pub fn join_as(
        &mut self,
        conn: ConnId,
        req: &JoinRequest<'_>,
        now: Instant,
    ) -> Result<Joined, RefusalReason> {
        let JoinRequest {
            session,
            claims,
            token,
            resume,
            e2ee,
        } = *req;
        if self.draining {
            return Err(RefusalReason::RelayDraining);
        }
        if &claims.session != session {
            return Err(RefusalReason::WrongSession);
        }
        if !claims.places_on(&self.cfg.node) {
            return Err(RefusalReason::WrongNode);
        }
        if claims.e2ee.is_required() && !e2ee {
            return Err(RefusalReason::E2eeRequired);
        }
        if self.by_conn.contains_key(&conn) {
            return Err(RefusalReason::AlreadyJoined);
        }
        if let Some(refusal) = claims.e2ee.refusal() {
            // Bounded like the sessions themselves: only token holders get here.
            if !self.tell_waiting_peer(session, &claims.user, claims.e2ee, token)
                && self.declined.len() < self.cfg.max_sessions
            {
                self.declined.insert(
                    session.clone(),
                    Declined {
                        user: claims.user.clone(),
                        claim: claims.e2ee,
                        token: token.to_owned(),
                        until: now + DECLINE_MEMORY,
                    },
                );
            }
            return Err(refusal);
        }
        let joined = self.join_allowed(conn, session, claims, resume, now)?;
        match self.declined.get(session) {
            Some(d) if d.user == claims.user => {
                // That user is now allowed (policy changed): forget the refusal.
                self.declined.remove(session);
            }
            Some(d) if d.until > now && !joined.peer_present => {
                let msg = RelayMessage::PeerE2eeUnavailable {
                    claim: d.claim,
                    token: d.token.clone(),
                };
                self.actions.push_back(Action::Send(conn, msg));
            }
            _ => {}
        }
        Ok(joined)
    }

    fn join_allowed(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        claims: &JoinClaims,
        resume: Option<&ResumeSecret>,
        now: Instant,
    ) -> Result<Joined, RefusalReason> {
        let Some(s) = self.sessions.get_mut(session) else {
            if self.sessions.len() >= self.cfg.max_sessions {
                return Err(RefusalReason::NodeFull);
            }
            let resume = new_resume_secret();
            let mut s = Session {
                slots: [None, None],
                started: now,
                last_activity: now,
            };
            s.slots[Slot::A.index()] = Some(Endpoint {
                user: claims.user.clone(),
                device: claims.device.clone(),
                conn: Some(conn),
                lost_at: None,
                resume: resume.clone(),
            });
            self.sessions.insert(session.clone(), s);
            self.by_conn.insert(conn, (session.clone(), Slot::A));
            self.actions.push_back(Action::Route {
                session: session.clone(),
                slot: Slot::A,
                conn: Some(conn),
            });
            return Ok(self.joined(session, Slot::A, false, false, resume));
        };

        // The same device again: a resume, or a refusal.
        let same_device = [Slot::A, Slot::B].into_iter().find(|slot| {
            s.slots[slot.index()]
                .as_ref()
                .is_some_and(|e| e.user == claims.user && e.device == claims.device)
        });
        if let Some(slot) = same_device {
            let Some(secret) = resume else {
                return Err(RefusalReason::AlreadyJoined);
            };
            let Some(ep) = s.slots[slot.index()].as_mut() else {
                return Err(RefusalReason::AlreadyJoined);
            };
            if !secrets_match(&ep.resume, secret) {
                return Err(RefusalReason::ResumeRejected);
            }
            let was_lost = ep.conn.is_none();
            let old = ep.conn.replace(conn);
            ep.lost_at = None;
            let fresh = new_resume_secret();
            ep.resume = fresh.clone();
            s.last_activity = now;
            let peer_conn = s.slots[slot.other().index()].as_ref().and_then(|e| e.conn);
            let peer_present = s.slots[slot.other().index()].is_some();
            if let Some(old) = old {
                self.by_conn.remove(&old);
                self.actions.push_back(Action::Send(
                    old,
                    RelayMessage::SessionEnded(EndReason::Replaced),
                ));
                self.actions
                    .push_back(Action::Close(old, CloseReason::Ended(EndReason::Replaced)));
            }
            self.by_conn.insert(conn, (session.clone(), slot));
            self.actions.push_back(Action::Route {
                session: session.clone(),
                slot,
                conn: Some(conn),
            });
            if let Some(p) = peer_conn {
                if !was_lost {
                    self.actions
                        .push_back(Action::Send(p, RelayMessage::PeerReconnecting));
                }
                self.actions
                    .push_back(Action::Send(p, RelayMessage::PeerResumed));
            }
            return Ok(self.joined(session, slot, peer_present, true, fresh));
        }

        // A second device of a user already in the session: no companion devices.
        if s.slots.iter().flatten().any(|e| e.user == claims.user) {
            return Err(RefusalReason::SessionFull);
        }
        let Some(slot) = [Slot::A, Slot::B]
            .into_iter()
            .find(|slot| s.slots[slot.index()].is_none())
        else {
            return Err(RefusalReason::SessionFull);
        };
        let resume = new_resume_secret();
        s.slots[slot.index()] = Some(Endpoint {
            user: claims.user.clone(),
            device: claims.device.clone(),
            conn: Some(conn),
            lost_at: None,
            resume: resume.clone(),
        });
        s.last_activity = now;
        let peer = s.slots[slot.other().index()].as_ref();
        let peer_present = peer.is_some();
        let peer_conn = peer.and_then(|e| e.conn);
        self.by_conn.insert(conn, (session.clone(), slot));
        self.actions.push_back(Action::Route {
            session: session.clone(),
            slot,
            conn: Some(conn),
        });
        if let Some(p) = peer_conn {
            self.actions
                .push_back(Action::Send(p, RelayMessage::PeerJoined));
        }
        Ok(self.joined(session, slot, peer_present, false, resume))
    }

    fn joined(
        &self,
        session: &SessionId,
        slot: Slot,
        peer_present: bool,
        resumed: bool,
        resume: ResumeSecret,
    ) -> Joined {
        Joined {
            session: session.clone(),
            slot,
            peer_present,
            resumed,
            limits: self.cfg.limits.clone(),
            resume,
            // The I/O layer fills it in: channels and tickets are not session rules.
            fast_path: None,
        }
    }

    /// A join refused for its E2EE claim: the one endpoint waiting in the session (another
    /// user) learns that this call cannot be end-to-end encrypted, and why.
    /// Returns whether a waiting peer was told.
    fn tell_waiting_peer(
        &mut self,
        session: &SessionId,
        user: &UserId,
        claim: E2eeClaim,
        token: &str,
    ) -> bool {
        let Some(s) = self.sessions.get(session) else {
            return false;
        };
        if s.occupied() != 1 {
            return false;
        }
        let waiting = s.slots.iter().flatten().next();
        match waiting.filter(|w| &w.user != user).and_then(|w| w.conn) {
            Some(c) => {
                let token = token.to_owned();
                self.actions.push_back(Action::Send(
                    c,
                    RelayMessage::PeerE2eeUnavailable { claim, token },
                ));
                true
            }
            None => false,
        }
    }

    /// Something was received from the session's endpoints.
    pub fn touch(&mut self, session: &SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(session) {
            s.last_activity = now;
        }
    }

    /// The endpoint said `Leave`: its slot is freed and the peer told.
    pub fn leave(&mut self, conn: ConnId, _now: Instant) {
        self.remove_endpoint(conn, PeerLeftReason::Left, None);
    }

    /// The endpoint broke the protocol: it is told, disconnected, and its slot freed.
    pub fn protocol_violation(&mut self, conn: ConnId, _now: Instant) {
        self.remove_endpoint(
            conn,
            PeerLeftReason::ProtocolViolation,
            Some(EndReason::ProtocolViolation),
        );
    }

    fn remove_endpoint(&mut self, conn: ConnId, why: PeerLeftReason, ended: Option<EndReason>) {
        let Some((session, slot)) = self.by_conn.remove(&conn) else {
            return;
        };
        if let Some(end) = ended {
            self.actions
                .push_back(Action::Send(conn, RelayMessage::SessionEnded(end)));
            self.actions
                .push_back(Action::Close(conn, CloseReason::Ended(end)));
        } else {
            self.actions
                .push_back(Action::Close(conn, CloseReason::Left));
        }
        self.free_slot(&session, slot, why);
    }

    fn free_slot(&mut self, session: &SessionId, slot: Slot, why: PeerLeftReason) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        s.slots[slot.index()] = None;
        self.actions.push_back(Action::Route {
            session: session.clone(),
            slot,
            conn: None,
        });
        if let Some(p) = s.slots[slot.other().index()].as_ref().and_then(|e| e.conn) {
            self.actions
                .push_back(Action::Send(p, RelayMessage::PeerLeft(why)));
        }
        if s.occupied() == 0 {
            self.sessions.remove(session);
            self.actions
                .push_back(Action::SessionClosed(session.clone()));
        }
    }

    /// The connection went away without `Leave`: the slot is kept for a resume.
    pub fn connection_lost(&mut self, conn: ConnId, now: Instant) {
        let Some((session, slot)) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if let Some(ep) = s.slots[slot.index()].as_mut() {
            ep.conn = None;
            ep.lost_at = Some(now);
        }
        self.actions.push_back(Action::Route {
            session: session.clone(),
            slot,
            conn: None,
        });
        if let Some(p) = s.slots[slot.other().index()].as_ref().and_then(|e| e.conn) {
            self.actions
                .push_back(Action::Send(p, RelayMessage::PeerReconnecting));
        }
    }

    /// Ends a session: both endpoints told why and disconnected.
    pub fn end_session(&mut self, session: &SessionId, why: EndReason) {
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        for (i, ep) in s.slots.iter().enumerate() {
            let slot = if i == 0 { Slot::A } else { Slot::B };
            if let Some(c) = ep.as_ref().and_then(|e| e.conn) {
                self.by_conn.remove(&c);
                self.actions
                    .push_back(Action::Send(c, RelayMessage::SessionEnded(why)));
                self.actions
                    .push_back(Action::Close(c, CloseReason::Ended(why)));
            }
            if ep.is_some() {
                self.actions.push_back(Action::Route {
                    session: session.clone(),
                    slot,
                    conn: None,
                });
            }
        }
        self.actions
            .push_back(Action::SessionClosed(session.clone()));
    }

    /// Ends every session (drain deadline passed).
    pub fn end_all(&mut self, why: EndReason) {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.end_session(&id, why);
        }
    }

    /// Runs the timers: resume windows, idle timeout, maximum lifetime.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.declined.retain(|_, d| d.until > now);
        let mut ended = Vec::new();
        let mut expired = Vec::new();
        for (id, s) in &self.sessions {
            if now.saturating_duration_since(s.started) >= self.cfg.max_lifetime {
                ended.push((id.clone(), EndReason::MaxLifetime));
            } else if now.saturating_duration_since(s.last_activity) >= self.cfg.idle_timeout {
                ended.push((id.clone(), EndReason::IdleTimeout));
            } else {
                for slot in [Slot::A, Slot::B] {
                    if let Some(lost) = s.slots[slot.index()].as_ref().and_then(|e| e.lost_at) {
                        if now.saturating_duration_since(lost) >= self.cfg.resume_window {
                            expired.push((id.clone(), slot));
                        }
                    }
                }
            }
        }
        for (id, why) in ended {
            self.end_session(&id, why);
        }
        for (id, slot) in expired {
            self.free_slot(&id, slot, PeerLeftReason::ConnectionLost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TableConfig {
        TableConfig {
            node: NodeId::new("n1").unwrap(),
            max_sessions: 2,
            resume_window: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(3600),
            limits: crate::config::LimitsConfig::default().to_wire(),
        }
    }

    fn claims(session: &str, user: &str, device: &str) -> JoinClaims {
        JoinClaims::builder(
            SessionId::new(session).unwrap(),
            UserId::new(user).unwrap(),
            DeviceId::new(device).unwrap(),
        )
        .issued_at(0)
        .ttl(Duration::from_secs(u64::MAX))
        .e2ee(E2eeClaim::Allowed)
        .build()
        .unwrap()
    }

    fn sid(s: &str) -> SessionId {
        SessionId::new(s).unwrap()
    }

    fn req(c: &JoinClaims, e2ee: bool) -> JoinRequest<'_> {
        JoinRequest {
            session: &c.session,
            claims: c,
            token: "the-token",
            resume: None,
            e2ee,
        }
    }

    fn drain(t: &mut SessionTable) -> Vec<Action> {
        std::iter::from_fn(|| t.poll_action()).collect()
    }

    fn sends_to(actions: &[Action], conn: ConnId) -> Vec<RelayMessage> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(c, m) if *c == conn => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn join(
        t: &mut SessionTable,
        c: u64,
        cl: &JoinClaims,
        now: Instant,
    ) -> Result<Joined, RefusalReason> {
        let session = cl.session.clone();
        t.join(ConnId(c), &session, cl, None, now)
    }

    #[test]
    fn two_endpoints_meet_and_a_third_is_refused() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        let a = join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        assert_eq!(a.slot, Slot::A);
        assert!(!a.peer_present);
        drain(&mut t);
        let b = join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
        assert_eq!(b.slot, Slot::B);
        assert!(b.peer_present);
        let acts = drain(&mut t);
        assert_eq!(sends_to(&acts, ConnId(1)), vec![RelayMessage::PeerJoined]);
        assert!(acts.contains(&Action::Route {
            session: sid("s"),
            slot: Slot::B,
            conn: Some(ConnId(2))
        }));
        assert_eq!(
            join(&mut t, 3, &claims("s", "carol", "p"), now),
            Err(RefusalReason::SessionFull)
        );
        // A companion device of a user already in, even with a slot free.
        let mut t = SessionTable::new(cfg());
        join(&mut t, 1, &claims("s", "alice", "phone"), now).unwrap();
        assert_eq!(
            join(&mut t, 2, &claims("s", "alice", "laptop"), now),
            Err(RefusalReason::SessionFull)
        );
        assert_eq!(
            join(&mut t, 3, &claims("s", "alice", "phone"), now),
            Err(RefusalReason::AlreadyJoined)
        );
        assert_eq!(t.endpoint_count(), 1);
    }

    #[test]
    fn resume_replaces_the_old_connection() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        let a = join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
        drain(&mut t);
        let wrong = ResumeSecret([0; 32]);
        assert_eq!(
            t.join(
                ConnId(3),
                &sid("s"),
                &claims("s", "alice", "p"),
                Some(&wrong),
                now
            ),
            Err(RefusalReason::ResumeRejected)
        );
        let r = t
            .join(
                ConnId(3),
                &sid("s"),
                &claims("s", "alice", "p"),
                Some(&a.resume),
                now,
            )
            .unwrap();
        assert!(r.resumed && r.peer_present);
        assert_eq!(r.slot, Slot::A);
        assert_ne!(r.resume, a.resume, "the secret rotates");
        let acts = drain(&mut t);
        assert_eq!(
            sends_to(&acts, ConnId(1)),
            vec![RelayMessage::SessionEnded(EndReason::Replaced)]
        );
        assert!(acts.contains(&Action::Close(
            ConnId(1),
            CloseReason::Ended(EndReason::Replaced)
        )));
        assert_eq!(
            sends_to(&acts, ConnId(2)),
            vec![RelayMessage::PeerReconnecting, RelayMessage::PeerResumed]
        );
        // The old connection going away later changes nothing.
        t.connection_lost(ConnId(1), now);
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.slot_of(ConnId(3)).map(|(_, s)| s), Some(Slot::A));
    }

    #[test]
    fn lost_connection_keeps_its_slot_for_the_resume_window() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        let a = join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
        drain(&mut t);
        t.connection_lost(ConnId(1), now);
        let acts = drain(&mut t);
        assert_eq!(
            sends_to(&acts, ConnId(2)),
            vec![RelayMessage::PeerReconnecting]
        );
        // Resume within the window: the peer hears PeerResumed only.
        let later = now + Duration::from_secs(5);
        t.handle_timeout(later);
        assert!(drain(&mut t).is_empty());
        t.join(
            ConnId(3),
            &sid("s"),
            &claims("s", "alice", "p"),
            Some(&a.resume),
            later,
        )
        .unwrap();
        assert_eq!(
            sends_to(&drain(&mut t), ConnId(2)),
            vec![RelayMessage::PeerResumed]
        );
        // Lost again, and the window passes.
        t.connection_lost(ConnId(3), later);
        drain(&mut t);
        t.handle_timeout(later + Duration::from_secs(10));
        let acts = drain(&mut t);
        assert_eq!(
            sends_to(&acts, ConnId(2)),
            vec![RelayMessage::PeerLeft(PeerLeftReason::ConnectionLost)]
        );
        // The slot is free again.
        assert_eq!(
            join(&mut t, 4, &claims("s", "alice", "p"), later)
                .unwrap()
                .slot,
            Slot::A
        );
    }

    #[test]
    fn leave_frees_the_slot_and_the_last_leave_closes_the_session() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
        drain(&mut t);
        t.leave(ConnId(1), now);
        let acts = drain(&mut t);
        assert_eq!(
            sends_to(&acts, ConnId(2)),
            vec![RelayMessage::PeerLeft(PeerLeftReason::Left)]
        );
        assert!(acts.contains(&Action::Close(ConnId(1), CloseReason::Left)));
        t.leave(ConnId(2), now);
        assert!(drain(&mut t).contains(&Action::SessionClosed(sid("s"))));
        assert_eq!(t.session_count(), 0);
    }

    #[test]
    fn a_peer_joining_after_a_declined_join_is_told() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        let mut c = claims("s1", "alice", "phone");
        c.e2ee = E2eeClaim::ComplianceRecording;
        assert_eq!(
            t.join_as(ConnId(1), &req(&c, true), now),
            Err(RefusalReason::ComplianceRecording)
        );
        drain(&mut t);
        let b = t
            .join(
                ConnId(2),
                &sid("s1"),
                &claims("s1", "bob", "laptop"),
                None,
                now,
            )
            .unwrap();
        assert!(!b.peer_present);
        assert_eq!(
            sends_to(&drain(&mut t), ConnId(2)),
            vec![RelayMessage::PeerE2eeUnavailable {
                claim: E2eeClaim::ComplianceRecording,
                token: "the-token".into(),
            }]
        );
        // Forgotten after DECLINE_MEMORY: a later session of the same id is not told.
        t.leave(ConnId(2), now);
        drain(&mut t);
        let later = now + DECLINE_MEMORY;
        t.handle_timeout(later);
        drain(&mut t);
        t.join(
            ConnId(3),
            &sid("s1"),
            &claims("s1", "bob", "laptop"),
            None,
            later,
        )
        .unwrap();
        assert!(sends_to(&drain(&mut t), ConnId(3)).is_empty());
    }

    #[test]
    fn e2ee_claims_are_refused_and_the_waiting_peer_told() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        drain(&mut t);
        for (claim, refusal) in [
            (E2eeClaim::PolicyDisabled, RefusalReason::PolicyDisabled),
            (E2eeClaim::UserNotEnabled, RefusalReason::UserNotEnabled),
            (
                E2eeClaim::ComplianceRecording,
                RefusalReason::ComplianceRecording,
            ),
        ] {
            let mut c = claims("s", "bob", "p");
            c.e2ee = claim;
            assert_eq!(t.join_as(ConnId(2), &req(&c, true), now), Err(refusal));
            assert_eq!(
                sends_to(&drain(&mut t), ConnId(1)),
                vec![RelayMessage::PeerE2eeUnavailable {
                    claim,
                    token: "the-token".into()
                }]
            );
        }
        // Nobody waiting: refused all the same, nobody told.
        let mut c = claims("other", "bob", "p");
        c.e2ee = E2eeClaim::PolicyDisabled;
        assert_eq!(join(&mut t, 3, &c, now), Err(RefusalReason::PolicyDisabled));
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn required_claims_refuse_plain_joins_and_unknown_claims_fail_closed() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        let mut c = claims("s", "alice", "p");
        c.e2ee = E2eeClaim::Required;
        assert_eq!(
            t.join_as(ConnId(1), &req(&c, false), now),
            Err(RefusalReason::E2eeRequired)
        );
        t.join_as(ConnId(1), &req(&c, true), now).unwrap();
        let mut c = claims("s", "bob", "p");
        c.e2ee = E2eeClaim::Unknown;
        assert_eq!(
            t.join_as(ConnId(2), &req(&c, false), now),
            Err(RefusalReason::E2eeClaimInvalid)
        );
    }

    #[test]
    fn token_placement_node_cap_and_drain() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        let c = claims("s", "alice", "p");
        assert_eq!(
            t.join(ConnId(1), &sid("other"), &c, None, now),
            Err(RefusalReason::WrongSession)
        );
        let mut c2 = c.clone();
        c2.nodes = vec![NodeId::new("n2").unwrap()];
        assert_eq!(join(&mut t, 1, &c2, now), Err(RefusalReason::WrongNode));
        // A fallback listed after another node is accepted here.
        c2.nodes = vec![NodeId::new("n2").unwrap(), NodeId::new("n1").unwrap()];
        join(&mut t, 1, &c2, now).unwrap();
        join(&mut t, 2, &claims("s2", "alice", "p"), now).unwrap();
        assert_eq!(
            join(&mut t, 3, &claims("s3", "alice", "p"), now),
            Err(RefusalReason::NodeFull)
        );
        // Joining an existing session is fine at the cap.
        join(&mut t, 4, &claims("s2", "bob", "p"), now).unwrap();
        t.set_draining(true);
        assert_eq!(
            join(&mut t, 5, &claims("s", "bob", "p"), now),
            Err(RefusalReason::RelayDraining)
        );
        drain(&mut t);
        t.end_all(EndReason::RelayShutdown);
        let acts = drain(&mut t);
        for c in [1, 2, 4] {
            assert_eq!(
                sends_to(&acts, ConnId(c)),
                vec![RelayMessage::SessionEnded(EndReason::RelayShutdown)]
            );
        }
        assert_eq!(t.session_count(), 0);
        assert_eq!(t.endpoint_count(), 0);
    }

    #[test]
    fn idle_and_lifetime_end_the_session() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
        drain(&mut t);
        t.handle_timeout(now + Duration::from_secs(20));
        assert!(drain(&mut t).is_empty());
        t.touch(&sid("s"), now + Duration::from_secs(20));
        t.handle_timeout(now + Duration::from_secs(40));
        assert!(
            drain(&mut t).is_empty(),
            "activity pushed the idle deadline"
        );
        t.handle_timeout(now + Duration::from_secs(50));
        let acts = drain(&mut t);
        assert_eq!(
            sends_to(&acts, ConnId(1)),
            vec![RelayMessage::SessionEnded(EndReason::IdleTimeout)]
        );
        assert_eq!(
            sends_to(&acts, ConnId(2)),
            vec![RelayMessage::SessionEnded(EndReason::IdleTimeout)]
        );

        let mut t = SessionTable::new(cfg());
        join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        drain(&mut t);
        let mut at = now;
        while at < now + Duration::from_secs(3600) {
            at += Duration::from_secs(10);
            t.touch(&sid("s"), at);
            t.handle_timeout(at);
        }
        assert_eq!(
            sends_to(&drain(&mut t), ConnId(1)),
            vec![RelayMessage::SessionEnded(EndReason::MaxLifetime)]
        );
    }

    #[test]
    fn protocol_violation_disconnects_only_the_offender() {
        let mut t = SessionTable::new(cfg());
        let now = Instant::now();
        join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
        join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
        drain(&mut t);
        t.protocol_violation(ConnId(1), now);
        let acts = drain(&mut t);
        assert_eq!(
            sends_to(&acts, ConnId(1)),
            vec![RelayMessage::SessionEnded(EndReason::ProtocolViolation)]
        );
        assert_eq!(
            sends_to(&acts, ConnId(2)),
            vec![RelayMessage::PeerLeft(PeerLeftReason::ProtocolViolation)]
        );
        assert_eq!(t.session_count(), 1);
        assert_eq!(t.endpoint_count(), 1);
    }
}

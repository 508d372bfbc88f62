//! Pairing: who holds which slot of which session, and what follows from each verified
//! join, leave, lost connection and end.
//!
//! Rules: two endpoints per session; a third distinct user is `SessionFull`, and so is a
//! second device of a user already in (no companion devices); the same device again needs
//! its resume secret and replaces its old connection (the secret rotates); a lost
//! connection keeps its slot for the resume window; a token whose E2EE claim forbids E2EE is
//! refused, and the endpoint waiting in the session (or the next to join, within
//! [`DECLINE_MEMORY`]) is told with the refused token as proof. Each session gets its
//! fast-path channel pair when it begins and gives it back when it ends.

use std::time::{Duration, Instant};

use duet_proto::{
    E2eeClaim, EndReason, JoinClaims, Joined, PeerLeftReason, RefusalReason, RelayMessage,
    ResumeSecret, SessionId, Slot, UserId,
};
use subtle::ConstantTimeEq;

use super::timers::Timer;
use super::{Action, CloseReason, ConnId, Endpoint, MediaActivity, Session, SessionCore};
use crate::forward::MediaLimits;

/// How long a join refused for its E2EE claim is remembered for its session, so a peer
/// that joins after it (the callee answering late) still learns the call cannot be E2EE
/// instead of waiting out its handshake.
pub const DECLINE_MEMORY: Duration = Duration::from_secs(120);

/// (Refused user, claim) pairs a session remembers telling its waiting endpoint about;
/// past it, later ones are told each time (each attempt still needs a valid token).
const TOLD_UNAVAILABLE_MAX: usize = 8;

/// A join refused for its E2EE claim, kept for the peer that has not joined yet.
#[derive(Debug)]
pub(super) struct Declined {
    user: UserId,
    claim: E2eeClaim,
    token: String,
    pub until: Instant,
}

/// One `Join` whose token verified.
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

fn secrets_match(a: &ResumeSecret, b: &ResumeSecret) -> bool {
    a.0.ct_eq(&b.0).into()
}

impl SessionCore {
    /// A `Join` whose token verified to `req.claims`: on success `Joined` is queued for
    /// `conn` right after its route (before anything else for it) and returned.
    pub(super) fn join_verified(
        &mut self,
        conn: ConnId,
        req: &JoinRequest<'_>,
        now: Instant,
        now_unix: u64,
    ) -> Result<Joined, RefusalReason> {
        let JoinRequest {
            session,
            claims,
            token,
            resume,
            e2ee,
        } = *req;
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
                let until = now + DECLINE_MEMORY;
                self.declined.insert(
                    session.clone(),
                    Declined {
                        user: claims.user.clone(),
                        claim: claims.e2ee,
                        token: token.to_owned(),
                        until,
                    },
                );
                self.timers.push(until, Timer::Declined(session.clone()));
            }
            return Err(refusal);
        }
        let mut joined = self.join_allowed(conn, session, claims, resume, now)?;
        joined.fast_path = self.offer_for(conn, session, joined.slot, now_unix);
        self.send(conn, RelayMessage::Joined(joined.clone()));
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
                self.send(conn, msg);
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
        if !self.sessions.contains_key(session) {
            if self.sessions.len() >= self.cfg.max_sessions {
                return Err(RefusalReason::NodeFull);
            }
            let resume = self.new_resume_secret();
            self.open_session(session, now);
            let endpoint = self.endpoint(claims, conn, resume.clone());
            if let Some(s) = self.sessions.get_mut(session) {
                s.slots[Slot::A.index()] = Some(endpoint);
            }
            self.seat(conn, session, Slot::A);
            return Ok(self.joined(session, Slot::A, false, false, resume));
        }
        let fresh = self.new_resume_secret();
        let Some(s) = self.sessions.get_mut(session) else {
            return Err(RefusalReason::NodeFull);
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
            ep.resume = fresh.clone();
            s.last_activity = now;
            let peer_conn = s.slots[slot.other().index()].as_ref().and_then(|e| e.conn);
            let peer_present = s.slots[slot.other().index()].is_some();
            if let Some(old) = old {
                self.by_conn.remove(&old);
                self.send(old, RelayMessage::SessionEnded(EndReason::Replaced));
                self.close(old, CloseReason::Ended(EndReason::Replaced));
            }
            self.seat(conn, session, slot);
            if let Some(p) = peer_conn {
                if !was_lost {
                    self.send(p, RelayMessage::PeerReconnecting);
                }
                self.send(p, RelayMessage::PeerResumed);
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
        let peer = s.slots[slot.other().index()].as_ref();
        let peer_present = peer.is_some();
        let peer_conn = peer.and_then(|e| e.conn);
        s.last_activity = now;
        let endpoint = self.endpoint(claims, conn, fresh.clone());
        if let Some(s) = self.sessions.get_mut(session) {
            s.slots[slot.index()] = Some(endpoint);
        }
        self.seat(conn, session, slot);
        if let Some(p) = peer_conn {
            self.send(p, RelayMessage::PeerJoined);
        }
        Ok(self.joined(session, slot, peer_present, false, fresh))
    }

    /// A new session: its routing state and fast-path channels, its first deadline.
    fn open_session(&mut self, id: &SessionId, now: Instant) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let limits = MediaLimits::from(&self.cfg.limits);
        let fast_path = self
            .fast_path
            .as_ref()
            .and_then(|fp| fp.table().allocate(limits));
        let media = std::sync::Arc::new(MediaActivity::new(self.epoch));
        self.actions.push_back(Action::SessionOpened {
            session: id.clone(),
            fast_path,
            activity: media.clone(),
        });
        self.sessions.insert(
            id.clone(),
            Session {
                slots: [None, None],
                generation,
                started: now,
                last_activity: now,
                media,
                fast_path,
                ticket_seq: [0, 0],
                told_unavailable: Vec::new(),
            },
        );
        let first = (now + self.cfg.idle_timeout).min(now + self.cfg.max_lifetime);
        self.timers
            .push(first, Timer::Session(id.clone(), generation));
    }

    fn endpoint(&self, claims: &JoinClaims, conn: ConnId, resume: ResumeSecret) -> Endpoint {
        Endpoint {
            user: claims.user.clone(),
            device: claims.device.clone(),
            conn: Some(conn),
            lost_at: None,
            resume,
        }
    }

    /// `conn` now holds `slot` of `session`: its media and signals go there.
    fn seat(&mut self, conn: ConnId, session: &SessionId, slot: Slot) {
        self.by_conn.insert(conn, (session.clone(), slot));
        self.actions.push_back(Action::Route {
            session: session.clone(),
            slot,
            conn: Some(conn),
        });
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
        let Some(c) = waiting.filter(|w| &w.user != user).and_then(|w| w.conn) else {
            return false;
        };
        // Once per refused user and claim: a client retrying its join must not flood the
        // peer; a new claim (the policy changed) is news and is told.
        let Some(s) = self.sessions.get_mut(session) else {
            return false;
        };
        if s.told_unavailable
            .iter()
            .any(|(u, c)| u == user && *c == claim)
        {
            return true;
        }
        if s.told_unavailable.len() < TOLD_UNAVAILABLE_MAX {
            s.told_unavailable.push((user.clone(), claim));
        }
        let token = token.to_owned();
        self.send(c, RelayMessage::PeerE2eeUnavailable { claim, token });
        true
    }

    /// The endpoint said `Leave`: its slot is freed and the peer told.
    pub(super) fn leave(&mut self, conn: ConnId) {
        self.remove_endpoint(conn, PeerLeftReason::Left, None);
    }

    /// The endpoint broke the protocol: it is told, disconnected, and its slot freed.
    pub(super) fn protocol_violation(&mut self, conn: ConnId) {
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
        match ended {
            Some(end) => {
                self.send(conn, RelayMessage::SessionEnded(end));
                self.close(conn, CloseReason::Ended(end));
            }
            None => self.close(conn, CloseReason::Left),
        }
        self.free_slot(&session, slot, why);
    }

    pub(super) fn free_slot(&mut self, session: &SessionId, slot: Slot, why: PeerLeftReason) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        s.slots[slot.index()] = None;
        let peer = s.slots[slot.other().index()].as_ref().and_then(|e| e.conn);
        let empty = s.occupied() == 0;
        self.actions.push_back(Action::Route {
            session: session.clone(),
            slot,
            conn: None,
        });
        if let Some(p) = peer {
            self.send(p, RelayMessage::PeerLeft(why));
        }
        if empty {
            self.close_session(session, why.as_str());
        }
    }

    /// The connection went away without `Leave`: the slot is kept for a resume.
    pub(super) fn connection_lost(&mut self, conn: ConnId, now: Instant) {
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
        let peer = s.slots[slot.other().index()].as_ref().and_then(|e| e.conn);
        let generation = s.generation;
        self.timers.push(
            now + self.cfg.resume_window,
            Timer::Lost(session.clone(), generation, slot),
        );
        self.actions.push_back(Action::Route {
            session,
            slot,
            conn: None,
        });
        if let Some(p) = peer {
            self.send(p, RelayMessage::PeerReconnecting);
        }
    }

    /// Ends a session: both endpoints told why and disconnected.
    pub(super) fn end_session(&mut self, session: &SessionId, why: EndReason) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let slots: Vec<(Slot, Option<ConnId>)> = [Slot::A, Slot::B]
            .into_iter()
            .filter_map(|slot| s.slots[slot.index()].as_ref().map(|e| (slot, e.conn)))
            .collect();
        for (slot, conn) in slots {
            if let Some(c) = conn {
                self.by_conn.remove(&c);
                self.send(c, RelayMessage::SessionEnded(why));
                self.close(c, CloseReason::Ended(why));
            }
            self.actions.push_back(Action::Route {
                session: session.clone(),
                slot,
                conn: None,
            });
        }
        self.close_session(session, why.as_str());
    }

    /// Ends every session (the drain is over).
    pub(super) fn end_all(&mut self, why: EndReason) {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.end_session(&id, why);
        }
    }

    /// Forgets the session and gives back its fast-path channels; counted in
    /// `duet_sessions_ended_total{reason}` (an `EndReason`, or how its last endpoint went).
    fn close_session(&mut self, session: &SessionId, reason: &'static str) {
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        self.metrics.session_ended(reason).increment(1);
        if let (Some(c), Some(fp)) = (s.fast_path, &self.fast_path) {
            fp.table().release(c[0]);
        }
        self.actions
            .push_back(Action::SessionClosed(session.clone()));
    }
}

//! What the app is told: the [`Event`] vocabulary and the queue that holds events until the
//! app takes them.
//!
//! Owns which events may be shed under a flood and which never are. Does not own when an
//! event happens (the engine and the driver decide).
//!
//! Events the relay can cause at will (its notices, drops, fast-path changes, rekeys) are
//! capped at [`MAX_SHEDDABLE`] queued; beyond that new ones are dropped and counted. The
//! events that carry a security verdict or end the call (`E2eeEstablished`,
//! `PeerIdentityChanged`, `KeysConfirmed`, `Migrated`, `PeerLeft`, `SessionEnded`,
//! `Disconnected`) are never shed, so no flood of relay messages can push one out. The
//! verdicts are also kept as state on the `Call` (`identity_check`, `security_code`).

use std::collections::VecDeque;
use std::net::SocketAddr;

use duet_proto::{E2eeClaim, EndReason, NodeId, PeerLeftReason, RefusalReason, UserId};

use crate::e2ee::{IdentityCheck, PeerIdentity, SecurityCode};

/// What happened in the call, in the order the relay said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PeerJoined,
    PeerLeft(PeerLeftReason),
    /// The peer's connection dropped or moved; its place is kept for it.
    PeerReconnecting,
    /// The peer is back; the call carries on (on an E2EE call, after key confirmation).
    PeerResumed,
    /// The relay says the peer's join was refused because its token forbids E2EE. The
    /// relay's word: during `join_e2ee` the handshake accepts it only with the peer's signed
    /// token (else `HandshakeError::UnprovenDecline`). Never an invitation to fall back: an
    /// app that offers a plain call asks its user first.
    PeerE2eeUnavailable(E2eeClaim),
    /// The relay dropped one of this endpoint's messages.
    Dropped(RefusalReason),
    SessionEnded(EndReason),
    /// The connection closed; the text says why. With `ConnectOptions::nodes` set, only when
    /// recovery gave up (a lost connection it mends is `Migrated` or a resume, not this).
    Disconnected(String),
    /// The relay answered with a stateless reset (it restarted and does not know this
    /// connection): noticed at once, not after an idle timeout. With
    /// `ConnectOptions::nodes` set the call resumes or moves by itself.
    ConnectionReset,
    /// The keys are agreed: the call is end-to-end encrypted from here on. The first event
    /// an app sees on a call from `Client::join_e2ee`.
    E2eeEstablished {
        code: SecurityCode,
        identity_check: IdentityCheck,
        /// The peer's user id, from its token, verified and bound into the transcript.
        peer_user: Option<UserId>,
    },
    /// The peer's long-term identity key differs from the one pinned in
    /// `CallOptions::pinned_peer` (only with `IdentityPolicy::Warn`; `Block` fails the join).
    PeerIdentityChanged {
        peer: PeerIdentity,
    },
    /// After a resume or a move to another node, both sides proved they still hold the
    /// call's keys; media is delivered again. Same keys, same code.
    KeysConfirmed,
    /// After a resume or a move, the peer has not proved it holds the keys for
    /// `engine::CONFIRM_WARN`: media stays held (whoever answers there may be an impostor,
    /// or the peer is still away). The SDK keeps asking; `KeysConfirmed` follows if it
    /// proves it.
    KeysUnconfirmed,
    /// The call moved to another relay node of the token's list (the old one died or is
    /// draining). Same keys, same code; media is delivered once `KeysConfirmed`.
    Migrated {
        from: NodeId,
        to: NodeId,
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

impl Event {
    /// Whether a flood may shed this event (see the module docs).
    fn sheddable(&self) -> bool {
        !matches!(
            self,
            Self::E2eeEstablished { .. }
                | Self::PeerIdentityChanged { .. }
                | Self::KeysConfirmed
                | Self::KeysUnconfirmed
                | Self::Migrated { .. }
                | Self::PeerLeft(_)
                | Self::SessionEnded(_)
                | Self::Disconnected(_)
                | Self::ConnectionReset
        )
    }
}

/// Sheddable events kept queued at most.
pub const MAX_SHEDDABLE: usize = 256;
/// Unsheddable events kept queued at most (each is rare; this only bounds memory if the
/// app never reads events).
const MAX_QUEUED: usize = 4096;

/// The app's event queue.
#[derive(Debug, Default)]
pub struct EventQueue {
    q: VecDeque<Event>,
    sheddable: usize,
    shed: u64,
}

impl EventQueue {
    pub fn push(&mut self, ev: Event) {
        let shed = ev.sheddable();
        if (shed && self.sheddable >= MAX_SHEDDABLE) || self.q.len() >= MAX_QUEUED {
            self.shed += 1;
            return;
        }
        self.sheddable += usize::from(shed);
        self.q.push_back(ev);
    }

    /// Puts verdict events ahead of anything queued (the keys' arrival is the first thing an
    /// app hears on an E2EE call, whatever the relay sent during the handshake).
    pub fn push_front(&mut self, evs: Vec<Event>) {
        for ev in evs.into_iter().rev() {
            self.sheddable += usize::from(ev.sheddable());
            self.q.push_front(ev);
        }
    }

    pub fn pop(&mut self) -> Option<Event> {
        let ev = self.q.pop_front()?;
        self.sheddable -= usize::from(ev.sheddable());
        Some(ev)
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Events dropped because the queue was full.
    pub fn shed(&self) -> u64 {
        self.shed
    }
}

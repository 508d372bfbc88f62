//! When in-call hybrid rekeys run and how both directions switch to their new roots.
//!
//! Owns: at most one exchange at a time, the rate limit, glare (both sides offering: the
//! initiator's offer wins), the switch order, and resending `Done`. The messages and the
//! derivation are [`crate::e2ee::pcs`]'s.
//!
//! Switch order, so no frame is ever sealed under a root the peer does not have yet: the
//! answerer derives the new roots when it answers, but keeps sending under the old ones;
//! the offerer, on the answer, switches its sending and sends `Done` under its new key;
//! the answerer switches on `Done` (or on the offerer's first frame in its new epoch,
//! whichever comes first). The answerer adopts the new chain secret only then, so a lost
//! answer leaves both on the old chain.

use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::e2ee::pcs::{self, PendingOffer, ID_LEN};
use crate::e2ee::Direction;

/// Shortest time between two exchanges this side starts.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// First wait before `Done` is sent again (doubling); at most [`DONE_TRIES`] sends.
pub const DONE_RETRY: Duration = Duration::from_millis(200);
pub const DONE_TRIES: u32 = 8;

pub(super) struct AwaitDone {
    pub id: [u8; ID_LEN],
    pub offerer_epoch: u64,
    pub my_epoch: u64,
    pub my_root: Zeroizing<Vec<u8>>,
    pub chain: Zeroizing<Vec<u8>>,
}

pub(super) struct ResendDone {
    pub id: [u8; ID_LEN],
    pub answerer_epoch: u64,
    pub next: Instant,
    pub backoff: Duration,
    pub tries: u32,
}

/// One call's hybrid-rekey state.
#[derive(Default)]
pub(super) struct Hybrid {
    pub offer: Option<PendingOffer>,
    pub awaiting_done: Option<AwaitDone>,
    pub resend_done: Option<ResendDone>,
    pub last_started: Option<Instant>,
    pub next_periodic: Option<Instant>,
    pub completed: u64,
}

impl Hybrid {
    pub fn busy(&self) -> bool {
        self.offer.is_some() || self.awaiting_done.is_some() || self.resend_done.is_some()
    }

    pub fn may_start(&self, now: Instant) -> bool {
        !self.busy()
            && self
                .last_started
                .is_none_or(|t| now.saturating_duration_since(t) >= MIN_GAP)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.resend_done.as_ref().map(|r| r.next),
            self.next_periodic,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

type Secret = Zeroizing<Vec<u8>>;

/// (mine, the peer's, the chain): the new secrets for a sender going `dir`.
pub(super) fn split(dir: Direction, keys: pcs::NewKeys) -> (Secret, Secret, Secret) {
    match dir {
        Direction::AtoB => (keys.a_to_b, keys.b_to_a, keys.chain),
        Direction::BtoA => (keys.b_to_a, keys.a_to_b, keys.chain),
    }
}

/// Whether an offer from the peer is taken (glare: the initiator keeps its own).
pub(super) fn take_offer(h: &mut Hybrid, dir: Direction) -> bool {
    if h.awaiting_done.is_some() || h.resend_done.is_some() {
        return false;
    }
    if h.offer.is_some() {
        if dir == Direction::AtoB {
            return false;
        }
        h.offer = None;
    }
    true
}

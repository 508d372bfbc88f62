//! The relay's QUIC connection ids: 8 bytes, 48 random bits and a 16-bit keyed tag.
//!
//! Owns how ids are drawn and recognised. quinn draws the id of a Retry packet without
//! checking it against the ids of live connections (new connections' ids it does check),
//! and a client that answers a Retry whose id is already taken has its Initial routed to
//! the other connection and dropped: the join times out. quinn's
//! `HashedConnectionIdGenerator` draws only 24 random bits (16.7 million ids): with the tens
//! of thousands of ids 8,000 sessions hold (several per connection), a fraction of a percent
//! of Retries collided, which is what the 10,000-call hold showed (benches/RESULTS.md). With
//! 48 bits, about one in a billion.
//!
//! The tag lets quinn tell ids this relay issued, before or after a restart (same key), from
//! ids it never did: only the former get a stateless reset. A 16-bit tag lets one random
//! unknown id in 65,536 through to a (rate-limited, smaller than the packet) reset; the wire
//! size stays 8 bytes.
//!
//! Not owned here: the key (derived from the stateless-reset key in `endpoint`).

use aws_lc_rs::hmac;
use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};

const NONCE_LEN: usize = 6;
const TAG_LEN: usize = 2;
/// Bytes of every id the relay issues.
pub(crate) const CID_LEN: usize = NONCE_LEN + TAG_LEN;

/// Draws and recognises the relay's connection ids (see the module doc).
pub(crate) struct SignedCidGenerator {
    key: hmac::Key,
}

impl SignedCidGenerator {
    pub(crate) fn new(key: hmac::Key) -> Self {
        Self { key }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.key, nonce);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }
}

impl ConnectionIdGenerator for SignedCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; CID_LEN];
        id[..NONCE_LEN].copy_from_slice(&rand::random::<[u8; NONCE_LEN]>());
        let tag = self.tag(&id[..NONCE_LEN]);
        id[NONCE_LEN..].copy_from_slice(&tag);
        ConnectionId::new(&id)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != CID_LEN {
            return Err(InvalidCid);
        }
        let (nonce, tag) = cid.split_at(NONCE_LEN);
        // Not constant-time: the tag only decides whether a stateless reset is sent, and
        // forging one gains an attacker nothing a random guess would not.
        if self.tag(nonce)[..] == tag[..] {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(k: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, k)
    }

    #[test]
    fn ids_are_recognised_by_the_same_key_only_after_a_restart_too() {
        let mut g = SignedCidGenerator::new(key(b"node key"));
        let after_restart = SignedCidGenerator::new(key(b"node key"));
        let other = SignedCidGenerator::new(key(b"another node"));
        let ids: Vec<_> = (0..1000).map(|_| g.generate_cid()).collect();
        assert!(ids.iter().all(|id| id.len() == CID_LEN));
        assert!(ids.iter().all(|id| after_restart.validate(id).is_ok()));
        // A 16-bit tag: a few of 1,000 may pass by chance, not most.
        let passed = ids.iter().filter(|id| other.validate(id).is_ok()).count();
        assert!(passed < 10, "{passed} of 1000 passed another key");
        assert!(g.validate(&ConnectionId::new(&[0; 4])).is_err());
    }

    #[test]
    fn a_hundred_thousand_draws_do_not_collide() {
        // What a Retry's id meets on a busy node: quinn does not check it against live ids.
        // 48 random bits: a repeat in 100,000 draws has odds of about 1 in 56,000; quinn's
        // HashedConnectionIdGenerator (24 bits) repeats ~300 times here.
        let mut g = SignedCidGenerator::new(key(b"node key"));
        let mut seen = HashSet::new();
        let repeats = (0..100_000)
            .filter(|_| !seen.insert(g.generate_cid()))
            .count();
        assert_eq!(repeats, 0);
    }
}

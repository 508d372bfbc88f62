//! Which relay node a call goes to: rendezvous (highest-random-weight) hashing of the session
//! id over the node list, as DESIGN.md's placement rule says. Sans-IO.
//!
//! Owns the score function. Every node gets `score = H(node key, session id)`; the session is
//! placed on the highest score. Adding or removing a node moves only the sessions that scored
//! highest on it, and every party that knows the node list places a session the same way
//! without talking to anyone. It does not own the node list (the CLI and DNS do).
//!
//! The hash is FNV-1a 64 over `node key | 0xFF | session id`, finished with the SplitMix64
//! mixer (FNV alone spreads short similar keys poorly). It is fixed and documented so a token
//! minter written elsewhere can place identically; proto should eventually own one shared
//! copy of it.

use crate::rng::mix64;

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// The rendezvous score of `session` on the node named `node`.
pub fn score(node: &str, session: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, node.as_bytes());
    // 0xFF never occurs in UTF-8, so ("ab","c") and ("a","bc") cannot collide.
    let h = fnv1a(h, &[0xFF]);
    mix64(fnv1a(h, session.as_bytes()))
}

/// Index of the node `session` is placed on, or `None` for an empty list. Ties (equal 64-bit
/// scores) go to the smaller node key, so the choice never depends on list order.
pub fn place<S: AsRef<str>>(session: &str, nodes: &[S]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            let (a, b) = (a.as_ref(), b.as_ref());
            score(a, session)
                .cmp(&score(b, session))
                .then_with(|| b.cmp(a))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_evenly_and_ignores_list_order() {
        let nodes = ["relay-0", "relay-1", "relay-2", "relay-3"];
        let mut counts = [0usize; 4];
        for i in 0..8000 {
            counts[place(&format!("s{i}"), &nodes).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|c| (1700..2300).contains(c)),
            "{counts:?}"
        );
        let reversed = ["relay-3", "relay-2", "relay-1", "relay-0"];
        for i in 0..200 {
            let s = format!("s{i}");
            assert_eq!(
                nodes[place(&s, &nodes).unwrap()],
                reversed[place(&s, &reversed).unwrap()]
            );
        }
        assert_eq!(place::<&str>("s", &[]), None);
    }

    #[test]
    fn removing_a_node_moves_only_its_sessions() {
        let all = ["a", "b", "c", "d", "e"];
        let without_c = ["a", "b", "d", "e"];
        for i in 0..2000 {
            let s = format!("call-{i}");
            let before = all[place(&s, &all).unwrap()];
            let after = without_c[place(&s, &without_c).unwrap()];
            if before != "c" {
                assert_eq!(before, after, "{s} moved although its node stayed");
            }
        }
    }
}

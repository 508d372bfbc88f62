//! Which relay nodes a session goes to: rendezvous (highest-random-weight) hashing of the
//! session id over the live node set, as DESIGN.md's placement rule says. Sans-IO.
//!
//! Owns the score function and the ranking. Every node gets `score = H(node, session)`;
//! the session's candidates are the nodes by falling score: the first is the primary, the
//! next ones the fallbacks a token lists, in order. Adding or removing one of N nodes moves
//! only the sessions whose primary it is or becomes (about 1/N of them), and every party
//! that knows the node set ranks a session the same way without talking to anyone. It does
//! not own the node set: the minter reads it from DNS, the Kubernetes API or a static list.
//!
//! The hash is FNV-1a 64 over `node | 0xFF | session`, finished with the SplitMix64 mixer
//! (FNV alone spreads short similar keys poorly). It is fixed and documented so a minter
//! written in another language places identically.

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// The SplitMix64 finaliser: a bijection on u64 that spreads every input bit.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The rendezvous score of `session` on the node named `node`.
pub fn score(node: &str, session: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, node.as_bytes());
    // 0xFF never occurs in UTF-8, so ("ab","c") and ("a","bc") cannot collide.
    let h = fnv1a(h, &[0xFF]);
    mix64(fnv1a(h, session.as_bytes()))
}

fn by_score<'a, S: AsRef<str>>(
    session: &str,
) -> impl Fn(&(usize, &'a S), &(usize, &'a S)) -> std::cmp::Ordering + '_ {
    move |(_, a), (_, b)| {
        let (a, b) = (a.as_ref(), b.as_ref());
        // Highest score first; equal scores go to the smaller name, so the order never
        // depends on the order of the list.
        score(b, session)
            .cmp(&score(a, session))
            .then_with(|| a.cmp(b))
    }
}

/// Indices of `nodes` ranked for `session`, best first (primary, then fallbacks).
/// Duplicated names rank next to each other; callers pass a set.
pub fn rank<S: AsRef<str>>(session: &str, nodes: &[S]) -> Vec<usize> {
    let mut ranked: Vec<(usize, &S)> = nodes.iter().enumerate().collect();
    ranked.sort_by(by_score(session));
    ranked.into_iter().map(|(i, _)| i).collect()
}

/// Index of the node `session` is placed on (the first of [`rank`]), or `None` for an
/// empty list.
pub fn place<S: AsRef<str>>(session: &str, nodes: &[S]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .min_by(by_score(session))
        .map(|(i, _)| i)
}

/// The first `n` nodes of [`rank`], cloned: what a token's `nodes` claim lists.
pub fn candidates<S: AsRef<str> + Clone>(session: &str, nodes: &[S], n: usize) -> Vec<S> {
    rank(session, nodes)
        .into_iter()
        .take(n)
        .map(|i| nodes[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
                candidates(&s, &nodes, 4),
                candidates(&s, &reversed, 4),
                "ranking depends on list order"
            );
        }
        assert_eq!(place::<&str>("s", &[]), None);
        assert!(rank::<&str>("s", &[]).is_empty());
    }

    #[test]
    fn place_is_the_head_of_rank() {
        let nodes = ["a", "b", "c", "d", "e"];
        for i in 0..500 {
            let s = format!("call-{i}");
            assert_eq!(place(&s, &nodes), rank(&s, &nodes).first().copied());
        }
    }

    #[test]
    fn known_answers_for_other_implementations() {
        // Fixed values, computed by an independent implementation of the documented hash:
        // a minter written elsewhere must score and rank exactly like this.
        assert_eq!(mix64(1), 0x5692_161D_100B_05E5);
        assert_eq!(score("relay-0", "call-1"), 0x9086_7B9D_CFD8_0B5E);
        let nodes = ["relay-0", "relay-1", "relay-2", "relay-3", "relay-4"];
        for (session, expected) in [
            (
                "call-1",
                ["relay-1", "relay-0", "relay-4", "relay-2", "relay-3"],
            ),
            (
                "call-2",
                ["relay-1", "relay-4", "relay-2", "relay-3", "relay-0"],
            ),
            (
                "alice-bob",
                ["relay-0", "relay-3", "relay-4", "relay-2", "relay-1"],
            ),
        ] {
            assert_eq!(candidates(session, &nodes, 5), expected, "{session}");
        }
    }

    proptest! {
        /// Adding one node to N moves only the sessions that now rank it first (about 1/(N+1)),
        /// and a moved session moves to the new node; removing it moves them back.
        #[test]
        fn adding_or_removing_one_node_moves_about_one_nth(n in 2usize..12, new in "[a-z]{1,8}") {
            let nodes: Vec<String> = (0..n).map(|i| format!("relay-{i}")).collect();
            prop_assume!(!nodes.contains(&new));
            let mut grown = nodes.clone();
            grown.push(new.clone());
            let sessions = 3000;
            let mut moved = 0;
            for i in 0..sessions {
                let s = format!("session-{i}");
                let before = &nodes[place(&s, &nodes).unwrap()];
                let after = &grown[place(&s, &grown).unwrap()];
                if before != after {
                    prop_assert_eq!(after, &new, "a session moved between two old nodes");
                    moved += 1;
                }
                // The old primary stays among the fallbacks in the same relative order.
                let old_rank = candidates(&s, &nodes, n);
                let new_rank: Vec<String> = candidates(&s, &grown, n + 1)
                    .into_iter()
                    .filter(|x| x != &new)
                    .collect();
                prop_assert_eq!(old_rank, new_rank);
            }
            let expected = sessions as f64 / (n + 1) as f64;
            prop_assert!(
                (moved as f64) > expected * 0.6 && (moved as f64) < expected * 1.4,
                "moved {} of {}, expected about {}", moved, sessions, expected
            );
        }
    }
}

//! The per-datagram relay step, sans-IO: header parse, rate-limit check, peer lookup,
//! hand-off decision.
//!
//! Owns the decision "forward this datagram to that peer, or drop it and why". It does not
//! send (the caller hands the same `Bytes` to the peer's connection) and it does not count
//! (the caller counts by the returned kind or reason). No allocation, no lock, no log.
//! Generic over the peer handle so it can be benchmarked without sockets.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwapOption, Guard};
use duet_proto::{MediaHeader, MediaHeaderError, MediaKind};

use crate::limits::Admission;

/// Why a datagram was not forwarded. Stable metrics labels via `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    BadHeader(MediaHeaderError),
    RateLimited,
    /// The other slot has no live connection.
    NoPeer,
    /// Media from a connection that has not joined.
    BeforeJoin,
    /// The peer's connection refused it (closed, datagrams off, ...).
    SendFailed,
    /// Larger than the peer's connection can carry in one datagram.
    TooLargeForPeer,
}

impl DropReason {
    pub const LABELS: &'static [&'static str] = &[
        "truncated",
        "bad_version",
        "bad_kind",
        "rate_limited",
        "no_peer",
        "before_join",
        "send_failed",
        "too_large_for_peer",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadHeader(e) => e.as_str(),
            Self::RateLimited => "rate_limited",
            Self::NoPeer => "no_peer",
            Self::BeforeJoin => "before_join",
            Self::SendFailed => "send_failed",
            Self::TooLargeForPeer => "too_large_for_peer",
        }
    }
}

/// A loaded peer handle: valid for the hand-off, no reference count touched.
pub type PeerGuard<P> = Guard<Option<Arc<P>>>;

/// Decides the fate of one media datagram from this endpoint.
/// On `Ok` the caller sends the datagram, unchanged, to the returned peer.
#[inline]
pub fn forward_step<P, L: Admission>(
    datagram: &[u8],
    limiter: &mut L,
    peer: &ArcSwapOption<P>,
    now: Instant,
) -> Result<(MediaKind, PeerGuard<P>), DropReason> {
    let (header, _payload) = MediaHeader::parse(datagram).map_err(DropReason::BadHeader)?;
    if !limiter.admit(datagram.len(), now) {
        return Err(DropReason::RateLimited);
    }
    let guard = peer.load();
    if guard.is_none() {
        return Err(DropReason::NoPeer);
    }
    Ok((header.kind, guard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MediaLimiter;

    #[test]
    fn forwards_good_datagrams_and_names_each_drop() {
        let now = Instant::now();
        let mut lim = MediaLimiter::new(3, 1_000_000, now);
        let peer: ArcSwapOption<u32> = ArcSwapOption::empty();
        let good = [1u8, 2, 0xAA, 0xBB];
        assert_eq!(
            forward_step(&good, &mut lim, &peer, now).err(),
            Some(DropReason::NoPeer)
        );
        peer.store(Some(Arc::new(7)));
        let (kind, to) = forward_step(&good, &mut lim, &peer, now).unwrap();
        assert_eq!(kind, MediaKind::Video);
        assert_eq!(to.as_deref(), Some(&7));
        assert_eq!(
            forward_step(&[9, 1], &mut lim, &peer, now).err(),
            Some(DropReason::BadHeader(MediaHeaderError::Version(9)))
        );
        assert_eq!(forward_step(&good, &mut lim, &peer, now).err(), None);
        assert_eq!(
            forward_step(&good, &mut lim, &peer, now).err(),
            Some(DropReason::RateLimited)
        );
        for r in [
            DropReason::BadHeader(MediaHeaderError::Truncated(0)),
            DropReason::RateLimited,
            DropReason::SendFailed,
        ] {
            assert!(DropReason::LABELS.contains(&r.as_str()));
        }
    }
}

//! The forwarding vocabulary both transports share: why a datagram was dropped
//! ([`DropReason`], one label scheme), the one rate limiter every endpoint's media is charged
//! to ([`Gcra`], [`MediaBudget`]), and the QUIC per-datagram step ([`forward_step`]).
//!
//! The limiter is GCRA over atomics: lock-free, `&self`, so one budget can be shared by the
//! fast-path workers and the endpoint's QUIC media task (one budget per endpoint whichever
//! transport it sends on). It does not send, count or log: callers hand the same bytes on
//! and count by the returned kind or reason. No allocation, no lock, no log line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwapOption, Guard};
use duet_proto::fastpath::{FastPathHeaderError, TicketError};
use duet_proto::{MediaHeader, MediaHeaderError, MediaKind};

/// Why a media datagram (QUIC or fast path) was not forwarded. One variant, one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than its header.
    Truncated,
    BadVersion,
    /// Unknown media kind in a QUIC media header.
    BadKind,
    /// Unknown packet type in a fast-path header.
    BadType,
    /// Media from a QUIC connection that has not joined.
    BeforeJoin,
    /// Fast path: channel index out of range, or its generation is not the live one.
    UnknownChannel,
    /// Fast path: media on a channel that has no binding.
    Unbound,
    /// Fast path: media whose source is not the channel's bound address.
    SpoofedSource,
    /// Over the endpoint's packets- or bytes-per-second budget.
    RateLimited,
    /// The other endpoint is not reachable (no live connection, or not bound).
    NoPeer,
    /// The peer's connection or the kernel refused the send.
    SendFailed,
    /// Larger than the peer's QUIC connection can carry in one datagram.
    TooLargeForPeer,
    /// Fast-path BIND: the ticket is malformed.
    BadTicket,
    /// Fast-path BIND: the ticket's MAC does not verify.
    BadMac,
    TicketExpired,
    /// Fast-path BIND: the ticket names another IP than the packet's source.
    WrongAddress,
    /// Fast-path BIND: the ticket is for another channel than the header names.
    WrongChannel,
    /// Fast-path BIND from a new address with a ticket not newer than the current binding's.
    StaleTicket,
}

impl DropReason {
    /// Number of reasons; per-reason counters are `[_; DropReason::COUNT]`.
    pub const COUNT: usize = 18;
    /// Every reason, in [`DropReason::index`] order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::Truncated,
        Self::BadVersion,
        Self::BadKind,
        Self::BadType,
        Self::BeforeJoin,
        Self::UnknownChannel,
        Self::Unbound,
        Self::SpoofedSource,
        Self::RateLimited,
        Self::NoPeer,
        Self::SendFailed,
        Self::TooLargeForPeer,
        Self::BadTicket,
        Self::BadMac,
        Self::TicketExpired,
        Self::WrongAddress,
        Self::WrongChannel,
        Self::StaleTicket,
    ];
    /// The reasons a QUIC media datagram can be dropped for (`duet_media_dropped_total`).
    pub const QUIC: &'static [DropReason] = &[
        Self::Truncated,
        Self::BadVersion,
        Self::BadKind,
        Self::RateLimited,
        Self::NoPeer,
        Self::BeforeJoin,
        Self::SendFailed,
        Self::TooLargeForPeer,
    ];
    /// The reasons a fast-path datagram can be dropped for (`duet_fastpath_dropped_total`).
    pub const FAST_PATH: &'static [DropReason] = &[
        Self::Truncated,
        Self::BadVersion,
        Self::BadType,
        Self::UnknownChannel,
        Self::Unbound,
        Self::SpoofedSource,
        Self::NoPeer,
        Self::RateLimited,
        Self::BadTicket,
        Self::BadMac,
        Self::TicketExpired,
        Self::WrongAddress,
        Self::WrongChannel,
        Self::StaleTicket,
        Self::SendFailed,
    ];

    /// Dense index into [`DropReason::ALL`].
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable metrics label (`reason="..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadVersion => "bad_version",
            Self::BadKind => "bad_kind",
            Self::BadType => "bad_type",
            Self::BeforeJoin => "before_join",
            Self::UnknownChannel => "unknown_channel",
            Self::Unbound => "unbound",
            Self::SpoofedSource => "spoofed_source",
            Self::RateLimited => "rate_limited",
            Self::NoPeer => "no_peer",
            Self::SendFailed => "send_failed",
            Self::TooLargeForPeer => "too_large_for_peer",
            Self::BadTicket => "bad_ticket",
            Self::BadMac => "bad_mac",
            Self::TicketExpired => "ticket_expired",
            Self::WrongAddress => "wrong_address",
            Self::WrongChannel => "wrong_channel",
            Self::StaleTicket => "stale_ticket",
        }
    }

    /// The reason labelled `label`, if any.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == label)
    }
}

impl From<MediaHeaderError> for DropReason {
    fn from(e: MediaHeaderError) -> Self {
        match e {
            MediaHeaderError::Truncated(_) => Self::Truncated,
            MediaHeaderError::Version(_) => Self::BadVersion,
            MediaHeaderError::Kind(_) => Self::BadKind,
        }
    }
}

impl From<FastPathHeaderError> for DropReason {
    fn from(e: FastPathHeaderError) -> Self {
        match e {
            FastPathHeaderError::Truncated(_) => Self::Truncated,
            FastPathHeaderError::Version(_) => Self::BadVersion,
            FastPathHeaderError::Type(_) => Self::BadType,
        }
    }
}

impl From<TicketError> for DropReason {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::Malformed(_) => Self::BadTicket,
            TicketError::BadMac => Self::BadMac,
            TicketError::Expired { .. } => Self::TicketExpired,
            TicketError::WrongAddress => Self::WrongAddress,
        }
    }
}

/// One second: the burst window of every limiter, in nanoseconds.
const WINDOW_NS: u64 = 1_000_000_000;
/// Picoseconds per second: costs are kept in ps per unit so byte rates stay exact enough.
const PS_PER_SEC: u64 = 1_000_000_000_000;

/// Nanoseconds since an epoch: the limiters' clock, derived from the `now` callers pass.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(Instant);

impl Epoch {
    pub fn new(at: Instant) -> Self {
        Self(at)
    }

    #[inline]
    pub fn ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.0).as_nanos() as u64
    }

    /// The instant `ns` after the epoch.
    pub fn instant(&self, ns: u64) -> Instant {
        self.0 + std::time::Duration::from_nanos(ns)
    }
}

/// A rate of `per_sec` units with one second of burst, as the generic cell rate algorithm on
/// one atomic (the theoretical arrival time). Starts with the full burst available.
#[derive(Debug, Default)]
pub struct Gcra {
    /// Theoretical arrival time, ns since the caller's epoch.
    tat: AtomicU64,
    /// Cost of one unit, in picoseconds.
    cost_ps: AtomicU64,
}

impl Gcra {
    pub fn new(per_sec: u64) -> Self {
        let g = Self::default();
        g.reset(per_sec);
        g
    }

    /// A new rate, the full burst available again. A rate of 0 admits nothing.
    pub fn reset(&self, per_sec: u64) {
        self.tat.store(0, Ordering::Relaxed);
        let cost = match per_sec {
            0 => u64::MAX,
            r => PS_PER_SEC / r,
        };
        self.cost_ps.store(cost, Ordering::Relaxed);
    }

    #[inline]
    fn cost_ns(&self, units: u64) -> u64 {
        let ps = self.cost_ps.load(Ordering::Relaxed);
        if ps == u64::MAX {
            return WINDOW_NS + 1;
        }
        units.saturating_mul(ps) / 1000
    }

    /// Takes `units` at `now_ns` if they fit the burst window; returns the cost taken
    /// (for [`Gcra::give_back`]) or `None`.
    #[inline]
    fn take(&self, units: u64, now_ns: u64) -> Option<u64> {
        let cost = self.cost_ns(units);
        let mut cur = self.tat.load(Ordering::Relaxed);
        loop {
            let new = cur.max(now_ns).saturating_add(cost);
            if new - now_ns > WINDOW_NS {
                return None;
            }
            match self
                .tat
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(cost),
                Err(c) => cur = c,
            }
        }
    }

    #[inline]
    fn give_back(&self, cost: u64) {
        self.tat.fetch_sub(cost, Ordering::Relaxed);
    }

    /// Admits `units` at `now_ns`, or refuses them (a refusal takes nothing).
    #[inline]
    pub fn admit(&self, units: u64, now_ns: u64) -> bool {
        self.take(units, now_ns).is_some()
    }
}

/// One endpoint's media rates (told to it in `Joined`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    pub packets_per_sec: u32,
    pub bytes_per_sec: u64,
}

impl From<&duet_proto::Limits> for MediaLimits {
    fn from(l: &duet_proto::Limits) -> Self {
        Self {
            packets_per_sec: l.media_packets_per_sec,
            bytes_per_sec: l.media_bytes_per_sec,
        }
    }
}

/// One endpoint's media budget: packets and bytes per second, one second of burst each. A
/// packet passes only if both have room; a refused packet takes nothing (approximately,
/// under races between workers).
#[derive(Debug, Default)]
pub struct MediaBudget {
    packets: Gcra,
    bytes: Gcra,
}

impl MediaBudget {
    pub fn new(limits: MediaLimits) -> Self {
        let b = Self::default();
        b.reset(limits);
        b
    }

    /// New limits, the full burst available again.
    pub fn reset(&self, limits: MediaLimits) {
        self.packets.reset(limits.packets_per_sec.into());
        self.bytes.reset(limits.bytes_per_sec);
    }

    /// Admits one packet of `len` bytes at `now_ns` (ns since the caller's epoch).
    #[inline]
    pub fn admit(&self, len: usize, now_ns: u64) -> bool {
        let Some(pkt) = self.packets.take(1, now_ns) else {
            return false;
        };
        if self.bytes.take(len as u64, now_ns).is_none() {
            self.packets.give_back(pkt);
            return false;
        }
        true
    }
}

/// Admits or refuses one media packet of `len` bytes at `now`: the endpoint's budget,
/// wherever it is held.
pub trait Admission {
    fn admit(&self, len: usize, now: Instant) -> bool;
}

/// A [`MediaBudget`] with its own epoch: an endpoint's budget on QUIC when the relay has no
/// fast path (with one, the budget lives in the channel table, see `EndpointBudget`).
#[derive(Debug)]
pub struct MediaLimiter {
    budget: MediaBudget,
    epoch: Epoch,
}

impl MediaLimiter {
    pub fn new(packets_per_sec: u32, bytes_per_sec: u64, now: Instant) -> Self {
        Self {
            budget: MediaBudget::new(MediaLimits {
                packets_per_sec,
                bytes_per_sec,
            }),
            epoch: Epoch::new(now),
        }
    }
}

impl Admission for MediaLimiter {
    #[inline]
    fn admit(&self, len: usize, now: Instant) -> bool {
        self.budget.admit(len, self.epoch.ns(now))
    }
}

/// A loaded peer handle: valid for the hand-off, no reference count touched.
pub type PeerGuard<P> = Guard<Option<Arc<P>>>;

/// Decides the fate of one QUIC media datagram from this endpoint: header parse, budget,
/// peer lookup. On `Ok` the caller sends the datagram, unchanged, to the returned peer.
/// Generic over the peer handle so it can be benchmarked without sockets.
#[inline]
pub fn forward_step<P, L: Admission>(
    datagram: &[u8],
    limiter: &L,
    peer: &ArcSwapOption<P>,
    now: Instant,
) -> Result<(MediaKind, PeerGuard<P>), DropReason> {
    let (header, _payload) = MediaHeader::parse(datagram)?;
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
    use std::time::Duration;

    #[test]
    fn forwards_good_datagrams_and_names_each_drop() {
        let now = Instant::now();
        let lim = MediaLimiter::new(3, 1_000_000, now);
        let peer: ArcSwapOption<u32> = ArcSwapOption::empty();
        let good = [1u8, 2, 0xAA, 0xBB];
        assert_eq!(
            forward_step(&good, &lim, &peer, now).err(),
            Some(DropReason::NoPeer)
        );
        peer.store(Some(Arc::new(7)));
        let (kind, to) = forward_step(&good, &lim, &peer, now).unwrap();
        assert_eq!(kind, MediaKind::Video);
        assert_eq!(to.as_deref(), Some(&7));
        assert_eq!(
            forward_step(&[9, 1], &lim, &peer, now).err(),
            Some(DropReason::BadVersion)
        );
        assert_eq!(forward_step(&good, &lim, &peer, now).err(), None);
        assert_eq!(
            forward_step(&good, &lim, &peer, now).err(),
            Some(DropReason::RateLimited)
        );
    }

    #[test]
    fn labels_are_unique_and_each_transport_lists_its_own() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(seen.insert(r.as_str()));
            assert_eq!(DropReason::from_label(r.as_str()), Some(r));
        }
        assert!(!DropReason::QUIC.contains(&DropReason::SpoofedSource));
        assert!(!DropReason::FAST_PATH.contains(&DropReason::BeforeJoin));
        assert_eq!(
            DropReason::from(MediaHeaderError::Kind(9)).as_str(),
            MediaHeaderError::Kind(9).as_str()
        );
        assert_eq!(
            DropReason::from(FastPathHeaderError::Type(9)).as_str(),
            FastPathHeaderError::Type(9).as_str()
        );
        assert_eq!(
            DropReason::from(TicketError::BadMac).as_str(),
            TicketError::BadMac.as_str()
        );
    }

    #[test]
    fn gcra_allows_one_second_of_burst_then_refills() {
        let g = Gcra::new(10);
        let t0 = 5 * WINDOW_NS;
        for _ in 0..10 {
            assert!(g.admit(1, t0));
        }
        assert!(!g.admit(1, t0));
        assert!(g.admit(1, t0 + 100_000_000));
        assert!(!g.admit(1, t0 + 100_000_000));
        // Never more than the burst, however long the pause.
        let later = t0 + 100 * WINDOW_NS;
        for _ in 0..10 {
            assert!(g.admit(1, later));
        }
        assert!(!g.admit(1, later));
        let off = Gcra::new(0);
        assert!(!off.admit(1, t0), "a rate of 0 admits nothing");
    }

    #[test]
    fn media_budget_checks_packets_and_bytes() {
        let t0 = Instant::now();
        let m = MediaLimiter::new(100, 1000, t0);
        assert!(m.admit(600, t0));
        assert!(!m.admit(600, t0), "bytes exhausted");
        assert!(m.admit(400, t0), "a refused packet took nothing");
        let m = MediaLimiter::new(2, 1_000_000, t0);
        assert!(m.admit(1, t0));
        assert!(m.admit(1, t0));
        assert!(!m.admit(1, t0), "packets exhausted");
        assert!(m.admit(1, t0 + Duration::from_millis(500)));
    }
}

//! The fast path's channel table: which source address may send on which channel, and where
//! its packets go. Shared by every worker thread; the per-packet path takes no lock.
//!
//! Owns: channel ids, the binding rules, the forwarding decision and the per-endpoint rate
//! limits. A session gets a *pair* of channels (one per endpoint); a channel id is
//! `generation: u32 << 32 | pair_index << 1 | side`, so a lookup is an index and a generation
//! compare. Generations are odd while a pair is allocated and even once released, so a stale
//! or never-issued id never matches.
//!
//! Binding rules (checked in [`ChannelTable::bind`]):
//! * a BIND needs a ticket whose MAC verifies, that has not expired, whose channel is the
//!   header's, and whose IP equals the packet's source IP;
//! * the first bind takes any seq; a bind from the *same* source address refreshes;
//! * a bind from a *new* source address (NAT change, new port) needs a ticket with a higher
//!   seq than the current binding's: a replayed old ticket cannot move the binding.
//!
//! Forwarding ([`ChannelTable::route`]): only packets whose source equals the channel's bound
//! address are forwarded, only to the peer channel's bound address, never to an address a
//! packet names. Rate limits are charged only after the source check, so spoofed packets cannot
//! spend the real endpoint's budget. The limiter is GCRA over atomics (a token bucket of one
//! second of burst, as on the QUIC path) because several workers may see the same channel.
//!
//! The API has no way to produce a reply: every result is a destination that is already a
//! bound peer, or a drop reason. Not owned here: sockets, counters, metrics export, minting
//! tickets, and deciding when a pair is allocated or released (the control plane's job).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use duet_proto::fastpath::{
    FastPathHeader, FastPathHeaderError, FastPathKey, FastPathTicket, PacketType, TicketError,
};
use duet_proto::MediaKind;

use crate::limits::Admission;

/// One second, the burst window of both buckets, in nanoseconds.
const WINDOW_NS: u64 = 1_000_000_000;

/// Why a fast-path packet was dropped. Stable metrics labels via `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Header(FastPathHeaderError),
    /// Channel index out of range, or its generation is not the live one.
    UnknownChannel,
    /// Media on a channel that has no binding yet.
    Unbound,
    /// Media whose source is not the channel's bound address.
    SpoofedSource,
    /// The peer channel has no binding yet.
    NoPeer,
    RateLimited,
    Ticket(TicketError),
    /// The ticket is for another channel than the BIND header names.
    WrongChannel,
    /// A bind from a new address with a ticket not newer than the current binding's.
    StaleTicket,
    /// The kernel refused the send to the peer.
    SendFailed,
}

impl DropReason {
    /// Number of distinct labels; counters are `[AtomicU64; DropReason::COUNT]`.
    pub const COUNT: usize = 15;
    /// Every label, in [`DropReason::index`] order.
    pub const LABELS: [&'static str; Self::COUNT] = [
        "truncated",
        "bad_version",
        "bad_type",
        "unknown_channel",
        "unbound",
        "spoofed_source",
        "no_peer",
        "rate_limited",
        "bad_ticket",
        "bad_mac",
        "ticket_expired",
        "wrong_address",
        "wrong_channel",
        "stale_ticket",
        "send_failed",
    ];

    /// Dense index into [`DropReason::LABELS`].
    #[inline]
    pub fn index(self) -> usize {
        match self {
            Self::Header(FastPathHeaderError::Truncated(_)) => 0,
            Self::Header(FastPathHeaderError::Version(_)) => 1,
            Self::Header(FastPathHeaderError::Type(_)) => 2,
            Self::UnknownChannel => 3,
            Self::Unbound => 4,
            Self::SpoofedSource => 5,
            Self::NoPeer => 6,
            Self::RateLimited => 7,
            Self::Ticket(TicketError::Malformed(_)) => 8,
            Self::Ticket(TicketError::BadMac) => 9,
            Self::Ticket(TicketError::Expired { .. }) => 10,
            Self::Ticket(TicketError::WrongAddress) => 11,
            Self::WrongChannel => 12,
            Self::StaleTicket => 13,
            Self::SendFailed => 14,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// What a successful BIND did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// The channel had no binding; now it is bound to the source.
    New,
    /// Same address as the current binding: nothing moved.
    Refreshed,
    /// The binding moved to a new source address (fresh ticket, higher seq).
    Moved,
}

impl BindOutcome {
    pub const COUNT: usize = 3;
    /// Every label, in [`BindOutcome::index`] order.
    pub const LABELS: [&'static str; Self::COUNT] = ["new", "refreshed", "moved"];

    #[inline]
    pub fn index(self) -> usize {
        match self {
            Self::New => 0,
            Self::Refreshed => 1,
            Self::Moved => 2,
        }
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the same bytes, unchanged, to this (bound peer) address.
    Forward(SocketAddr),
    /// The peer has no fast-path binding: it is on QUIC datagrams (or not there at all).
    /// Hand the payload after the header to the control plane's connection of
    /// `peer_channel`; it alone knows whether that endpoint is reachable.
    Bridge { peer_channel: u64, kind: MediaKind },
    /// A BIND was accepted on `channel`; nothing is sent on UDP.
    Bound { channel: u64, outcome: BindOutcome },
}

/// The pair index a channel id names (the index of the session's slot in the table).
#[inline]
pub fn channel_pair(channel: u64) -> usize {
    ((channel as u32) >> 1) as usize
}

/// The side (0 or 1, the session's slot A or B) a channel id names.
#[inline]
pub fn channel_side(channel: u64) -> usize {
    (channel & 1) as usize
}

/// Per-endpoint limits, as on the QUIC path (one second of burst each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPathLimits {
    pub packets_per_sec: u32,
    pub bytes_per_sec: u64,
}

impl From<&duet_proto::Limits> for FastPathLimits {
    fn from(l: &duet_proto::Limits) -> Self {
        Self {
            packets_per_sec: l.media_packets_per_sec,
            bytes_per_sec: l.media_bytes_per_sec,
        }
    }
}

#[derive(Debug)]
struct Binding {
    /// `None` once the endpoint unbound itself: its media goes over QUIC again, and the
    /// seq is kept so an old ticket still cannot bind.
    addr: Option<SocketAddr>,
    seq: u32,
    generation: u32,
}

#[derive(Default)]
struct Endpoint {
    binding: ArcSwapOption<Binding>,
    /// GCRA theoretical arrival times, ns since the table's epoch.
    pkt_tat: AtomicU64,
    byte_tat: AtomicU64,
    pkt_cost_ns: AtomicU64,
    /// Picoseconds per byte.
    byte_cost_ps: AtomicU64,
}

impl Endpoint {
    fn reset(&self, limits: FastPathLimits) {
        self.binding.store(None);
        self.pkt_tat.store(0, Ordering::Relaxed);
        self.byte_tat.store(0, Ordering::Relaxed);
        let pkt = match limits.packets_per_sec {
            0 => WINDOW_NS + 1,
            p => WINDOW_NS / u64::from(p),
        };
        let byte = match limits.bytes_per_sec {
            0 => 2_000_000_000_000,
            b => 1_000_000_000_000 / b,
        };
        self.pkt_cost_ns.store(pkt, Ordering::Relaxed);
        self.byte_cost_ps.store(byte, Ordering::Relaxed);
    }

    #[inline]
    fn admit(&self, len: usize, now_ns: u64) -> bool {
        let pkt = self.pkt_cost_ns.load(Ordering::Relaxed);
        let bytes = (len as u64).saturating_mul(self.byte_cost_ps.load(Ordering::Relaxed)) / 1000;
        if !gcra(&self.pkt_tat, pkt, now_ns) {
            return false;
        }
        if !gcra(&self.byte_tat, bytes, now_ns) {
            // A refused packet takes nothing (approximately, under races).
            self.pkt_tat.fetch_sub(pkt, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Generic cell rate algorithm on one atomic: admits `cost` ns of budget at `now` if the
/// theoretical arrival time stays within one window ahead of `now`.
#[inline]
fn gcra(tat: &AtomicU64, cost: u64, now: u64) -> bool {
    let mut cur = tat.load(Ordering::Relaxed);
    loop {
        let new = cur.max(now).saturating_add(cost);
        if new - now > WINDOW_NS {
            return false;
        }
        match tat.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(c) => cur = c,
        }
    }
}

struct Pair {
    /// Odd while allocated.
    generation: AtomicU32,
    /// Packets admitted on either side; the control plane reads it to tell a live session
    /// from an idle one.
    activity: AtomicU64,
    ends: [Endpoint; 2],
}

/// One endpoint's fast-path rate budget, charged by its QUIC media too. A released channel
/// admits nothing.
#[derive(Debug, Clone, Copy)]
pub struct EndpointBudget<'a> {
    table: &'a ChannelTable,
    channel: u64,
}

impl Admission for EndpointBudget<'_> {
    #[inline]
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        match self.table.locate(self.channel) {
            Ok((pair, side, _)) => {
                let ok = pair.ends[side].admit(len, self.table.now_ns(now));
                if ok {
                    pair.activity.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }
            Err(_) => false,
        }
    }
}

/// The fixed-capacity table of channel pairs. See the module doc for the rules.
pub struct ChannelTable {
    pairs: Box<[Pair]>,
    free: Mutex<Vec<u32>>,
    key: FastPathKey,
    epoch: Instant,
}

impl std::fmt::Debug for ChannelTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTable")
            .field("capacity", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

#[inline]
fn channel_id(generation: u32, pair: u32, side: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(pair << 1 | side)
}

impl ChannelTable {
    /// A table of `capacity` sessions (pairs of channels), at most 2^31; tickets verified
    /// under `key`.
    pub fn new(capacity: u32, key: FastPathKey) -> Self {
        let capacity = capacity.min(1 << 31);
        let pairs = (0..capacity)
            .map(|_| Pair {
                generation: AtomicU32::new(0),
                activity: AtomicU64::new(0),
                ends: Default::default(),
            })
            .collect();
        Self {
            pairs,
            free: Mutex::new((0..capacity).rev().collect()),
            key,
            epoch: Instant::now(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.pairs.len()
    }

    /// Control plane: allocates a pair of channels for a session; `[slot 0, slot 1]`.
    /// `None` when the table is full. Takes a lock (not on the per-packet path).
    pub fn allocate(&self, limits: FastPathLimits) -> Option<[u64; 2]> {
        let idx = self.free.lock().ok()?.pop()?;
        let pair = &self.pairs[idx as usize];
        for e in &pair.ends {
            e.reset(limits);
        }
        let generation = pair
            .generation
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        debug_assert!(generation & 1 == 1);
        Some([
            channel_id(generation, idx, 0),
            channel_id(generation, idx, 1),
        ])
    }

    /// Control plane: releases the pair `channel` belongs to (either side's id). Its ids
    /// stop matching at once. Returns false for an unknown or already released id.
    pub fn release(&self, channel: u64) -> bool {
        let Ok((pair, _, generation)) = self.locate(channel) else {
            return false;
        };
        if pair
            .generation
            .compare_exchange(
                generation,
                generation.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        for e in &pair.ends {
            e.binding.store(None);
        }
        if let Ok(mut free) = self.free.lock() {
            free.push((channel as u32) >> 1);
        }
        true
    }

    /// The rate budget of the endpoint owning `channel`, for its media on the QUIC path:
    /// one budget per endpoint whichever transport it sends on.
    pub fn budget(&self, channel: u64) -> EndpointBudget<'_> {
        EndpointBudget {
            table: self,
            channel,
        }
    }

    /// Packets admitted so far on the pair `channel` belongs to; `None` once released.
    pub fn activity(&self, channel: u64) -> Option<u64> {
        let (pair, _, _) = self.locate(channel).ok()?;
        Some(pair.activity.load(Ordering::Relaxed))
    }

    /// The bound address of `channel`, if any. Lock-free: the QUIC path asks it per packet
    /// to learn whether the receiving endpoint is on the fast path.
    pub fn bound_addr(&self, channel: u64) -> Option<SocketAddr> {
        let (pair, side, generation) = self.locate(channel).ok()?;
        let b = pair.ends[side].binding.load();
        b.as_ref()
            .filter(|b| b.generation == generation)
            .and_then(|b| b.addr)
    }

    /// Control plane: the endpoint of `channel` asked to stop receiving on the fast path
    /// (its UDP path died). Keeps the seq; false when it had no binding.
    pub fn unbind(&self, channel: u64) -> bool {
        let Ok((pair, side, generation)) = self.locate(channel) else {
            return false;
        };
        let mut done = false;
        pair.ends[side].binding.rcu(|cur| match cur.as_deref() {
            Some(b) if b.generation == generation && b.addr.is_some() => {
                done = true;
                Some(Arc::new(Binding {
                    addr: None,
                    seq: b.seq,
                    generation,
                }))
            }
            _ => {
                done = false;
                cur.clone()
            }
        });
        done
    }

    #[inline]
    fn locate(&self, channel: u64) -> Result<(&Pair, usize, u32), DropReason> {
        let generation = (channel >> 32) as u32;
        let low = channel as u32;
        let pair = self
            .pairs
            .get((low >> 1) as usize)
            .ok_or(DropReason::UnknownChannel)?;
        if generation & 1 == 0 || pair.generation.load(Ordering::Acquire) != generation {
            return Err(DropReason::UnknownChannel);
        }
        Ok((pair, (low & 1) as usize, generation))
    }

    #[inline]
    fn now_ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Handles one datagram from `src`: parses the header, then binds or routes.
    /// `now` drives the rate limits, `now_unix` (seconds) the ticket expiry.
    #[inline]
    pub fn process(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        now_unix: u64,
    ) -> Result<Action, DropReason> {
        let (header, payload) = FastPathHeader::parse(datagram).map_err(DropReason::Header)?;
        match header.ty {
            PacketType::Bind => {
                self.bind(src, header.channel.0, payload, now_unix)
                    .map(|outcome| Action::Bound {
                        channel: header.channel.0,
                        outcome,
                    })
            }
            PacketType::Media(kind) => self.route(src, header.channel.0, kind, datagram.len(), now),
        }
    }

    /// The forwarding decision for a media packet of `kind` and `len` bytes (whole datagram)
    /// from `src` on `channel`: the peer's bound address, the bridge to QUIC, or why not.
    /// Lock-free, no allocation.
    #[inline]
    pub fn route(
        &self,
        src: SocketAddr,
        channel: u64,
        kind: MediaKind,
        len: usize,
        now: Instant,
    ) -> Result<Action, DropReason> {
        let (pair, side, generation) = self.locate(channel)?;
        let me = &pair.ends[side];
        {
            let mine = me.binding.load();
            match mine.as_deref() {
                Some(b) if b.generation == generation => match b.addr {
                    Some(a) if a == src => {}
                    Some(_) => return Err(DropReason::SpoofedSource),
                    None => return Err(DropReason::Unbound),
                },
                _ => return Err(DropReason::Unbound),
            }
        }
        if !me.admit(len, self.now_ns(now)) {
            return Err(DropReason::RateLimited);
        }
        pair.activity.fetch_add(1, Ordering::Relaxed);
        let peer = pair.ends[side ^ 1].binding.load();
        Ok(match peer.as_deref() {
            Some(Binding {
                addr: Some(addr),
                generation: g,
                ..
            }) if *g == generation => Action::Forward(*addr),
            _ => Action::Bridge {
                peer_channel: channel ^ 1,
                kind,
            },
        })
    }

    /// A BIND from `src` on `channel` carrying `ticket` (the bytes after the header).
    /// Allocates one small binding on success (binds are rare; media never allocates).
    pub fn bind(
        &self,
        src: SocketAddr,
        channel: u64,
        ticket: &[u8],
        now_unix: u64,
    ) -> Result<BindOutcome, DropReason> {
        let t = FastPathTicket::verify(ticket, &self.key, src.ip(), now_unix)
            .map_err(DropReason::Ticket)?;
        if t.channel.0 != channel {
            return Err(DropReason::WrongChannel);
        }
        let (pair, side, generation) = self.locate(channel)?;
        let mut result = Err(DropReason::StaleTicket);
        pair.ends[side].binding.rcu(|cur| {
            let (outcome, seq) = match cur.as_deref() {
                Some(b) if b.generation == generation && b.addr == Some(src) => {
                    (Ok(BindOutcome::Refreshed), b.seq.max(t.seq))
                }
                Some(b) if b.generation == generation => {
                    if t.seq > b.seq {
                        let outcome = match b.addr {
                            Some(_) => BindOutcome::Moved,
                            None => BindOutcome::New,
                        };
                        (Ok(outcome), t.seq)
                    } else {
                        (Err(DropReason::StaleTicket), b.seq)
                    }
                }
                _ => (Ok(BindOutcome::New), t.seq),
            };
            result = outcome;
            match (outcome, cur) {
                (Err(_), cur) => cur.clone(),
                (Ok(BindOutcome::Refreshed), Some(b)) if b.seq == seq => Some(b.clone()),
                _ => Some(Arc::new(Binding {
                    addr: Some(src),
                    seq,
                    generation,
                })),
            }
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_000_000;

    fn key() -> FastPathKey {
        FastPathKey::new(&[9u8; 32]).unwrap()
    }

    fn table() -> ChannelTable {
        ChannelTable::new(4, key())
    }

    const UNLIMITED: FastPathLimits = FastPathLimits {
        packets_per_sec: u32::MAX,
        bytes_per_sec: u64::MAX / 4,
    };

    fn ticket(channel: u64, addr: SocketAddr, seq: u32) -> [u8; 54] {
        FastPathTicket {
            channel: duet_proto::ChannelId(channel),
            ip: addr.ip(),
            expires_unix: NOW + 60,
            seq,
        }
        .encode(&key())
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn binds_routes_and_names_each_drop() {
        let t = table();
        let now = Instant::now();
        let [c0, c1] = t.allocate(UNLIMITED).unwrap();
        let (e0, e1, x) = (a("10.0.0.1:1000"), a("10.0.0.2:2000"), a("10.0.0.3:3000"));
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 100, now),
            Err(DropReason::Unbound)
        );
        assert_eq!(
            t.bind(e0, c0, &ticket(c0, e0, 1), NOW),
            Ok(BindOutcome::New)
        );
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 100, now),
            Ok(Action::Bridge {
                peer_channel: c1,
                kind: MediaKind::Audio
            }),
            "the peer is not on the fast path: bridge to its QUIC connection"
        );
        assert_eq!(
            t.bind(e1, c1, &ticket(c1, e1, 1), NOW),
            Ok(BindOutcome::New)
        );
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 100, now),
            Ok(Action::Forward(e1))
        );
        assert_eq!(
            t.route(e1, c1, MediaKind::Audio, 100, now),
            Ok(Action::Forward(e0))
        );
        assert_eq!(
            t.route(x, c0, MediaKind::Audio, 100, now),
            Err(DropReason::SpoofedSource)
        );
        // Same IP, other port: still spoofed until re-bound.
        assert_eq!(
            t.route(a("10.0.0.1:1001"), c0, MediaKind::Audio, 100, now),
            Err(DropReason::SpoofedSource)
        );
        // A ticket for c0 presented on c1, another IP, an expired one, a bad MAC.
        assert_eq!(
            t.bind(e1, c1, &ticket(c0, e1, 5), NOW),
            Err(DropReason::WrongChannel)
        );
        assert_eq!(
            t.bind(x, c0, &ticket(c0, e0, 5), NOW),
            Err(DropReason::Ticket(TicketError::WrongAddress))
        );
        assert_eq!(
            t.bind(e0, c0, &ticket(c0, e0, 5), NOW + 60),
            Err(DropReason::Ticket(TicketError::Expired {
                expires: NOW + 60,
                now: NOW + 60
            }))
        );
        let mut bad = ticket(c0, e0, 5);
        bad[53] ^= 1;
        assert_eq!(
            t.bind(e0, c0, &bad, NOW),
            Err(DropReason::Ticket(TicketError::BadMac))
        );
        // Unknown ids: out of range, never issued generation, released.
        assert_eq!(
            t.route(e0, c0 | 0xFFFF_FFF0, MediaKind::Audio, 1, now),
            Err(DropReason::UnknownChannel)
        );
        assert_eq!(
            t.route(e0, c0 + (2 << 32), MediaKind::Audio, 1, now),
            Err(DropReason::UnknownChannel)
        );
        assert!(t.release(c1));
        assert!(!t.release(c0), "already released");
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 1, now),
            Err(DropReason::UnknownChannel)
        );
        // The slot is reused with a new generation; the old ids stay dead.
        let [d0, _] = t.allocate(UNLIMITED).unwrap();
        assert_ne!(d0, c0);
        assert_eq!(
            t.bind(e0, c0, &ticket(c0, e0, 9), NOW),
            Err(DropReason::UnknownChannel)
        );
        assert_eq!(
            t.route(e0, d0, MediaKind::Audio, 1, now),
            Err(DropReason::Unbound)
        );
        let mut seen: Vec<_> = (0..DropReason::COUNT)
            .map(|i| DropReason::LABELS[i])
            .collect();
        seen.dedup();
        assert_eq!(seen.len(), DropReason::COUNT);
    }

    #[test]
    fn rebind_needs_a_fresher_ticket() {
        let t = table();
        let [c0, _] = t.allocate(UNLIMITED).unwrap();
        let old = a("10.0.0.1:1000");
        let moved = a("10.0.0.1:1001");
        let tk1 = ticket(c0, old, 1);
        assert_eq!(t.bind(old, c0, &tk1, NOW), Ok(BindOutcome::New));
        assert_eq!(t.bind(old, c0, &tk1, NOW), Ok(BindOutcome::Refreshed));
        assert_eq!(t.bind(moved, c0, &tk1, NOW), Err(DropReason::StaleTicket));
        assert_eq!(t.bound_addr(c0), Some(old));
        assert_eq!(
            t.bind(moved, c0, &ticket(c0, moved, 2), NOW),
            Ok(BindOutcome::Moved)
        );
        assert_eq!(t.bound_addr(c0), Some(moved));
        // The old address cannot take it back with its old ticket, nor with an equal seq.
        assert_eq!(t.bind(old, c0, &tk1, NOW), Err(DropReason::StaleTicket));
        assert_eq!(
            t.bind(old, c0, &ticket(c0, old, 2), NOW),
            Err(DropReason::StaleTicket)
        );
        // Unbound by its endpoint: nothing goes there, and only a newer ticket binds again.
        assert!(t.unbind(c0));
        assert!(!t.unbind(c0), "already unbound");
        assert_eq!(t.bound_addr(c0), None);
        assert_eq!(
            t.route(moved, c0, MediaKind::Audio, 1, Instant::now()),
            Err(DropReason::Unbound)
        );
        assert_eq!(
            t.bind(moved, c0, &ticket(c0, moved, 2), NOW),
            Err(DropReason::StaleTicket)
        );
        assert_eq!(
            t.bind(moved, c0, &ticket(c0, moved, 3), NOW),
            Ok(BindOutcome::New)
        );
    }

    #[test]
    fn rate_limits_per_endpoint_after_the_source_check() {
        let t = table();
        let now = Instant::now();
        let [c0, c1] = t
            .allocate(FastPathLimits {
                packets_per_sec: 3,
                bytes_per_sec: 1_000_000,
            })
            .unwrap();
        let (e0, e1) = (a("10.0.0.1:1"), a("10.0.0.2:2"));
        t.bind(e0, c0, &ticket(c0, e0, 0), NOW).unwrap();
        t.bind(e1, c1, &ticket(c1, e1, 0), NOW).unwrap();
        // Spoofed packets spend nothing.
        for _ in 0..10 {
            assert_eq!(
                t.route(a("10.9.9.9:9"), c0, MediaKind::Audio, 10, now),
                Err(DropReason::SpoofedSource)
            );
        }
        for _ in 0..3 {
            assert_eq!(
                t.route(e0, c0, MediaKind::Audio, 10, now),
                Ok(Action::Forward(e1))
            );
        }
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 10, now),
            Err(DropReason::RateLimited)
        );
        assert_eq!(
            t.route(e1, c1, MediaKind::Audio, 10, now),
            Ok(Action::Forward(e0)),
            "per endpoint"
        );
        let later = now + Duration::from_millis(400);
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 10, later),
            Ok(Action::Forward(e1))
        );
        // The endpoint's QUIC media draws on the same budget, and the other way round.
        let mut quic = t.budget(c0);
        assert!(!quic.admit(10, later), "spent by the fast path");
        let again = later + Duration::from_millis(340);
        assert!(quic.admit(10, again));
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 10, again),
            Err(DropReason::RateLimited),
            "spent by QUIC"
        );
        // Bytes: 1 MB/s, a 600 kB "packet" twice does not fit.
        let [b0, b1] = t
            .allocate(FastPathLimits {
                packets_per_sec: 1000,
                bytes_per_sec: 1_000_000,
            })
            .unwrap();
        t.bind(e0, b0, &ticket(b0, e0, 0), NOW).unwrap();
        t.bind(e1, b1, &ticket(b1, e1, 0), NOW).unwrap();
        assert_eq!(
            t.route(e0, b0, MediaKind::Audio, 600_000, now),
            Ok(Action::Forward(e1))
        );
        assert_eq!(
            t.route(e0, b0, MediaKind::Audio, 600_000, now),
            Err(DropReason::RateLimited)
        );
        assert_eq!(
            t.route(e0, b0, MediaKind::Audio, 400_000, now),
            Ok(Action::Forward(e1))
        );
    }

    #[test]
    fn process_never_forwards_binds_and_table_fills() {
        let t = ChannelTable::new(1, key());
        let [c0, _] = t.allocate(UNLIMITED).unwrap();
        assert!(t.allocate(UNLIMITED).is_none());
        let e0 = a("10.0.0.1:1");
        let pkt = FastPathTicket {
            channel: duet_proto::ChannelId(c0),
            ip: e0.ip(),
            expires_unix: NOW + 1,
            seq: 0,
        }
        .bind_packet(&key());
        let now = Instant::now();
        assert_eq!(
            t.process(e0, &pkt, now, NOW),
            Ok(Action::Bound {
                channel: c0,
                outcome: BindOutcome::New
            })
        );
        assert_eq!(t.bound_addr(c0), Some(e0));
        assert_eq!(
            t.process(e0, &[1, 1, 0], now, NOW),
            Err(DropReason::Header(FastPathHeaderError::Truncated(3)))
        );
    }
}

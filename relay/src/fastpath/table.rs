//! The fast path's channel table: which source address may send on which channel, and where
//! its packets go. Shared by every worker thread; the per-packet path takes no lock.
//!
//! Owns: the channel id layout, the binding rules, the forwarding decision ([`Verdict`]) and
//! the per-endpoint media budgets. A session gets a *pair* of channels (one per endpoint); a
//! channel id is `generation: u32 << 32 | pair_index << 1 | side`, so a lookup is an index and
//! a generation compare. Generations are odd while a pair is allocated and even once
//! released, so a stale or never-issued id never matches.
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
//! packet names. Budgets are charged only after the source check, so spoofed packets cannot
//! spend the real endpoint's budget. Each endpoint's budget is a [`MediaBudget`] (the one
//! limiter of `forward`), which its QUIC media is charged to as well ([`EndpointBudget`]).
//!
//! The API has no way to produce a reply: every verdict is a destination that is already a
//! bound peer, or a drop reason. Not owned here: sockets, counters, metrics export, minting
//! tickets, and deciding when a pair is allocated or released (the session core's job).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use duet_proto::fastpath::{FastPathHeader, FastPathKey, FastPathTicket, PacketType};
use duet_proto::{ChannelId, MediaKind};

use crate::forward::{Admission, DropReason, Epoch, MediaBudget, MediaLimits};

/// What a BIND did.
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

/// The table's verdict on one datagram that is not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the same bytes, unchanged, to this (bound peer) address.
    Forward(SocketAddr),
    /// The peer has no fast-path binding: it is on QUIC datagrams (or not there at all).
    /// Hand the payload after the header to the QUIC connection of `peer_channel`'s
    /// endpoint; only the control plane knows whether that endpoint is reachable.
    Bridge {
        peer_channel: ChannelId,
        kind: MediaKind,
    },
    /// A BIND was accepted on `channel`; nothing is sent on UDP.
    Bound {
        channel: ChannelId,
        outcome: BindOutcome,
    },
}

/// The pair index a channel id names (the index of the session's pair in the table).
#[inline]
pub fn channel_pair(channel: ChannelId) -> usize {
    ((channel.0 as u32) >> 1) as usize
}

/// The side (0 or 1, the session's slot A or B) a channel id names.
#[inline]
pub fn channel_side(channel: ChannelId) -> usize {
    (channel.0 & 1) as usize
}

/// The other endpoint's channel of the same pair.
#[inline]
pub fn peer_channel(channel: ChannelId) -> ChannelId {
    ChannelId(channel.0 ^ 1)
}

#[inline]
fn channel_id(generation: u32, pair: u32, side: u32) -> ChannelId {
    ChannelId((u64::from(generation) << 32) | u64::from(pair << 1 | side))
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
    budget: MediaBudget,
}

struct Pair {
    /// Odd while allocated.
    generation: AtomicU32,
    /// When a packet was last admitted on either side, ns since the table's epoch (0:
    /// never); the session core reads it to tell a live session from an idle one.
    last_activity_ns: AtomicU64,
    ends: [Endpoint; 2],
}

/// One endpoint's fast-path media budget, charged by its QUIC media too. A released channel
/// admits nothing.
#[derive(Debug, Clone, Copy)]
pub struct EndpointBudget<'a> {
    table: &'a ChannelTable,
    channel: ChannelId,
}

impl Admission for EndpointBudget<'_> {
    #[inline]
    fn admit(&self, len: usize, now: Instant) -> bool {
        match self.table.locate(self.channel) {
            Ok((pair, side, _)) => pair.ends[side].budget.admit(len, self.table.epoch.ns(now)),
            Err(_) => false,
        }
    }
}

/// The fixed-capacity table of channel pairs. See the module doc for the rules.
pub struct ChannelTable {
    pairs: Box<[Pair]>,
    free: Mutex<Vec<u32>>,
    key: FastPathKey,
    epoch: Epoch,
}

impl std::fmt::Debug for ChannelTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTable")
            .field("capacity", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

impl ChannelTable {
    /// A table of `capacity` sessions (pairs of channels), at most 2^31; tickets verified
    /// under `key`.
    pub fn new(capacity: u32, key: FastPathKey) -> Self {
        let capacity = capacity.min(1 << 31);
        let pairs = (0..capacity)
            .map(|_| Pair {
                generation: AtomicU32::new(0),
                last_activity_ns: AtomicU64::new(0),
                ends: Default::default(),
            })
            .collect();
        Self {
            pairs,
            free: Mutex::new((0..capacity).rev().collect()),
            key,
            // One second back, so a packet at start-up is not stamped "never" (0).
            epoch: Epoch::new(
                Instant::now()
                    .checked_sub(std::time::Duration::from_secs(1))
                    .unwrap_or_else(Instant::now),
            ),
        }
    }

    pub fn capacity(&self) -> usize {
        self.pairs.len()
    }

    /// Control plane: allocates a pair of channels for a session; `[slot A, slot B]`.
    /// `None` when the table is full. Takes a lock (not on the per-packet path).
    pub fn allocate(&self, limits: MediaLimits) -> Option<[ChannelId; 2]> {
        let idx = self.free.lock().ok()?.pop()?;
        let pair = &self.pairs[idx as usize];
        for e in &pair.ends {
            e.binding.store(None);
            e.budget.reset(limits);
        }
        pair.last_activity_ns.store(0, Ordering::Relaxed);
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
    pub fn release(&self, channel: ChannelId) -> bool {
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
            free.push(channel_pair(channel) as u32);
        }
        true
    }

    /// The media budget of the endpoint owning `channel`, for its media on the QUIC path:
    /// one budget per endpoint whichever transport it sends on.
    pub fn budget(&self, channel: ChannelId) -> EndpointBudget<'_> {
        EndpointBudget {
            table: self,
            channel,
        }
    }

    /// When a packet was last forwarded (or bridged) on the pair `channel` belongs to;
    /// `None` if never, or once released.
    pub fn last_activity(&self, channel: ChannelId) -> Option<Instant> {
        let (pair, _, _) = self.locate(channel).ok()?;
        match pair.last_activity_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch.instant(ns)),
        }
    }

    /// The bound address of `channel`, if any. Lock-free: the QUIC path asks it per packet
    /// to learn whether the receiving endpoint is on the fast path.
    pub fn bound_addr(&self, channel: ChannelId) -> Option<SocketAddr> {
        let (pair, side, generation) = self.locate(channel).ok()?;
        let b = pair.ends[side].binding.load();
        b.as_ref()
            .filter(|b| b.generation == generation)
            .and_then(|b| b.addr)
    }

    /// Control plane: the endpoint of `channel` asked to stop receiving on the fast path
    /// (its UDP path died). Keeps the seq; false when it had no binding.
    pub fn unbind(&self, channel: ChannelId) -> bool {
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
    fn locate(&self, channel: ChannelId) -> Result<(&Pair, usize, u32), DropReason> {
        let generation = (channel.0 >> 32) as u32;
        let pair = self
            .pairs
            .get(channel_pair(channel))
            .ok_or(DropReason::UnknownChannel)?;
        if generation & 1 == 0 || pair.generation.load(Ordering::Acquire) != generation {
            return Err(DropReason::UnknownChannel);
        }
        Ok((pair, channel_side(channel), generation))
    }

    /// Handles one datagram from `src`: parses the header, then binds or routes.
    /// `now` drives the budgets, `now_unix` (seconds) the ticket expiry.
    #[inline]
    pub fn process(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        now_unix: u64,
    ) -> Result<Verdict, DropReason> {
        let (header, payload) = FastPathHeader::parse(datagram)?;
        match header.ty {
            PacketType::Bind => self
                .bind(src, header.channel, payload, now_unix)
                .map(|outcome| Verdict::Bound {
                    channel: header.channel,
                    outcome,
                }),
            PacketType::Media(kind) => self.route(src, header.channel, kind, datagram.len(), now),
        }
    }

    /// The forwarding decision for a media packet of `kind` and `len` bytes (whole datagram)
    /// from `src` on `channel`: the peer's bound address, the bridge to QUIC, or why not.
    /// Lock-free, no allocation.
    #[inline]
    pub fn route(
        &self,
        src: SocketAddr,
        channel: ChannelId,
        kind: MediaKind,
        len: usize,
        now: Instant,
    ) -> Result<Verdict, DropReason> {
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
        let now_ns = self.epoch.ns(now);
        if !me.budget.admit(len, now_ns) {
            return Err(DropReason::RateLimited);
        }
        pair.last_activity_ns.store(now_ns, Ordering::Relaxed);
        let peer = pair.ends[side ^ 1].binding.load();
        Ok(match peer.as_deref() {
            Some(Binding {
                addr: Some(addr),
                generation: g,
                ..
            }) if *g == generation => Verdict::Forward(*addr),
            _ => Verdict::Bridge {
                peer_channel: peer_channel(channel),
                kind,
            },
        })
    }

    /// A BIND from `src` on `channel` carrying `ticket` (the bytes after the header).
    /// Allocates one small binding on success (binds are rare; media never allocates).
    pub fn bind(
        &self,
        src: SocketAddr,
        channel: ChannelId,
        ticket: &[u8],
        now_unix: u64,
    ) -> Result<BindOutcome, DropReason> {
        let t = FastPathTicket::verify(ticket, &self.key, src.ip(), now_unix)?;
        if t.channel != channel {
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
#[path = "table_tests.rs"]
mod tests;

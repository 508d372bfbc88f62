//! One connection's QUIC media datagrams: read, stamp the session's activity, decide
//! (`forward::forward_step`), hand the same `Bytes` to the peer's connection, or, when the
//! peer is bound on the fast path, send it there (QUIC -> fast path).
//!
//! Owns the per-datagram loop and its counters. No lock, no allocation, no log line per
//! datagram; the budget is the endpoint's one budget (the channel table's when the relay has
//! a fast path, so both transports draw on it). It also notices a migrated connection (a
//! new peer address) for the core, reading the address at most every `PATH_CHECK`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::MEDIA_HEADER_LEN;
use tokio::sync::oneshot;

use super::driver::{Driver, MediaRoute};
use crate::fastpath::EndpointBudget;
use crate::forward::{forward_step, Admission, DropReason, MediaLimiter};
use crate::session::ConnId;

/// Where an endpoint's QUIC media is charged.
enum Budget<'a> {
    /// No fast path: a budget of its own.
    Own(MediaLimiter),
    /// Its fast-path channel's budget.
    Channel(EndpointBudget<'a>),
}

impl Admission for Budget<'_> {
    #[inline]
    fn admit(&self, len: usize, now: Instant) -> bool {
        match self {
            Self::Own(l) => l.admit(len, now),
            Self::Channel(b) => b.admit(len, now),
        }
    }
}

/// How often, at most, a connection carrying media is checked for a new peer address (QUIC
/// migration, which quinn validates and follows by itself): reading it takes quinn's
/// connection lock, which the per-datagram loop must not take each time.
const PATH_CHECK: Duration = Duration::from_millis(250);

/// Reads media datagrams and hands them to the peer. Before the connection joins, every
/// datagram is dropped as `before_join`. A changed peer address is told to the core
/// (`handle_remote`) within [`PATH_CHECK`] of the next datagram.
pub(crate) async fn media_loop(
    driver: Arc<Driver>,
    id: ConnId,
    conn: quinn::Connection,
    mut joined: oneshot::Receiver<MediaRoute>,
) {
    let m = driver.metrics.clone();
    let before_join = m.media_dropped(DropReason::BeforeJoin).clone();
    let (session, slot) = loop {
        // Joined goes out only after the route was handed over, so a datagram the endpoint
        // sends on reading Joined finds the route here: look at it first.
        tokio::select! {
            biased;
            r = &mut joined => match r {
                Ok(v) => break v,
                Err(_) => return,
            },
            d = conn.read_datagram() => match d {
                Ok(_) => before_join.increment(1),
                Err(_) => return,
            },
        }
    };
    let peer = &session.slots[slot.other().index()];
    // (service, this endpoint's channel, the peer's channel): QUIC media to a peer bound on
    // the fast path leaves on the fast path.
    let fast_path = driver
        .fast_path
        .as_deref()
        .zip(session.fast_path)
        .map(|(fp, c)| (fp, c[slot.index()], c[slot.other().index()]));
    let l = &driver.cfg.limits;
    let budget = match fast_path {
        Some((fp, mine, _)) => Budget::Channel(fp.table().budget(mine)),
        None => Budget::Own(MediaLimiter::new(
            l.media_packets_per_sec,
            l.media_bytes_per_sec,
            Instant::now(),
        )),
    };
    let bridged = &m.fast_path.bridged_to_fastpath;
    let send_failed = m.media_dropped(DropReason::SendFailed).clone();
    let send_too_large = m.media_dropped(DropReason::TooLargeForPeer).clone();
    let mut remote = conn.remote_address();
    let mut next_path_check = Instant::now() + PATH_CHECK;
    loop {
        let Ok(d) = conn.read_datagram().await else {
            return;
        };
        let now = Instant::now();
        session.activity.stamp(now);
        if now >= next_path_check {
            next_path_check = now + PATH_CHECK;
            let r = conn.remote_address();
            if r != remote {
                remote = r;
                driver.input(|core| core.handle_remote(id, r));
            }
        }
        match forward_step(&d, &budget, peer, now) {
            Ok((kind, to)) => {
                if let Some((fp, mine, theirs)) = fast_path {
                    if let Some(addr) = fp.table().bound_addr(theirs) {
                        let body = d.get(MEDIA_HEADER_LEN..).unwrap_or_default();
                        if fp.send_bridged(addr, kind, mine, body) {
                            bridged.increment(1);
                        } else {
                            send_failed.increment(1);
                        }
                        continue;
                    }
                }
                let len = d.len() as u64;
                let Some(to) = to.as_ref() else { continue };
                match to.conn.send_datagram(d) {
                    Ok(()) => {
                        m.forwarded_packets[kind.index()].increment(1);
                        m.forwarded_bytes[kind.index()].increment(len);
                    }
                    Err(quinn::SendDatagramError::TooLarge) => send_too_large.increment(1),
                    Err(_) => send_failed.increment(1),
                }
            }
            Err(r) => m.media_dropped(r).increment(1),
        }
    }
}

//! What the control plane (the session core) asks of the fast path: a pair of channels per
//! session, released when it ends, an endpoint's unbind, the pair's last activity, and offers
//! (a bind ticket for a channel, an IP and a sequence number).
//!
//! Owns the offer's contents and the ticket key's use; pure computation over the shared
//! channel table (no sockets, no clock: callers pass `now_unix`), so the session core stays
//! sans-IO and its tests use a real table. It does not decide when a pair is allocated or
//! which seq a ticket gets (the session core), nor verify tickets (the table).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duet_proto::fastpath::{FastPathKey, FastPathTicket};
use duet_proto::{ChannelId, FastPathOffer};

use super::table::ChannelTable;

/// The fast path as the session core sees it. Cheap to clone (shared table, key bytes).
#[derive(Clone)]
pub struct FastPathPlane {
    table: Arc<ChannelTable>,
    key: FastPathKey,
    port: u16,
    advertise: Option<SocketAddr>,
    ticket_ttl: Duration,
}

impl std::fmt::Debug for FastPathPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPathPlane")
            .field("port", &self.port)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

impl FastPathPlane {
    /// `table` verifies tickets under `key`; offers name `port` (or `advertise`) and last
    /// `ticket_ttl`.
    pub fn new(
        table: Arc<ChannelTable>,
        key: FastPathKey,
        port: u16,
        advertise: Option<SocketAddr>,
        ticket_ttl: Duration,
    ) -> Self {
        Self {
            table,
            key,
            port,
            advertise,
            ticket_ttl,
        }
    }

    pub fn table(&self) -> &ChannelTable {
        &self.table
    }

    /// An offer for `channel`, binding from `ip` (where the QUIC connection comes from),
    /// with sequence number `seq` (higher than every earlier ticket of that channel).
    pub fn offer(&self, channel: ChannelId, ip: IpAddr, seq: u32, now_unix: u64) -> FastPathOffer {
        let expires_unix = now_unix.saturating_add(self.ticket_ttl.as_secs());
        let ticket = FastPathTicket {
            channel,
            ip,
            expires_unix,
            seq,
        }
        .encode(&self.key);
        FastPathOffer {
            addr: self.advertise,
            port: self.port,
            channel,
            ticket: Bytes::copy_from_slice(&ticket),
            expires_unix,
        }
    }
}

//! Fast path -> QUIC: what a fast-path worker reaches when the receiving endpoint is not
//! bound on the fast path (its QUIC connection), and where a bind confirmation goes.
//!
//! Owns the table of session routes indexed like the channel table (a lookup is an index and
//! a load, no lock), written only by the driver as sessions open and close. The other
//! direction (QUIC media to a peer bound on the fast path) is in `media`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::{BufMut, BytesMut};
use duet_proto::{ChannelId, MediaHeader, MediaKind, RelayMessage, MEDIA_HEADER_LEN};

use super::driver::{Link, Outgoing, SessionLinks};
use crate::fastpath::{channel_pair, channel_side, BindOutcome, ControlPlane};
use crate::forward::DropReason;

/// The session behind each channel pair.
pub(crate) struct Bridge {
    sessions: Box<[ArcSwapOption<SessionLinks>]>,
}

impl Bridge {
    pub fn new(capacity: usize) -> Self {
        Self {
            sessions: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    /// A session with channels begins.
    pub fn open(&self, s: &Arc<SessionLinks>) {
        if let Some(entry) = s
            .fast_path
            .and_then(|c| self.sessions.get(channel_pair(c[0])))
        {
            entry.store(Some(s.clone()));
        }
    }

    /// The session ended; its entry is cleared unless a newer session already took the pair.
    pub fn close(&self, s: &Arc<SessionLinks>) {
        if let Some(entry) = s
            .fast_path
            .and_then(|c| self.sessions.get(channel_pair(c[0])))
        {
            let current = entry.load();
            if current.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, s)) {
                entry.store(None);
            }
        }
    }

    /// The QUIC side of the endpoint owning `channel`, if that channel is still live.
    fn endpoint(&self, channel: ChannelId) -> Option<Arc<Link>> {
        let s = self.sessions.get(channel_pair(channel))?.load_full()?;
        let side = channel_side(channel);
        if s.fast_path?[side] != channel {
            return None;
        }
        s.slots[side].load_full()
    }
}

impl ControlPlane for Bridge {
    fn bridge_to_quic(
        &self,
        channel: ChannelId,
        kind: MediaKind,
        payload: &[u8],
    ) -> Result<(), DropReason> {
        let peer = self.endpoint(channel).ok_or(DropReason::NoPeer)?;
        // quinn takes owned bytes: the one allocation of a bridged packet.
        let mut d = BytesMut::with_capacity(MEDIA_HEADER_LEN + payload.len());
        d.put_slice(&MediaHeader::new(kind).to_bytes());
        d.put_slice(payload);
        peer.conn
            .send_datagram(d.freeze())
            .map_err(|_| DropReason::SendFailed)
    }

    fn bound(&self, channel: ChannelId, addr: SocketAddr, outcome: BindOutcome) {
        // A refresh from the same address changes nothing the endpoint needs to hear.
        if outcome == BindOutcome::Refreshed {
            return;
        }
        if let Some(peer) = self.endpoint(channel) {
            if let Some(out) = Outgoing::msg(&RelayMessage::FastPathBound { channel, addr }) {
                peer.notify(out);
            }
        }
    }
}

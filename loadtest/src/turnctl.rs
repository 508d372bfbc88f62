//! TURN control for the udp bench's `turn` target: per endpoint one allocation on the TURN
//! server (Allocate with the 401 realm/nonce exchange, long-term credential
//! MESSAGE-INTEGRITY), then a permission for and a channel bound to its peer's relayed
//! address, all over the endpoint's own UDP socket.
//!
//! The TURN protocol itself is `turn-client-proto` (sans-IO: `recv` in, `poll_transmit` /
//! `poll_event` out, `now` passed in): this module only moves its datagrams between many
//! clients and their endpoints' addresses ([`Net`]) during set-up, a chunk of pairs at a
//! time, bounded in time, and reads the outcome. The data plane is not here: once bound, an endpoint's media is
//! ChannelData (RFC 8656 §12.4: channel number and length, then the payload), written by the
//! raw engine with the 4-byte [`Bound::header`] taken from the client's own encoding.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use turn_client_proto::api::{TurnConfig, TurnEvent, TurnPollRet};
use turn_client_proto::prelude::*;
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::Instant;
use turn_client_proto::types::channel::ChannelData;
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

use crate::cli::TurnUser;
use crate::udp;
use crate::udpnet::Net;

/// Bytes of the ChannelData header in front of every relayed payload.
pub const CHANNEL_HEADER_LEN: usize = 4;
/// Pairs set up at once: bounds the requests in flight at the server and the sockets each
/// driving round reads.
const CHUNK_PAIRS: usize = 256;
/// Longest a chunk's phase (allocations, or permissions and channels) may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an endpoint could not be set up (the `setup.failures` label is [`Self::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnSetupError {
    #[error("the server refused the allocation")]
    Allocate,
    #[error("the server refused the permission")]
    Permission,
    #[error("the server refused the channel binding")]
    Channel,
    #[error("no answer in time")]
    Timeout,
    #[error("the client closed (its requests went unanswered)")]
    Closed,
    #[error("the peer's allocation failed")]
    PeerFailed,
    #[error("the client does not send over a channel")]
    NoChannel,
}

impl TurnSetupError {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allocate => "allocate",
            Self::Permission => "permission",
            Self::Channel => "channel_bind",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::PeerFailed => "peer_failed",
            Self::NoChannel => "no_channel",
        }
    }
}

/// One endpoint's channel, ready for media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// This endpoint's relayed address on the server.
    pub relayed: SocketAddr,
    /// Its peer's relayed address, where its channel leads.
    pub peer: SocketAddr,
    /// ChannelData header (channel number, length) of a `payload_len` payload on this
    /// endpoint's channel: what it sends and, the server using the receiver's own channel
    /// number for the sender, what it receives.
    pub header: [u8; CHANNEL_HEADER_LEN],
}

#[derive(Debug)]
struct Ep {
    client: TurnClientUdp,
    relayed: Option<SocketAddr>,
    permission: bool,
    channel: bool,
    failed: Option<TurnSetupError>,
}

impl Ep {
    fn on_event(&mut self, ev: TurnEvent) {
        match ev {
            TurnEvent::AllocationCreated(TransportType::Udp, a) => self.relayed = Some(a),
            TurnEvent::AllocationCreateFailed(_) => self.fail(TurnSetupError::Allocate),
            TurnEvent::PermissionCreated(..) => self.permission = true,
            TurnEvent::PermissionCreateFailed(..) => self.fail(TurnSetupError::Permission),
            TurnEvent::ChannelCreated(..) => self.channel = true,
            TurnEvent::ChannelCreateFailed(..) => self.fail(TurnSetupError::Channel),
            _ => {}
        }
    }

    fn fail(&mut self, e: TurnSetupError) {
        self.failed.get_or_insert(e);
    }
}

/// The clients of a run, kept for [`TurnSetup::release`].
#[derive(Debug)]
pub struct TurnSetup {
    eps: Vec<Ep>,
}

/// The sans-IO clients' clock: CLOCK_MONOTONIC, like every stamp of the bench.
fn now() -> Instant {
    Instant::from_nanos(udp::now_ns() as i64)
}

/// Sets up every pair (endpoints `2i`, `2i + 1` of `net`) on the TURN server `server` as
/// `cred`: both allocate, then each permits and binds a channel to the other's relayed
/// address. Returns the clients and, per endpoint, its channel or why it has none.
/// `payload_len` is the ChannelData payload the data plane will send (the header's length).
pub fn setup_pairs(
    net: &Net,
    server: SocketAddr,
    cred: &TurnUser,
    payload_len: usize,
) -> (TurnSetup, Vec<Result<Bound, TurnSetupError>>) {
    let credentials = TurnCredentials::new(&cred.user, &cred.password);
    let mut eps: Vec<Ep> = (0..net.endpoints())
        .map(|e| Ep {
            client: TurnClientUdp::allocate(
                SocketAddr::V4(net.local(e)),
                server,
                TurnConfig::new(credentials.clone()),
            ),
            relayed: None,
            permission: false,
            channel: false,
            failed: None,
        })
        .collect();
    let mut out = Vec::with_capacity(eps.len());
    for start in (0..eps.len()).step_by(2 * CHUNK_PAIRS) {
        let chunk = start..(start + 2 * CHUNK_PAIRS).min(eps.len());
        drive(&mut eps, net, chunk.clone(), |ep| ep.relayed.is_some());
        for p in chunk.clone().step_by(2) {
            let (a, b) = (eps[p].relayed, eps[p + 1].relayed);
            for (side, peer) in [(p, b), (p + 1, a)] {
                let ep = &mut eps[side];
                match peer {
                    Some(peer) if ep.failed.is_none() => {
                        let t = now();
                        let ok = ep
                            .client
                            .create_permission(TransportType::Udp, peer.ip(), t)
                            .is_ok()
                            && ep.client.bind_channel(TransportType::Udp, peer, t).is_ok();
                        if !ok {
                            ep.fail(TurnSetupError::Channel);
                        }
                    }
                    _ => ep.fail(TurnSetupError::PeerFailed),
                }
            }
        }
        drive(&mut eps, net, chunk.clone(), |ep| {
            ep.permission && ep.channel
        });
        for p in chunk {
            let peer = eps[p ^ 1].relayed;
            out.push(bound(&mut eps[p], peer, payload_len));
        }
    }
    (TurnSetup { eps }, out)
}

/// The endpoint's channel, with the header its client writes for a `payload_len` payload.
fn bound(
    ep: &mut Ep,
    peer: Option<SocketAddr>,
    payload_len: usize,
) -> Result<Bound, TurnSetupError> {
    if let Some(e) = ep.failed {
        return Err(e);
    }
    let (Some(relayed), Some(peer)) = (ep.relayed, peer) else {
        return Err(TurnSetupError::PeerFailed);
    };
    let payload = vec![0u8; payload_len];
    let sent = ep
        .client
        .send_to(TransportType::Udp, peer, payload.as_slice(), now());
    let Ok(Some(t)) = sent else {
        return Err(TurnSetupError::NoChannel);
    };
    let data = t.build().data;
    match ChannelData::parse(&data) {
        Ok(c) if c.data().len() == payload_len => {
            let mut header = [0u8; CHANNEL_HEADER_LEN];
            header.copy_from_slice(&data[..CHANNEL_HEADER_LEN]);
            Ok(Bound {
                relayed,
                peer,
                header,
            })
        }
        _ => Err(TurnSetupError::NoChannel),
    }
}

/// Moves datagrams between the clients of `chunk` and their addresses until `done` holds
/// for every one that has not failed, or [`PHASE_TIMEOUT`] (the rest fail with `Timeout`).
fn drive(eps: &mut [Ep], net: &Net, chunk: Range<usize>, done: impl Fn(&Ep) -> bool) {
    let deadline = udp::now_ns() + PHASE_TIMEOUT.as_nanos() as u64;
    let sockets = net.sockets_of(chunk.clone());
    let mut buf = vec![0u8; udp::MAX_PACKET];
    loop {
        let mut moved = false;
        for &s in &sockets {
            // A socket error ends this round's reads; the clients retransmit.
            while let Ok(Some(r)) = net.recv_from(s, &mut buf) {
                moved = true;
                let Some(ep) = r.endpoint.and_then(|e| eps.get_mut(e)) else {
                    continue;
                };
                let to = ep.client.local_addr();
                let t = Transmit::new(&buf[..r.len], TransportType::Udp, r.from, to);
                // Ignored or peer data during set-up: nothing to do with it.
                let _ = ep.client.recv(t, now());
            }
        }
        for e in chunk.clone() {
            let ep = &mut eps[e];
            if ep.failed.is_some() {
                continue;
            }
            let t = now();
            if let TurnPollRet::Closed = ep.client.poll(t) {
                ep.fail(TurnSetupError::Closed);
            }
            while let Some(tx) = ep.client.poll_transmit(t) {
                moved = true;
                // A refused send is a lost datagram: the client retransmits.
                let _ = net.send_to(e, tx.data.as_ref(), tx.to);
            }
            while let Some(ev) = ep.client.poll_event() {
                ep.on_event(ev);
            }
        }
        let eps = &mut eps[chunk.clone()];
        if eps.iter().all(|e| e.failed.is_some() || done(e)) {
            return;
        }
        if udp::now_ns() > deadline || udp::STOP.load(std::sync::atomic::Ordering::Relaxed) {
            for e in eps.iter_mut().filter(|e| !done(e)) {
                e.fail(TurnSetupError::Timeout);
            }
            return;
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl TurnSetup {
    /// Deletes every allocation (a Refresh with lifetime 0 from each endpoint's address), so
    /// the server frees its relay ports now rather than when they expire. Best effort: the
    /// answers are not awaited.
    pub fn release(mut self, net: &Net) {
        let t = now();
        for (e, ep) in self.eps.iter_mut().enumerate() {
            if ep.relayed.is_none() || ep.client.delete(t).is_err() {
                continue;
            }
            while let Some(tx) = ep.client.poll_transmit(t) {
                let _ = net.send_to(e, tx.data.as_ref(), tx.to);
            }
        }
    }
}

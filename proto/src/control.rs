//! Control-plane messages and their framing on the one bidirectional QUIC stream.
//!
//! Framing: `length: u32 big-endian | body`, the body a postcard-encoded message.
//! `FrameDecoder` is a sans-IO incremental decoder: feed it whatever bytes the stream
//! yielded, take out whole messages, get a typed error for oversized, empty, unknown or
//! malformed frames. This module does not own the session rules (which message is valid
//! when): that is the relay's session state machine.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ids::SessionId;
use crate::refusal::{E2eeClaim, EndReason, Feature, PeerLeftReason, RefusalReason};

/// ALPN protocol id of Duet's control connection.
pub const ALPN: &[u8] = b"duet/1";

/// Largest control frame body either side accepts, in bytes.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

const LEN_PREFIX: usize = 4;

/// Secret the relay gives an endpoint at join so the same device can take its slot back
/// on a new connection (after a network change or a crash). 32 random bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeSecret(pub [u8; 32]);

impl std::fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeSecret(..)")
    }
}

/// Which of the session's two places an endpoint holds: the first to join gets `A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }
}

/// The limits the relay enforces on this endpoint, told at join so the SDK can stay inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest `Signal` payload, bytes.
    pub max_signal_bytes: u32,
    /// `Signal` messages per second (sustained; a burst of the same size is allowed).
    pub signals_per_sec: u32,
    /// Media datagrams per second.
    pub media_packets_per_sec: u32,
    /// Media bytes per second.
    pub media_bytes_per_sec: u64,
    /// Session ends when neither endpoint sent anything for this long.
    pub idle_timeout_ms: u64,
    /// Session ends this long after it began, whatever happens.
    pub max_session_secs: u64,
    /// How long a lost endpoint's slot is kept for it to resume.
    pub resume_window_ms: u64,
}

/// Answer to a successful `Join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub session: SessionId,
    pub slot: Slot,
    /// The other endpoint is already in the session.
    pub peer_present: bool,
    /// This join took back a slot with its resume secret.
    pub resumed: bool,
    pub limits: Limits,
    /// Present to resume this slot on a new connection.
    pub resume: ResumeSecret,
    /// The raw-UDP fast path for this endpoint, when the relay serves one.
    pub fast_path: Option<FastPathOffer>,
}

/// How one endpoint reaches the relay's raw-UDP fast path: where to send, which channel to
/// name, and the ticket that binds its source address to that channel.
///
/// The endpoint sends `header(BIND, channel) | ticket` from the UDP socket it will use for
/// media; the relay never answers on UDP and confirms with `FastPathBound` on the control
/// stream. A ticket binds only from the IP address the relay saw this connection come from,
/// and only until `expires_unix`; a move to another source address needs a fresh ticket
/// (`ClientMessage::FastPathTicket`), which carries a higher sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathOffer {
    /// The fast-path address when it is not the QUIC address's IP with `port`
    /// (a relay behind a load balancer or NAT advertises it).
    pub addr: Option<std::net::SocketAddr>,
    /// The fast-path UDP port on the IP the QUIC connection reached.
    pub port: u16,
    /// This endpoint's channel: every fast-path packet it sends names it.
    pub channel: crate::fastpath::ChannelId,
    /// The bind ticket, opaque to the endpoint (`fastpath::TICKET_LEN` bytes).
    pub ticket: Bytes,
    /// Unix seconds from which the ticket no longer binds.
    pub expires_unix: u64,
}

impl FastPathOffer {
    /// The fast-path address for a connection that reached the relay at `quic_remote`.
    pub fn target(&self, quic_remote: std::net::SocketAddr) -> std::net::SocketAddr {
        self.addr
            .unwrap_or_else(|| std::net::SocketAddr::new(quic_remote.ip(), self.port))
    }

    /// The BIND datagram: `header(BIND, channel) | ticket`. `None` when the ticket is not
    /// `TICKET_LEN` bytes (a relay bug or a corrupted offer; the endpoint stays on QUIC).
    pub fn bind_packet(&self) -> Option<[u8; crate::fastpath::BIND_PACKET_LEN]> {
        crate::fastpath::bind_packet_from(self.channel, &self.ticket)
    }
}

/// Messages from an endpoint to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Must be the first message. `session` is the session the app means to join; the
    /// token must be for it.
    Join {
        session: SessionId,
        token: String,
        resume: Option<ResumeSecret>,
        /// This endpoint encrypts end to end (the SDK's `join_e2ee`). A token whose claim
        /// is `required` is refused (`E2eeRequired`) on a join that does not say so.
        e2ee: bool,
    },
    /// Opaque bytes for the other endpoint (the SDKs' key agreement). The relay cannot
    /// read them and forwards them verbatim.
    Signal(Bytes),
    /// Asks for a call feature; on an E2EE relay the answer is always a refusal.
    Request(Feature),
    /// Leaves the session for good.
    Leave,
    /// Liveness probe; the relay answers `Pong` with the same value.
    Ping(u64),
    /// Asks for a fresh fast-path ticket (higher sequence number), to bind a new source
    /// address after a network change or to refresh before the old one expires. Answered
    /// with `FastPathTicket`, or `Dropped(FastPathUnavailable)` when the relay has none.
    FastPathTicket,
    /// Stops the relay sending this endpoint's media over the fast path (its UDP path died
    /// or it gave up binding): from now on it gets media over QUIC datagrams until a newer
    /// ticket binds again. Never answered.
    FastPathUnbind,
}

/// Messages from the relay to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayMessage {
    Joined(Joined),
    /// The join was refused; the relay closes the connection after this.
    Refused(RefusalReason),
    /// A `Request(feature)` was refused.
    FeatureRefused {
        feature: Feature,
        reason: RefusalReason,
    },
    PeerJoined,
    PeerLeft(PeerLeftReason),
    /// The peer's connection was lost or replaced; its slot is kept for it to resume.
    PeerReconnecting,
    /// The peer is back on a new connection; the call carries on without a new handshake.
    PeerResumed,
    /// The peer tried to join but its token forbids E2EE, so the relay refused it. Carries
    /// that token as the peer presented it: the backend-signed proof of the decision, which
    /// the SDK verifies (the relay cannot forge one; `claim` alone would be the relay's word).
    PeerE2eeUnavailable {
        claim: E2eeClaim,
        token: String,
    },
    /// Opaque bytes from the other endpoint.
    Signal(Bytes),
    /// One of this endpoint's messages was dropped (too large, rate limited, ...).
    Dropped(RefusalReason),
    Pong(u64),
    /// The relay ends the session; the connection closes after this.
    SessionEnded(EndReason),
    /// A fresh fast-path offer, answering `ClientMessage::FastPathTicket`.
    FastPathTicket(FastPathOffer),
    /// A BIND from `addr` took effect on `channel`: from now on the relay sends this
    /// endpoint's media to `addr` over the fast path (not over QUIC datagrams).
    FastPathBound {
        channel: crate::fastpath::ChannelId,
        addr: std::net::SocketAddr,
    },
    /// The relay is draining: move the call to the next node of the token now (it ends this
    /// session at the latest in `deadline_ms`).
    Draining {
        deadline_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("control frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("empty control frame")]
    EmptyFrame,
    #[error("unknown control message type {0}")]
    UnknownType(u8),
    #[error("malformed control message: {0}")]
    Malformed(String),
    #[error("message of {0} bytes is too large to encode")]
    EncodeTooLarge(usize),
}

impl CodecError {
    /// Stable metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::EmptyFrame => "empty_frame",
            Self::UnknownType(_) => "unknown_type",
            Self::Malformed(_) => "malformed",
            Self::EncodeTooLarge(_) => "encode_too_large",
        }
    }
}

/// Number of variants each message enum has: a first body byte at or past it is a message
/// type this build does not know, told apart from a malformed known message.
pub trait MessageTypes {
    const VARIANTS: u8;
}
impl MessageTypes for ClientMessage {
    const VARIANTS: u8 = 7;
}
impl MessageTypes for RelayMessage {
    const VARIANTS: u8 = 15;
}

/// Encodes one message as a length-prefixed frame.
pub fn encode<M: Serialize>(msg: &M) -> Result<Bytes, CodecError> {
    let body = postcard::to_stdvec(msg).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if body.len() > MAX_CONTROL_FRAME {
        return Err(CodecError::EncodeTooLarge(body.len()));
    }
    let mut out = BytesMut::with_capacity(LEN_PREFIX + body.len());
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

/// Decodes one frame body (without its length prefix).
pub fn decode_body<M: DeserializeOwned + MessageTypes>(body: &[u8]) -> Result<M, CodecError> {
    let Some(&first) = body.first() else {
        return Err(CodecError::EmptyFrame);
    };
    // postcard writes the variant index as a varint; below 128 it is that one byte.
    if first >= M::VARIANTS && first < 0x80 {
        return Err(CodecError::UnknownType(first));
    }
    match postcard::take_from_bytes::<M>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    }
}

/// Incremental decoder of length-prefixed frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_CONTROL_FRAME)
    }
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max: max_frame,
        }
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next whole frame's body out, if one is buffered. An oversized length is
    /// reported as soon as the prefix arrives, before any of its body is buffered.
    pub fn next_body(&mut self) -> Result<Option<Bytes>, CodecError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(CodecError::FrameTooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(CodecError::EmptyFrame);
        }
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Takes the next whole message out, if one is buffered.
    pub fn next_message<M: DeserializeOwned + MessageTypes>(
        &mut self,
    ) -> Result<Option<M>, CodecError> {
        match self.next_body()? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use proptest::prelude::*;

    fn sample_relay_messages() -> Vec<RelayMessage> {
        let limits = Limits {
            max_signal_bytes: 16384,
            signals_per_sec: 20,
            media_packets_per_sec: 2000,
            media_bytes_per_sec: 4_000_000,
            idle_timeout_ms: 30_000,
            max_session_secs: 14_400,
            resume_window_ms: 10_000,
        };
        vec![
            RelayMessage::Joined(Joined {
                session: SessionId::new("s1").unwrap(),
                slot: Slot::B,
                peer_present: true,
                resumed: false,
                limits,
                resume: ResumeSecret([7; 32]),
                fast_path: Some(FastPathOffer {
                    addr: None,
                    port: 4434,
                    channel: crate::fastpath::ChannelId(0x1_0000_0003),
                    ticket: Bytes::from(vec![5u8; crate::fastpath::TICKET_LEN]),
                    expires_unix: 1_800_000_000,
                }),
            }),
            RelayMessage::Refused(RefusalReason::SessionFull),
            RelayMessage::FeatureRefused {
                feature: Feature::Recording,
                reason: RefusalReason::PlaintextRequired,
            },
            RelayMessage::PeerJoined,
            RelayMessage::PeerLeft(PeerLeftReason::Left),
            RelayMessage::PeerReconnecting,
            RelayMessage::PeerResumed,
            RelayMessage::PeerE2eeUnavailable {
                claim: E2eeClaim::ComplianceRecording,
                token: "duet2.k.c.s".into(),
            },
            RelayMessage::Signal(Bytes::from_static(b"hello")),
            RelayMessage::Dropped(RefusalReason::RateLimited),
            RelayMessage::Pong(9),
            RelayMessage::SessionEnded(EndReason::IdleTimeout),
            RelayMessage::FastPathTicket(FastPathOffer {
                addr: Some("[2001:db8::1]:4434".parse().unwrap()),
                port: 4434,
                channel: crate::fastpath::ChannelId(7),
                ticket: Bytes::from(vec![1u8; crate::fastpath::TICKET_LEN]),
                expires_unix: 5,
            }),
            RelayMessage::FastPathBound {
                channel: crate::fastpath::ChannelId(7),
                addr: "127.0.0.1:5000".parse().unwrap(),
            },
            RelayMessage::Draining {
                deadline_ms: 30_000,
            },
        ]
    }

    #[test]
    fn every_relay_message_roundtrips_through_the_decoder() {
        let msgs = sample_relay_messages();
        let mut dec = FrameDecoder::default();
        for m in &msgs {
            dec.extend(&encode(m).unwrap());
        }
        for m in &msgs {
            assert_eq!(
                dec.next_message::<RelayMessage>().unwrap().as_ref(),
                Some(m)
            );
        }
        assert_eq!(dec.next_message::<RelayMessage>().unwrap(), None);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn variant_counts_match_the_enums() {
        // The last variant's index must be VARIANTS - 1: catches an enum grown without
        // updating MessageTypes.
        let last = encode(&RelayMessage::Draining { deadline_ms: 5 }).unwrap();
        assert_eq!(last[4], RelayMessage::VARIANTS - 1);
        let last = encode(&ClientMessage::FastPathUnbind).unwrap();
        assert_eq!(last[4], ClientMessage::VARIANTS - 1);
    }

    #[test]
    fn typed_errors_for_bad_frames() {
        let mut dec = FrameDecoder::new(100);
        dec.extend(&1000u32.to_be_bytes());
        assert_eq!(
            dec.next_body(),
            Err(CodecError::FrameTooLarge {
                len: 1000,
                max: 100
            })
        );

        let mut dec = FrameDecoder::default();
        dec.extend(&0u32.to_be_bytes());
        assert_eq!(dec.next_body(), Err(CodecError::EmptyFrame));

        let mut dec = FrameDecoder::default();
        dec.extend(&[0, 0, 0, 1, 42]);
        assert_eq!(
            dec.next_message::<ClientMessage>(),
            Err(CodecError::UnknownType(42))
        );

        // A Join whose body stops half-way.
        let full = encode(&ClientMessage::Join {
            session: SessionId::new("abc").unwrap(),
            token: "t".repeat(40),
            resume: None,
            e2ee: true,
        })
        .unwrap();
        let body = &full[4..full.len() - 10];
        assert!(matches!(
            decode_body::<ClientMessage>(body),
            Err(CodecError::Malformed(_))
        ));
        // Trailing garbage after a whole message.
        let mut ping = encode(&ClientMessage::Ping(5)).unwrap()[4..].to_vec();
        ping.push(0);
        assert!(matches!(
            decode_body::<ClientMessage>(&ping),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn ids_are_validated_on_the_wire() {
        // A Join whose session id has a space: encode by hand as postcard would.
        let mut body = vec![0u8]; // Join
        body.push(3);
        body.extend_from_slice(b"a b");
        body.push(1);
        body.push(b't');
        body.push(0); // resume: None
        body.push(1); // e2ee: true
        assert!(matches!(
            decode_body::<ClientMessage>(&body),
            Err(CodecError::Malformed(_))
        ));
    }

    fn arb_client_message() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            (
                "[a-z0-9]{1,20}",
                ".{0,200}",
                proptest::option::of(any::<[u8; 32]>()),
                any::<bool>(),
            )
                .prop_map(|(s, t, r, e2ee)| ClientMessage::Join {
                    session: SessionId::new(s).unwrap(),
                    token: t,
                    resume: r.map(ResumeSecret),
                    e2ee,
                }),
            proptest::collection::vec(any::<u8>(), 0..2000)
                .prop_map(|v| ClientMessage::Signal(Bytes::from(v))),
            any::<u16>().prop_map(|f| ClientMessage::Request(Feature::from(f))),
            Just(ClientMessage::Leave),
            any::<u64>().prop_map(ClientMessage::Ping),
            Just(ClientMessage::FastPathTicket),
            Just(ClientMessage::FastPathUnbind),
        ]
    }

    proptest! {
        #[test]
        fn client_messages_roundtrip_in_any_chunking(
            msgs in proptest::collection::vec(arb_client_message(), 1..8),
            chunk in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend_from_slice(&encode(m).unwrap());
            }
            let mut dec = FrameDecoder::default();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.extend(piece);
                while let Some(m) = dec.next_message::<ClientMessage>().unwrap() {
                    out.push(m);
                }
            }
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn decoder_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut dec = FrameDecoder::default();
            dec.extend(&data);
            for _ in 0..16 {
                match dec.next_message::<ClientMessage>() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
            let mut dec = FrameDecoder::default();
            dec.extend(&data);
            let _ = dec.next_message::<RelayMessage>();
        }
    }
}

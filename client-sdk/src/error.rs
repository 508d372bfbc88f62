//! The SDK's error type: every way a connect, join or call operation can fail.

use duet_proto::{CodecError, NodeId, PeerLeftReason, RefusalReason, SessionId};

use crate::e2ee::{E2eeUnavailable, HandshakeError, SealError};

use crate::fragment::FragmentError;

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The relay answered with a typed refusal.
    #[error("the relay refused: {0}")]
    Refused(RefusalReason),
    #[error("the relay's certificate PEM is unusable: {0}")]
    Certificate(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The call ended (left, ended by the relay, or the connection closed).
    #[error("the call is closed")]
    Closed,
    /// The relay answered `Joined` for another session than the one asked for.
    #[error("asked to join {asked}, the relay answered for {joined}")]
    WrongSession { asked: SessionId, joined: SessionId },
    /// A resume or a move to another node could not continue this call (see
    /// [`ResumeError`]); an E2EE call never continues without its keys.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error("the relay broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Fragment(#[from] FragmentError),
    #[error("the connection does not carry QUIC datagrams")]
    DatagramsUnsupported,
    #[error("sending a datagram failed: {0}")]
    SendDatagram(#[from] quinn::SendDatagramError),
    #[error("writing the control stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("signal of {len} bytes exceeds the relay's limit of {max}")]
    SignalTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// This call cannot be end-to-end encrypted (a side did not opt in, or policy forbids
    /// it), proven by the signed token of the side that cannot. No media was sent. A plain
    /// call instead is the app's explicit, user-visible choice.
    #[error(transparent)]
    E2eeUnavailable(#[from] E2eeUnavailable),
    /// The key agreement failed (tampered, reordered or malformed handshake messages, a
    /// bad signature or confirmation). No media was sent; the call was left.
    #[error("the end-to-end key agreement failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer left before the keys were agreed.
    #[error("the peer left before the keys were agreed: {0:?}")]
    PeerLeft(PeerLeftReason),
    /// The join token cannot be read (the SDK reads its claims, unverified, to learn the
    /// E2EE policy claim).
    #[error("the join token is unreadable: {0}")]
    Token(String),
    /// Media on an E2EE call before the keys are agreed (never sent in the clear).
    #[error("the end-to-end keys are not agreed yet")]
    E2eeNotEstablished,
    /// A hybrid rekey is already running, or the last one is too recent (rate limit, so a
    /// burst cannot desynchronise the peer).
    #[error("a hybrid rekey is running or was just done")]
    RekeyLimited,
    #[error("sealing a frame failed: {0}")]
    Seal(#[from] SealError),
    /// The raw-UDP fast path cannot be used (off on this call, not offered, no ticket, or
    /// its socket failed). Media stays on QUIC datagrams; the call carries on.
    #[error("the fast path is unavailable: {0}")]
    FastPathUnavailable(String),
    /// The operation would act on a [`crate::SharedEndpoint`]'s socket, which other
    /// connections use too (e.g. `Call::rebind_quic`).
    #[error("the QUIC endpoint is shared with other connections: cannot {0}")]
    EndpointShared(&'static str),
}

/// Why a call could not continue on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// `Client::resume` with the ticket of an end-to-end encrypted call: the ticket cannot
    /// carry the keys. Use `Call::resume`, which keeps them.
    #[error("an end-to-end encrypted call resumes only with its keys (Call::resume)")]
    NeedsKeys,
    /// The relay answered a resume with a fresh join.
    #[error("the relay did not resume this device's place")]
    NotResumed,
    /// The relay put the resumed endpoint in the other slot.
    #[error("the relay resumed this device into the other slot")]
    SlotChanged,
    /// The token does not list the node the call should move to.
    #[error("the token does not place this session on node {0}")]
    NodeNotListed(NodeId),
    /// No node of the token's list could carry the call.
    #[error("no node of the token's list took the call")]
    NoNodeLeft,
}

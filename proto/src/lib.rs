//! duet-proto: the one shared vocabulary of Duet.
//!
//! Owns the wire formats (control messages and their framing, the media relay header),
//! join tokens (claims, minting, verification) and the stable refusal codes.
//! It is sans-IO: no sockets, no runtime, no clock of its own (callers pass `now`).
//! It holds no media keys and knows nothing of the E2EE payload: that is the SDK's.

pub mod control;
pub mod fastpath;
pub mod ids;
pub mod media;
pub mod refusal;
pub mod token;

pub use control::{
    ClientMessage, CodecError, FastPathOffer, FrameDecoder, Joined, Limits, RelayMessage,
    ResumeSecret, Slot, ALPN, MAX_CONTROL_FRAME,
};
pub use ids::{DeviceId, IdError, NodeId, SessionId, UserId};
pub use media::{MediaHeader, MediaHeaderError, MediaKind, MEDIA_HEADER_LEN, MEDIA_VERSION};
pub use refusal::{E2eeClaim, EndReason, Feature, PeerLeftReason, RefusalReason};
pub use token::{JoinClaims, JoinToken, TokenError, TokenKey, TokenKeyring};

//! duet-proto: the one shared vocabulary of Duet.
//!
//! It is sans-IO: no sockets, no runtime, and no clock inside protocol logic (callers pass
//! `now`; [`clock`] is the one helper drivers use to read it). It holds no media keys and
//! knows nothing of the E2EE payload: that is the SDK's.
//!
//! | module | owns |
//! |---|---|
//! | [`control`] | control messages (`Join`, `Joined`, `Signal`, ...) and their length-prefixed framing |
//! | [`media`] | the 2-byte media relay header on QUIC datagrams |
//! | [`fastpath`] | the raw-UDP fast path: header, [`ChannelId`], bind tickets, BIND packets |
//! | [`token`] | join tokens: claims and their builder, Ed25519 signing and verification, key rotation |
//! | [`refusal`] | stable codes: refusals, features, peer-left and end reasons, QUIC close codes, the E2EE claim |
//! | [`ids`] | validated identifiers (session, user, device, node) and the macro behind every validated string |
//! | [`placement`] | rendezvous hashing of a session over the node set: primary and fallbacks |
//! | [`duration`] | the one duration grammar of CLIs and config files (`500ms`, `30s`, `10m`, ...) |
//! | [`hex`] | the text form of key files |
//! | [`clock`] | Unix time for drivers that must pass it in |

pub mod clock;
pub mod control;
pub mod duration;
pub mod fastpath;
pub mod hex;
pub mod ids;
pub mod media;
pub mod placement;
pub mod refusal;
pub mod token;

#[doc(hidden)]
pub use serde as __serde;

pub use control::{
    ClientMessage, CodecError, FastPathOffer, FrameDecoder, Joined, Limits, RelayMessage,
    ResumeSecret, Slot, ALPN, MAX_CONTROL_FRAME,
};
pub use duration::{format_duration, parse_duration, DurationError};
pub use fastpath::ChannelId;
pub use ids::{DeviceId, IdError, NodeId, SessionId, UserId};
pub use media::{MediaHeader, MediaHeaderError, MediaKind, MEDIA_HEADER_LEN, MEDIA_VERSION};
pub use refusal::{CloseCode, E2eeClaim, EndReason, Feature, PeerLeftReason, RefusalReason};
pub use token::{
    ClaimsBuilder, JoinClaims, JoinToken, SigningKey, TokenAlg, TokenError, TokenKeyring,
    UnverifiedToken, VerifyOptions, VerifyingKey,
};

//! End-to-end encryption core (sans-IO): SFrame frame encryption, the hybrid key
//! agreement carried in `Signal` messages, the security code, rekeying, and opt-in.
//!
//! No sockets, no runtime, no clock reads: the transport (`Call`) passes bytes and
//! `Instant`s in and takes bytes out. Nothing here is async.
//!
//! | module | owns | does not own |
//! |---|---|---|
//! | [`sframe`] | RFC 9605 header, suites, key/salt derivation, seal/open of one frame | epochs, counters, replay |
//! | [`keys`] | per-direction sender/receiver, epochs and KIDs, rekey schedule, replay window, drop counters | where the roots come from |
//! | [`handshake`] | both state machines, what each step checks, `Established` | sockets, timeouts |
//! | `wire` | byte layouts and parsing of the handshake messages | their meaning |
//! | `schedule` | hashes, HKDF labels, transcript, commitment, MACs (hybrid key schedule) | message layout |
//! | [`identity`] | the long-term Ed25519 identity key, signing, verification | pinning |
//! | [`binding`] | verifying the peer's signed join token: session, user, E2EE decision, identity key | minting tokens |
//! | [`pcs`] | the in-call hybrid rekey's messages and derivation | when it runs |
//! | [`code`] | security code digits, identity fingerprint, pinning verdict | where pins are stored |
//! | [`optin`] | `CallOptions`, the local decision, `E2eeUnavailable` | the policy itself (token minting) |
//!
//! # The seam with the transport
//!
//! Types: [`HandshakeConfig`], [`Handshake`], [`Start`], [`Step`], [`Established`]
//! (with [`FrameSealer`] and [`FrameOpener`]), [`E2eeUnavailable`], [`HandshakeError`],
//! [`OpenError`].
//!
//! 1. After `Joined`, build a [`HandshakeConfig`]: `role = Role::from_slot(joined.slot)`,
//!    the user's [`IdentityKey`] (the app keeps it across calls, PKCS#8), `context` = the
//!    bytes of the session id the app asked for, `token` = this side's signed join token
//!    (its E2EE claim is this side's decision; it is sent to the peer), `token_keys` = the
//!    issuer's public keys (to verify the peer's token), `now_unix`, and the app's
//!    [`CallOptions`].
//! 2. `Handshake::start(cfg)`:
//!    * `Start::Declined { send, unavailable }`: send `send` as a `Signal` once the peer is
//!      present (so its SDK fails cleanly) and return `unavailable` from `join`. No media.
//!    * `Start::Proceed { handshake, send }`: slot A gets `send = Some(Commit)`: send it as
//!      a `Signal` once the peer is present (`peer_present` at join, or `PeerJoined`).
//!      Slot B gets `None` and waits.
//! 3. For every `RelayMessage::Signal(bytes)`: `handshake.on_signal(&bytes)`:
//!    * `Ok(Step::Send(m))`: send `m` as a `Signal`, keep going.
//!    * `Ok(Step::Established { send, established })`: send `send` if `Some` (B's
//!      Finished), then the call is end-to-end encrypted. `established.code` is what
//!      `Call::security_code()` shows; `peer`/`identity_check` feed the events.
//!    * `Ok(Step::Unavailable(u))`: the peer declined with its signed token forbidding
//!      E2EE, as its first message; return `u` (typed). No media. Any other decline is
//!      `Err(HandshakeError::UnprovenDecline)`.
//!    * `Err(e)`: the handshake failed (typed); end the call, no media.
//!
//!    Who sends what when: A→Commit, B→Hello, A→Reveal, B→Finished (B is established when
//!    it sends it; A when it receives it). A `RelayMessage::PeerE2eeUnavailable { token, .. }`
//!    goes to `handshake.on_peer_unavailable(&token)`: the same rule as a Decline. The transport owns the
//!    deadline (e.g. `join_timeout`): no `Established` by then = failure.
//! 4. Media, only after `Established` (never before: no keys, no media):
//!    `sealer.seal_into(now, frame, &mut buf)` once per whole frame, then split `buf` into
//!    datagrams; on receive, reassemble, then `opener.open_into(now, &sframe, &mut out)`.
//!    `Err(OpenError)` = drop the frame (already counted in `opener.stats()`); never
//!    deliver it. `Opened::switched_epoch` = the peer rekeyed (an event if wanted).
//!    `sealer.rekey(now)` rekeys on demand; the schedule in `CallOptions::rekey` runs by
//!    itself inside `seal_into`. Sealer and opener are independent (`Send`), so the send and
//!    receive paths can own one each without sharing a lock.
//!    B may send its first frames before A has processed Finished; A cannot open them
//!    until then — buffer a few (bounded) or drop them.
//! 5. On resume after a relay failure, keep the same sealer/opener: no new handshake. The
//!    SDK's [`crate::engine`] does this, and confirms keys end to end after every
//!    connection change before it delivers media again.
//!
//! Key material: our secrets (roots, base keys, salts, shared-secret copies, PKCS#8
//! exports) are `zeroize::Zeroizing` and wiped on drop. aws-lc-rs wipes its own:
//! `hkdf::Prk` and `kem::SharedSecret` zeroize explicitly; AEAD and HMAC keys, X25519 and
//! ML-KEM private keys and the Ed25519 key pair live in AWS-LC allocations, which
//! `OPENSSL_free` cleanses.

pub mod binding;
pub mod code;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod optin;
pub mod pcs;
mod schedule;
pub mod sframe;
#[doc(hidden)]
pub mod test_support;
mod wire;

#[cfg(test)]
mod kat;
#[cfg(test)]
mod rfc9605_vectors;
#[cfg(test)]
mod tests;

pub use binding::{Binding, PeerToken};
pub use code::{IdentityCheck, PeerIdentity, SecurityCode};
pub use handshake::{Established, Handshake, HandshakeConfig, HandshakeError, Role, Start, Step};
pub use identity::{IdentityKey, IdentityKeyError};
pub use keys::{
    Direction, FrameOpener, FrameSealer, OpenError, Opened, RecvStats, RekeyPolicy, SealError,
    SendStats,
};
pub use optin::{local_decision, CallOptions, E2eeUnavailable, IdentityPolicy, UnavailableReason};
pub use sframe::{CipherSuite, Header, HeaderError, SframeError, SframeKey};
pub use wire::{HANDSHAKE_VERSION, MAX_HANDSHAKE_MESSAGE};

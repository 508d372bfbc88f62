//! duet-sdk: the client side of Duet, a relay for end-to-end encrypted one-to-one calls.
//!
//! `Client::connect` reaches a relay over QUIC (TLS 1.3 on aws-lc-rs, hybrid
//! post-quantum key exchange on the hop). [`Client::join_e2ee`] enters a session and agrees
//! end-to-end keys with the peer through the relay's opaque signals (hybrid X25519 +
//! ML-KEM-768, signed with each user's long-term [`IdentityKey`]); every media frame is
//! then sealed with SFrame (RFC 9605) before it is split into datagrams, so the relay
//! forwards only ciphertext. It still sees each frame's kind, size and timing.
//!
//! Both users must opt in: this user's [`CallOptions::e2ee`] and the E2EE claim in the join
//! token (read by the SDK itself). When either side cannot, `join_e2ee` fails with a typed
//! [`SdkError::E2eeUnavailable`] and no media has moved: never a silent downgrade.
//!
//! ```no_run
//! # async fn demo(relay: std::net::SocketAddr, cert_pem: Vec<u8>, token: String,
//! #               saved_pkcs8: Vec<u8>, issuer_pub: [u8; 32]) -> Result<(), duet_sdk::SdkError> {
//! use std::sync::Arc;
//! use duet_proto::{MediaKind, SessionId, TokenKeyring, VerifyingKey};
//! use duet_sdk::{Client, ConnectOptions, E2eeConfig, Event, IdentityKey, SdkError};
//!
//! // The user's long-term identity, kept by the app across calls.
//! let identity = Arc::new(IdentityKey::from_pkcs8(&saved_pkcs8).expect("a stored key"));
//! // The token issuer's public key, as the app's backend publishes it.
//! let issuer = TokenKeyring::new(vec![VerifyingKey::ed25519("default", &issuer_pub).unwrap()]);
//! let client = Client::connect(relay, token, ConnectOptions::trusting(cert_pem)).await?;
//! let call = match client
//!     .join_e2ee(SessionId::new("call-1").unwrap(), E2eeConfig::new(identity, issuer))
//!     .await
//! {
//!     Ok(call) => call,
//!     Err(SdkError::E2eeUnavailable(why)) => {
//!         // Not an E2EE call, proven by the peer's signed token. Any plain call is the
//!         // app's explicit choice, asked of the user; never an automatic fallback.
//!         println!("no end-to-end encryption: {why}");
//!         return Ok(());
//!     }
//!     Err(e) => return Err(e), // a HandshakeError is an attack, not "unavailable"
//! };
//! // Both users compare this code (read aloud); equal codes mean no one is in the middle.
//! // The peer's user id comes from its verified token.
//! println!(
//!     "security code {} with {}",
//!     call.security_code().expect("an E2EE call"),
//!     call.peer_user().expect("an authenticated peer"),
//! );
//! // Pin this after the users compared codes; pass it in `CallOptions::pinned_peer` next time.
//! let _fingerprint = call.peer_identity().map(|p| p.to_hex());
//!
//! call.send_media(MediaKind::Audio, b"20 ms of audio").await?; // sealed, then split
//! let frame = call.recv_media().await?; // reassembled, then opened
//! assert_eq!(frame.kind, MediaKind::Audio);
//! call.rekey()?; // new key and KID on demand (also on a schedule)
//! while let Ok(Some(ev)) =
//!     tokio::time::timeout(std::time::Duration::from_millis(10), call.next_event()).await
//! {
//!     match ev {
//!         // The connection dropped: continue the same call (same keys and code).
//!         Event::Disconnected(_) => call.resume().await?,
//!         // Media is delivered again once both sides proved they hold the keys.
//!         Event::KeysConfirmed => println!("resumed, same code"),
//!         _ => {}
//!     }
//! }
//! println!("{:?}", call.e2ee_stats()); // tampered / replayed / stale / unknown-KID drops
//! call.leave().await?;
//! # Ok(()) }
//! ```
//!
//! Media rides QUIC datagrams on the control connection unless
//! [`ConnectOptions::fast_path`] is [`FastPathMode::Prefer`] and the relay offers its raw-UDP
//! fast path: then, once the relay confirms the binding ([`Event::FastPathBound`]), pieces
//! go over plain UDP (the same SFrame ciphertext; the relay does no per-packet crypto). If
//! the bind is not confirmed or UDP is blocked, media stays on QUIC
//! ([`Event::FastPathFallback`]); [`Call::transport`] says which is in use and
//! [`Call::rebind_fast_path`] moves the binding to a new socket after a network change;
//! [`Call::rebind_quic`] moves the QUIC connection itself (QUIC connection migration).
//!
//! [`Client::join`] is the plain transport (no E2EE), used by the end-to-end tests (in the
//! `duet-testkit` crate) and the load generator.
//!
//! [`tls`] builds the client's TLS and QUIC configuration (X25519MLKEM768 first): the one
//! copy, which the load tester and the test kit's raw client use too.

//! # Modules
//!
//! | module | owns |
//! |---|---|
//! | [`engine`] | the sans-IO call engine: keys, epochs, reassembly, held frames, key confirmation, padding, events |
//! | [`call`] | the tokio driver: links (a connection and its tasks), resume, migrate, recovery |
//! | [`client`] | connecting and the join exchange |
//! | [`e2ee`] | the handshake (wire, schedule, identity, token binding), SFrame, keys, code, opt-in |
//! | [`secure`] | running the handshake over a joined call |
//! | [`fastpath`] | the raw-UDP fast path's binding and sockets |
//! | [`fragment`] | cutting frames into datagrams and reassembling them |
//! | [`options`], [`tls`], [`error`] | connect options, the client TLS/QUIC config, `SdkError` |

pub mod call;
pub mod client;
pub mod e2ee;
pub mod engine;
pub mod error;
pub mod fastpath;
pub mod fragment;
pub mod options;
pub mod secure;
pub mod tls;

pub use call::{Call, CallStats, E2eeStats, Event, Rebound, MAX_FRAMES_BEFORE_KEYS};
pub use client::{Client, ResumeTicket, SharedEndpoint, SharedEndpointBuilder};
pub use e2ee::{
    CallOptions, CipherSuite, E2eeUnavailable, HandshakeError, IdentityCheck, IdentityKey,
    IdentityPolicy, PeerIdentity, RekeyPolicy, SecurityCode, UnavailableReason,
};
pub use engine::{Engine, Padding};
pub use error::{ResumeError, SdkError};
pub use fastpath::{FastPathMode, Transport};
pub use fragment::{FrameSeq, MediaFrame, MAX_FRAME};
pub use options::{ConnectOptions, DeadRelay};
pub use secure::{token_claims, E2eeConfig};

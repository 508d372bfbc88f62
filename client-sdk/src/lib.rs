//! duet-sdk: the client side of Duet.
//!
//! `Client::connect` reaches a relay over QUIC (TLS 1.3 on aws-lc-rs, hybrid
//! post-quantum key exchange on the hop), `join` enters a session, and the `Call` carries
//! events, opaque signals, feature requests and media frames of any size up to 1 MiB.
//!
//! ```no_run
//! # async fn demo(relay: std::net::SocketAddr, cert_pem: Vec<u8>, token: String) -> Result<(), duet_sdk::SdkError> {
//! use duet_sdk::{Client, ConnectOptions};
//! use duet_proto::{MediaKind, SessionId};
//!
//! let client = Client::connect(relay, token, ConnectOptions::trusting(cert_pem)).await?;
//! let call = client.join(SessionId::new("call-1").unwrap()).await?;
//! call.send_media(MediaKind::Audio, b"an opaque frame").await?;
//! let frame = call.recv_media().await?;
//! call.leave().await?;
//! # Ok(()) }
//! ```

pub mod call;
pub mod client;
pub mod e2ee;
pub mod error;
pub mod fragment;
pub mod options;

pub use call::{Call, CallStats, Event};
pub use client::{Client, ResumeTicket};
pub use error::SdkError;
pub use fragment::{MediaFrame, MAX_FRAME};
pub use options::ConnectOptions;

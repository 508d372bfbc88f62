//! The QUIC driver: moves bytes and timers between quinn and the session core, and nothing
//! else (every rule is in `session`).
//!
//! Files, one concern each: `endpoint` (quinn server config, the UDP socket, the accept
//! loop), `cid` (the connection ids the endpoint issues), `admission` (Retry, refuse or accept each incoming connection, before it costs
//! state), `driver` (the one owner of the [`SessionCore`](crate::session::SessionCore) at run
//! time: feeds it inputs, carries out its actions, sleeps until its next deadline), `control`
//! (one connection's control stream: bytes in, decoded messages to the core, its queued
//! messages out), `media` (one connection's datagrams: the forwarding step, hand-off to the
//! peer's connection or to its fast-path binding), `bridge` (fast path -> QUIC: the session
//! routes the fast-path workers reach, and bind confirmations).
//!
//! Per connection: one control task (reads the one bidirectional stream and, in a second
//! future of the same task, is the only writer of that stream), one media task (reads
//! datagrams and hands the same `Bytes` to the peer). One timer task per relay. Routing a datagram takes no lock: each
//! session keeps an `ArcSwapOption` per slot.

pub(crate) mod admission;
pub(crate) mod bridge;
pub(crate) mod cid;
pub(crate) mod control;
pub(crate) mod driver;
pub mod endpoint;
pub(crate) mod media;

pub use endpoint::{bind_endpoint, endpoint_config, quinn_server_config, PINNED_UDP_PAYLOAD};

//! The raw-UDP fast path: no per-packet cryptography at the relay.
//!
//! Owns the data plane of the fast path: the channel table shared by all workers
//! (`table`), the batched UDP socket (`socket`), the per-thread worker loop (`worker`) and
//! when it reads (`pacing`: the coalescing window, busy polling), how many workers take new
//! datagrams (`steering`), the running service that starts them (`service`) and what the
//! session core asks of it: channels and offers (`plane`). Wire formats and tickets live in
//! `duet_proto::fastpath`; drop reasons and the rate limiter in `forward`. Not owned here: when a session gets or
//! loses its channels (`session`), and how bridged media reaches a QUIC connection
//! (`quic::bridge`).

pub mod pacing;
pub mod plane;
pub mod service;
pub mod socket;
pub mod steering;
pub mod table;
pub mod worker;

pub use plane::FastPathPlane;
pub use service::{FastPathService, FastPathTotals};
pub use socket::{FastPathSocket, Offload, RecvBatch, SendBatch};
pub use table::{
    channel_pair, channel_side, peer_channel, BindOutcome, ChannelTable, EndpointBudget, Verdict,
};
pub use worker::{run_worker, ControlPlane, WorkerConfig, WorkerCounters};

//! The raw-UDP fast path: no per-packet cryptography at the relay.
//!
//! Owns the data plane of the fast path: the channel table shared by all workers
//! (`table`), the batched UDP socket (`socket`), the per-thread worker loop (`worker`) and
//! the running service that starts them and mints offers (`service`). Wire formats and
//! tickets live in `duet_proto::fastpath`. Not owned here: when a session gets or loses its
//! channels, and how bridged media reaches a QUIC connection (both in `server`).

pub mod service;
pub mod socket;
pub mod table;
pub mod worker;

pub use service::{FastPathService, FastPathTotals};
pub use socket::{FastPathSocket, Offload, RecvBatch, SendBatch};
pub use table::{
    channel_pair, channel_side, Action, BindOutcome, ChannelTable, DropReason, EndpointBudget,
    FastPathLimits,
};
pub use worker::{run_worker, ControlPlane, WorkerConfig, WorkerCounters};

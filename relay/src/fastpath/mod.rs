//! The raw-UDP fast path (issue 4): no per-packet cryptography at the relay.
//!
//! Owns the data plane of the fast path: the channel table shared by all workers
//! (`table`), the batched UDP socket (`socket`) and the per-thread worker loop (`worker`).
//! Wire formats and tickets live in `duet_proto::fastpath`. Not yet owned here (the next
//! session's wiring): allocating channels from the session table, handing tickets out in
//! `Joined`, starting workers from `Relay::start`, and exporting the counters as metrics.

pub mod socket;
pub mod table;
pub mod worker;

pub use socket::{FastPathSocket, Offload, RecvBatch, SendBatch};
pub use table::{Action, BindOutcome, ChannelTable, DropReason, FastPathLimits};
pub use worker::{run_worker, WorkerConfig, WorkerCounters};

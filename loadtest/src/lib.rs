//! duet-loadtest: many simulated end-to-end encrypted calls against one or many Duet relay
//! nodes, measured like an SRE would (loss, one-way latency p50/p99/p999, jitter, join time,
//! relay CPU and memory per session), with a JSON report, SLO checks and report merging.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`profile`] | media traffic shapes and the call mix of each `--profile` | none |
//! | [`rng`] | the deterministic generator behind `--seed` | none |
//! | [`probe`] | the sequence + timestamp probe inside every media frame, the process clock | none |
//! | [`hist`] | HdrHistogram bounds, summaries, exact serialization | none |
//! | [`stats`] | per-stream tracking and the run-wide collector | none |
//! | [`report`] | the JSON report's schema and derived fields (see `REPORT.md`) | none |
//! | [`slo`] | `--slo` syntax and verdicts | none |
//! | [`merge`] | merging reports of several generators | none |
//! | [`summary`] | the human-readable end-of-run summary | none |
//! | [`cli`] | flags, defaults, value parsers | none |
//! | [`resources`] | /proc and /metrics readers (parsers pure) | yes |
//! | [`target`] | relay addresses, tokens, the embedded relay | yes |
//! | [`progress`] | live progress on stderr | yes |
//! | [`chaos`] | `--chaos`: kill, SIGTERM or drain a relay mid-run | yes |
//! | [`runner`] | the run's timeline, the calls, their bounds | yes |
//! | [`relay_watch`] | each relay's CPU, RSS and sessions during a run, and its report part | yes |
//! | [`udp`] | `udp` subcommand engine: endpoint sockets, pacing, batched send/receive | yes |
//! | [`udpnet`] | `udp` endpoint addresses and sockets: one per endpoint, or shared (IP_PKTINFO) | yes |
//! | [`udpgen`] | `udp` measured window over `--threads` workers (pacer + receiver each), merged | yes |
//! | [`fpctl`] | minimal control client for the fast-path offer and bind confirmation | yes |
//! | [`turnctl`] | TURN allocations, permissions and channels per endpoint (turn-client-proto) | yes |
//! | [`udpbench`] | `udp` subcommand: baseline/fastpath/quic/turn set-up, its report and `RESULT` line | yes |

pub mod chaos;
pub mod cli;
pub mod fpctl;
pub mod hist;
pub mod merge;
pub mod probe;
pub mod profile;
pub mod progress;
pub mod relay_watch;
pub mod report;
pub mod resources;
pub mod rng;
pub mod runner;
pub mod slo;
pub mod stats;
pub mod summary;
pub mod target;
pub mod turnctl;
pub mod udp;
pub mod udpbench;
pub mod udpgen;
pub mod udpnet;

/// Process exit codes of `duet-loadtest` (stable: scripts and CI read them).
pub mod exit {
    /// The run completed (and met the SLO, if one was given).
    pub const OK: u8 = 0;
    /// The run could not be done: relay failed to start, unreadable files, no call
    /// established at all, a report that does not parse.
    pub const ERROR: u8 = 1;
    /// Bad command line, including bad `--slo` syntax.
    pub const USAGE: u8 = 2;
    /// The run completed but missed the SLO; the report lists which clauses.
    pub const SLO_MISSED: u8 = 3;
    /// The hard deadline passed with calls still running; they were aborted (partial report).
    pub const DEADLINE: u8 = 4;
    /// Stopped by Ctrl-C / SIGTERM (partial report written).
    pub const INTERRUPTED: u8 = 130;
}

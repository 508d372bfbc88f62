//! The `[limits]` and `[fast_path]` tables of the configuration: per-endpoint and per-node
//! limits (and the `Limits` told to endpoints in `Joined`), and the raw-UDP fast path's
//! listen address, workers, ticket lifetime and offloads.

use std::net::SocketAddr;
use std::time::Duration;

use duet_proto::MAX_CONTROL_FRAME;
use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Per-endpoint and per-node limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest Signal payload, bytes [default: 16384]
    #[arg(long, required = false, value_name = "BYTES")]
    pub max_signal_bytes: u32,
    /// Signal messages per second per endpoint (burst of the same size) [default: 20]
    #[arg(long, required = false, value_name = "N")]
    pub signals_per_sec: u32,
    /// Media datagrams per second per endpoint [default: 4000]
    #[arg(long, required = false, value_name = "N")]
    pub media_packets_per_sec: u32,
    /// Media bytes per second per endpoint [default: 6000000]
    #[arg(long, required = false, value_name = "BYTES")]
    pub media_bytes_per_sec: u64,
    /// A session ends when neither endpoint sent anything for this long, ms [default: 30000]
    #[arg(long, required = false, value_name = "MS")]
    pub idle_timeout_ms: u64,
    /// A session ends this long after it began, seconds [default: 14400]
    #[arg(long, required = false, value_name = "SECS")]
    pub max_session_secs: u64,
    /// Sessions this node carries at most [default: 10000]
    #[arg(long, required = false, value_name = "N")]
    pub max_sessions: u32,
    /// A connection must send Join within this long, ms [default: 5000]
    #[arg(long, required = false, value_name = "MS")]
    pub join_timeout_ms: u64,
    /// A lost endpoint's slot is kept this long for it to resume, ms [default: 10000]
    #[arg(long, required = false, value_name = "MS")]
    pub resume_window_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_signal_bytes: 16 * 1024,
            signals_per_sec: 20,
            media_packets_per_sec: 4000,
            media_bytes_per_sec: 6_000_000,
            idle_timeout_ms: 30_000,
            max_session_secs: 4 * 3600,
            max_sessions: 10_000,
            join_timeout_ms: 5_000,
            resume_window_ms: 10_000,
        }
    }
}

impl LimitsConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn max_session(&self) -> Duration {
        Duration::from_secs(self.max_session_secs)
    }
    pub fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms)
    }
    pub fn resume_window(&self) -> Duration {
        Duration::from_millis(self.resume_window_ms)
    }

    /// The limits as told to an endpoint in `Joined`.
    pub fn to_wire(&self) -> duet_proto::Limits {
        duet_proto::Limits {
            max_signal_bytes: self.max_signal_bytes,
            signals_per_sec: self.signals_per_sec,
            media_packets_per_sec: self.media_packets_per_sec,
            media_bytes_per_sec: self.media_bytes_per_sec,
            idle_timeout_ms: self.idle_timeout_ms,
            max_session_secs: self.max_session_secs,
            resume_window_ms: self.resume_window_ms,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // Room for the Signal message's own framing inside one control frame.
        let max_signal = (MAX_CONTROL_FRAME - 64) as u32;
        if self.max_signal_bytes == 0 || self.max_signal_bytes > max_signal {
            return Err(invalid(
                "limits.max_signal_bytes",
                format!("must be 1..={max_signal}, got {}", self.max_signal_bytes),
            ));
        }
        let positive: [(&'static str, u64); 6] = [
            ("limits.signals_per_sec", self.signals_per_sec.into()),
            (
                "limits.media_packets_per_sec",
                self.media_packets_per_sec.into(),
            ),
            ("limits.media_bytes_per_sec", self.media_bytes_per_sec),
            ("limits.max_session_secs", self.max_session_secs),
            ("limits.max_sessions", self.max_sessions.into()),
            ("limits.join_timeout_ms", self.join_timeout_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if self.idle_timeout_ms < 100 {
            return Err(invalid(
                "limits.idle_timeout_ms",
                format!("must be at least 100, got {}", self.idle_timeout_ms),
            ));
        }
        if self.media_bytes_per_sec < 1500 {
            return Err(invalid(
                "limits.media_bytes_per_sec",
                "must allow at least one full datagram (1500) per second",
            ));
        }
        Ok(())
    }
}

/// The raw-UDP fast path (`[fast_path]` in the file).
///
/// Its ticket key is random per process on purpose: tickets only make sense for channels
/// of live sessions, which a restart ends anyway, so there is no secret to store or rotate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct FastPathConfig {
    /// Serve the raw-UDP fast path beside QUIC [default: true]
    #[arg(id = "fast_path_enabled", long = "fast-path-enabled", required = false, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Fast-path UDP listen address [default: the QUIC listen IP, QUIC port + 1; port 0 when QUIC's is 0]
    #[arg(
        id = "fast_path_listen",
        long = "fast-path-listen",
        value_name = "ADDR"
    )]
    pub listen: Option<SocketAddr>,
    /// Address told to clients instead of the listen address's port on the IP they reached
    /// QUIC at (a relay behind a load balancer or NAT).
    #[arg(
        id = "fast_path_advertise",
        long = "fast-path-advertise",
        value_name = "ADDR"
    )]
    pub advertise: Option<SocketAddr>,
    /// Worker threads, each with its own SO_REUSEPORT socket; 0 = one per CPU with
    /// adaptive_workers, else half the CPUs (at least one) [default: 0]
    #[arg(
        id = "fast_path_workers",
        long = "fast-path-workers",
        required = false,
        value_name = "N"
    )]
    pub workers: usize,
    /// How long a bind ticket may be used after it was handed out, seconds [default: 600]
    #[arg(
        id = "fast_path_ticket_ttl_secs",
        long = "fast-path-ticket-ttl-secs",
        required = false,
        value_name = "SECS"
    )]
    pub ticket_ttl_secs: u64,
    /// Use UDP GRO on receive when the kernel offers it [default: true]
    #[arg(id = "fast_path_gro", long = "fast-path-gro", required = false, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub gro: bool,
    /// Use UDP GSO on send when the kernel offers it. Off by default: without a NIC that
    /// segments UDP (loopback, most virtual NICs) the kernel segments in software, which
    /// measured dearer than plain sendmmsg (benches/RESULTS.md) [default: false]
    #[arg(id = "fast_path_gso", long = "fast-path-gso", required = false, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub gso: bool,
    /// Coalescing window, µs: while media flows, a worker sleeps this long after each batch
    /// before reading again, so each recvmmsg/sendmmsg carries more datagrams and arrivals
    /// wake nobody; a datagram waits at most this long more. 0 = off [default: 0]
    #[arg(
        id = "fast_path_coalesce_us",
        long = "fast-path-coalesce-us",
        required = false,
        value_name = "US"
    )]
    pub coalesce_us: u64,
    /// Busy polling, µs: after finding its socket empty a worker keeps reading it without
    /// blocking this long before sleeping in the kernel (CPU spent to skip a wake-up).
    /// 0 = off [default: 0]
    #[arg(
        id = "fast_path_busy_poll_us",
        long = "fast-path-busy-poll-us",
        required = false,
        value_name = "US"
    )]
    pub busy_poll_us: u64,
    /// Steer new datagrams (by channel pair) to as few workers as the load needs: one at
    /// first, more while the active ones are busy, fewer when the load falls. Off: the
    /// kernel spreads flows over every worker [default: true]
    #[arg(id = "fast_path_adaptive_workers", long = "fast-path-adaptive-workers", required = false, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub adaptive_workers: bool,
}

impl Default for FastPathConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            advertise: None,
            workers: 0,
            ticket_ttl_secs: 600,
            gro: true,
            gso: false,
            coalesce_us: DEFAULT_COALESCE_US,
            busy_poll_us: 0,
            adaptive_workers: true,
        }
    }
}

/// The coalescing window when none is configured (see `coalesce_us`).
pub const DEFAULT_COALESCE_US: u64 = 0;
/// Longest coalescing window: a datagram may wait this long more (audio tolerates ~1 ms).
pub const MAX_COALESCE_US: u64 = 2_000;
/// Longest busy-polling budget.
pub const MAX_BUSY_POLL_US: u64 = 1_000;

/// Most fast-path worker threads; more would only contend for the same cores.
pub const MAX_FAST_PATH_WORKERS: usize = 64;

impl FastPathConfig {
    /// The address to bind, given the QUIC listen address.
    pub fn listen_addr(&self, quic: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = match quic.port() {
                0 => 0,
                p => p.wrapping_add(1),
            };
            SocketAddr::new(quic.ip(), port)
        })
    }

    /// Worker threads to start. Split traffic costs CPU: two workers splitting one load on
    /// 2 cores each woke for half-size batches and cost ~1.9x the C baseline per packet, one
    /// worker ~1.1x (benches/RESULTS.md, "Fast path vs C baseline"). With adaptive workers
    /// (the default) the load is steered to as few as it needs, so idle ones cost nothing and
    /// the default is one per CPU (capacity for a saturating load); without, half the CPUs,
    /// leaving the rest to the QUIC path and the control plane.
    pub fn worker_count(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.workers {
            0 if self.adaptive_workers => cpus,
            0 => (cpus / 2).max(1),
            n => n,
        }
        .min(MAX_FAST_PATH_WORKERS)
    }

    pub fn ticket_ttl(&self) -> Duration {
        Duration::from_secs(self.ticket_ttl_secs)
    }

    pub fn coalesce(&self) -> Duration {
        Duration::from_micros(self.coalesce_us)
    }

    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.busy_poll_us)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.workers > MAX_FAST_PATH_WORKERS {
            return Err(invalid(
                "fast_path.workers",
                format!(
                    "must be at most {MAX_FAST_PATH_WORKERS}, got {}",
                    self.workers
                ),
            ));
        }
        if self.coalesce_us > MAX_COALESCE_US {
            return Err(invalid(
                "fast_path.coalesce_us",
                format!(
                    "must be at most {MAX_COALESCE_US}, got {}",
                    self.coalesce_us
                ),
            ));
        }
        if self.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(invalid(
                "fast_path.busy_poll_us",
                format!(
                    "must be at most {MAX_BUSY_POLL_US}, got {}",
                    self.busy_poll_us
                ),
            ));
        }
        if !(2..=86_400).contains(&self.ticket_ttl_secs) {
            return Err(invalid(
                "fast_path.ticket_ttl_secs",
                format!("must be 2..=86400, got {}", self.ticket_ttl_secs),
            ));
        }
        if self.advertise.is_some_and(|a| a.port() == 0) {
            return Err(invalid("fast_path.advertise", "needs a port"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    #[test]
    fn fast_path_defaults_follow_the_quic_address() {
        let f = FastPathConfig::default();
        let at = |s: &str| f.listen_addr(s.parse().unwrap());
        assert_eq!(at("127.0.0.1:4433"), "127.0.0.1:4434".parse().unwrap());
        assert_eq!(at("[::1]:0"), "[::1]:0".parse().unwrap());
        let e = Config::from_toml("[fast_path]\nworkers = 65", Path::new("x.toml"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("fast_path.workers"), "{e}");
        let e = Config::from_toml("[fast_path]\nticket_ttl_secs = 1", Path::new("x.toml"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("fast_path.ticket_ttl_secs"), "{e}");
    }
}

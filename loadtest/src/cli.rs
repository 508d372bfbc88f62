//! The command line: flags, their defaults and value parsers.
//!
//! Owns the CLI surface (`duet-loadtest [RUN FLAGS]` and `duet-loadtest merge`) and parsing
//! of durations (`30s`, `500ms`, `2m`) and rates (`100/s`, `6000/m`). Bad values are usage
//! errors (exit 2) reported by clap with the value parser's message. It does not run
//! anything (see the binary and `runner`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::profile::Profile;
use crate::progress::ProgressMode;
use crate::slo::SloSpec;
use crate::target::RelaySpec;

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 30s, 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?}: out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate: `100/s`, `6000/m`, or a bare number per second. Must be positive.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, per) = s.split_once('/').unwrap_or((s, "s"));
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a rate like 100/s or 6000/m"))?;
    let per_sec = match per.trim() {
        "s" => v,
        "m" => v / 60.0,
        u => return Err(format!("{s:?}: unknown period {u:?} (use /s or /m)")),
    };
    if !(per_sec.is_finite() && per_sec > 0.0 && per_sec <= 1e6) {
        return Err(format!("{s:?}: must be above 0 and at most 1000000/s"));
    }
    Ok(per_sec)
}

#[derive(Debug, Parser)]
#[command(
    name = "duet-loadtest",
    version,
    about = "Simulates many E2EE one-to-one calls against Duet relays and reports loss, latency, join time and relay cost",
    long_about = "Simulates many E2EE one-to-one calls against Duet relays and reports loss, \
latency, join time and relay cost.\n\nWith no --relay it starts an embedded relay in-process, \
so `duet-loadtest` alone runs a small safe load (20 video calls for 10 s).\n\nExit codes: 0 ok, \
1 error, 2 usage, 3 SLO missed, 4 hard deadline hit, 130 interrupted.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Merge reports of several generators into one (histograms merge exactly)
    Merge(MergeArgs),
    /// Raw forwarder bench: the same paced UDP load against the C baseline forwarder, the
    /// relay's raw UDP fast path or its QUIC datagram path (schema: loadtest/REPORT.md)
    Udp(UdpArgs),
}

/// What `duet-loadtest udp` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpTargetKind {
    /// The C `fwd` protocol: 8-byte session id, first two source addresses pair up
    Baseline,
    /// duet-relay's raw UDP fast path (QUIC control connection for the offer, then BIND)
    FastPath,
    /// duet-relay's QUIC datagram path through the SDK
    Quic,
    /// A TURN server (e.g. coturn) over UDP: two allocations per pair, ChannelData both ways
    Turn,
}

impl UdpTargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::FastPath => "fastpath",
            Self::Quic => "quic",
            Self::Turn => "turn",
        }
    }

    /// Bytes in front of the 16-byte probe: session id, fast-path header, media header,
    /// ChannelData header.
    pub fn prefix_len(self) -> usize {
        match self {
            Self::Baseline => 8,
            Self::FastPath => duet_proto::fastpath::FASTPATH_HEADER_LEN,
            Self::Quic => duet_proto::media::MEDIA_HEADER_LEN,
            Self::Turn => crate::turnctl::CHANNEL_HEADER_LEN,
        }
    }

    /// Smallest `--size` this target can carry a probe in.
    pub fn min_size(self) -> usize {
        self.prefix_len() + crate::udp::PROBE_LEN
    }
}

/// `--target KIND=IP:PORT`. For `fastpath` and `quic` the address is the relay's QUIC
/// listen address (the fast-path port comes from the offer in `Joined`); for `turn` the
/// TURN server's UDP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpTarget {
    pub kind: UdpTargetKind,
    pub addr: SocketAddr,
}

impl std::str::FromStr for UdpTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, a) = s.split_once('=').ok_or_else(|| {
            format!(
                "{s:?}: expected baseline=IP:PORT, fastpath=IP:PORT, quic=IP:PORT or turn=IP:PORT"
            )
        })?;
        let kind = match k {
            "baseline" => UdpTargetKind::Baseline,
            "fastpath" | "fast-path" => UdpTargetKind::FastPath,
            "quic" => UdpTargetKind::Quic,
            "turn" => UdpTargetKind::Turn,
            _ => {
                return Err(format!(
                    "{k:?}: unknown target (baseline, fastpath, quic, turn)"
                ))
            }
        };
        let addr: SocketAddr = a.parse().map_err(|_| format!("{a:?}: expected IP:PORT"))?;
        if !addr.is_ipv4() {
            return Err(format!("{a:?}: the udp bench is IPv4 only"));
        }
        Ok(Self { kind, addr })
    }
}

/// `--turn-user USER:PASSWORD`: a TURN long-term credential (RFC 8489 §9.2).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnUser {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for TurnUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TurnUser({:?}, <password>)", self.user)
    }
}

impl std::str::FromStr for TurnUser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(Self {
                user: u.to_owned(),
                password: p.to_owned(),
            }),
            _ => Err("expected USER:PASSWORD, both non-empty".into()),
        }
    }
}

/// How the generator trusts an external relay and mints its tokens; shared by `run` and `udp`.
#[derive(Debug, Args)]
pub struct RelayAccessArgs {
    /// PEM of the relay's certificate or CA
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// TLS server name the relay's certificate carries
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Token signing key file: the hex Ed25519 seed, as `duet-relay` writes it in
    /// <data dir>/token-signing-key
    #[arg(long, value_name = "FILE")]
    pub token_key_file: Option<PathBuf>,
    /// Id of that token key
    #[arg(long, default_value = "default")]
    pub token_key_id: String,
}

impl RelayAccessArgs {
    /// Whether any of the access flags was given.
    pub fn any(&self) -> bool {
        self.cert.is_some() || self.token_key_file.is_some()
    }

    /// Whether both the certificate and the key file were given.
    pub fn complete(&self) -> bool {
        self.cert.is_some() && self.token_key_file.is_some()
    }
}

#[derive(Debug, Args)]
pub struct UdpArgs {
    /// Pairs (2 endpoints each, one UDP socket per endpoint)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub pairs: u32,
    /// TOTAL packets per second over all endpoints (e.g. 20000, 20000/s)
    #[arg(long, default_value = "1000/s", value_parser = parse_rate)]
    pub pps: f64,
    /// Send window (max 10m)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// UDP payload the generator sends, bytes, header included (baseline: 8-byte session
    /// id; fastpath: 10-byte fast-path header; quic: the datagram handed to QUIC, 2-byte
    /// media header included; turn: 4-byte ChannelData header)
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u16).range(18..=2048))]
    pub size: u16,
    /// KIND=IP:PORT, KIND one of baseline, fastpath, quic, turn
    #[arg(long, value_name = "KIND=IP:PORT")]
    pub target: UdpTarget,
    /// Generator workers (baseline, fastpath, turn): the pairs are split across them, each
    /// with its own pacer and receiver thread over its own sockets
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// How endpoints get distinct addresses (raw targets): ports = a socket per endpoint on
    /// 127.0.0.1 (one packet per send call at many pairs); ips = a socket per worker and a
    /// 127.x.y.z address per endpoint, so batches span endpoints (needs CAP_NET_RAW)
    #[arg(long, value_enum, default_value = "ports")]
    pub addressing: crate::udpnet::Addressing,
    /// TURN long-term credential (turn target), e.g. a static user of coturn's --user
    #[arg(long, value_name = "USER:PASSWORD")]
    pub turn_user: Option<TurnUser>,
    /// Trust in the relay and its token key (fastpath and quic targets)
    #[command(flatten)]
    pub access: RelayAccessArgs,
    /// Read this forwarder's utime+stime (and RSS) from /proc before and after the run
    #[arg(long, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// Set up the sessions (fastpath: joined and bound), send no media, hold them for
    /// --duration and report the forwarder's RSS per session
    #[arg(long)]
    pub idle: bool,
    /// Id in session and user ids (default: random)
    #[arg(long)]
    pub run_id: Option<String>,
    /// Write the JSON report here (schema: loadtest/REPORT.md, "udp report")
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// QUIC DATAGRAM frames on the control connection
    QuicDatagram,
    /// The raw UDP fast path when the relay offers it (SDK `FastPathMode::Prefer`), QUIC
    /// datagrams otherwise
    FastPath,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Concurrent calls (each two SDK endpoints)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub calls: u64,
    /// Media profile: audio, video (audio+video), screen (audio+screen share), mixed, idle (held calls, one frame per 2 s)
    #[arg(long, default_value = "video")]
    pub profile: Profile,
    /// How long every call carries media once all calls are up (e.g. 30s, 2m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Call start rate (e.g. 100/s, 6000/m)
    #[arg(long, default_value = "50/s", value_parser = parse_rate)]
    pub ramp: f64,
    /// Seed of every frame size, burst time and the mixed call mix
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Id in this run's session and user ids (default: random); distinct per generator
    #[arg(long)]
    pub run_id: Option<String>,
    /// Relay node, ADDR or NODE=ADDR (repeatable; calls are spread by rendezvous hashing of
    /// the session id; NODE goes in the token's node claim). None: an embedded relay
    #[arg(long = "relay", value_name = "[NODE=]ADDR")]
    pub relays: Vec<RelaySpec>,
    /// Trust in the relays and their token key (required with --relay)
    #[command(flatten)]
    pub access: RelayAccessArgs,
    /// Measure this relay process's CPU and RSS from /proc/PID (repeatable; with as many
    /// --relay-metrics, paired by position as the same relay)
    #[arg(long = "relay-pid", value_name = "PID")]
    pub relay_pids: Vec<u32>,
    /// Scrape this relay ops endpoint's /metrics (HOST:PORT, repeatable)
    #[arg(long = "relay-metrics", value_name = "ADDR")]
    pub relay_metrics: Vec<SocketAddr>,
    /// Chaos mid-run, at TIME after the first call starts (repeatable): kill:PID (SIGKILL a
    /// relay), term:PID (SIGTERM: its own drain), drain:HOST:PORT (POST /admin/drain on its
    /// ops listener). The report's `chaos` says what each did, `media_gap` what calls felt.
    #[arg(long = "chaos", value_name = "ACTION@TIME")]
    pub chaos: Vec<crate::chaos::ChaosSpec>,
    /// Bearer token for drain:HOST:PORT (the relay's `ops_token_file`)
    #[arg(long, value_name = "FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// Plain transport only, no media encryption (isolates the relay's own cost)
    #[arg(long)]
    pub no_e2ee: bool,
    /// Media transport
    #[arg(long, value_enum, default_value = "quic-datagram")]
    pub transport: Transport,
    /// Extra time after the planned end before calls still running are aborted
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How long receivers wait for frames in flight once sending stopped
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Per endpoint: QUIC handshake and Join must finish within this
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Per endpoint: a relay that answers nothing this long is taken for dead, and the call
    /// fails over to its token's next node (with node ids) [default: the SDK's]
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Per endpoint: QUIC keep-alive interval (keep it a few times below --idle-timeout)
    /// [default: the SDK's]
    #[arg(long, value_parser = parse_duration)]
    pub keep_alive: Option<Duration>,
    /// `--profile idle`: one frame per endpoint this often (a sparser hold costs the
    /// generator less per call; keep it below the relay's session idle timeout, 30 s)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub idle_interval: Duration,
    /// Per endpoint: silence (probes outstanding) after which a relay counts as dead and
    /// the call moves, long before --idle-timeout (`DeadRelay::silence`) [default: the SDK's, 500ms]
    #[arg(long, value_parser = parse_duration)]
    pub dead_silence: Option<Duration>,
    /// Per endpoint: silence after which the SDK probes the relay (`DeadRelay::probe_after`)
    /// [default: the SDK's, 150ms]
    #[arg(long, value_parser = parse_duration)]
    pub dead_probe_after: Option<Duration>,
    /// Worker threads of the client runtime (default: CPUs)
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// QUIC endpoints (UDP sockets) the clients share, round robin: each builds its TLS
    /// config once, so a join costs the generator no socket, endpoint task or PEM parsing
    /// of its own (every join still makes a full TLS handshake; see --tls-resumption).
    /// 0: a socket of its own per client, as on separate devices (one descriptor each)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub endpoints: u16,
    /// With --endpoints: let joins resume TLS sessions of earlier joins on the same endpoint
    /// (cheaper than a device's first join where the server issues tickets, so off by
    /// default; duet-relay issues none, so against it joins stay full handshakes; the
    /// report's generator.tls_resumption says which)
    #[arg(long)]
    pub tls_resumption: bool,
    /// Worker threads of the embedded relay (default: CPUs)
    #[arg(long)]
    pub relay_threads: Option<usize>,
    /// Write the JSON report here (schema: loadtest/REPORT.md)
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Thresholds, e.g. "loss<0.5%,p99<20ms,join_p99<50ms"; exit 3 when missed
    #[arg(long, value_name = "SPEC")]
    pub slo: Option<SloSpec>,
    /// Live progress on stderr: auto (bar on a terminal, lines otherwise), bar, plain, off
    #[arg(long, default_value = "auto")]
    pub progress: ProgressMode,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Reports to merge
    #[arg(required = true, value_name = "REPORT")]
    pub inputs: Vec<PathBuf>,
    /// Write the merged report here (default: stdout)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Check the merged report against these thresholds; exit 3 when missed
    #[arg(long, value_name = "SPEC")]
    pub slo: Option<SloSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_rate("100/s"), Ok(100.0));
        assert_eq!(parse_rate("6000/m"), Ok(100.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/h").is_err());
    }

    #[test]
    fn cli_is_consistent_and_defaults_are_small() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["duet-loadtest"]).unwrap();
        assert!(c.cmd.is_none());
        assert_eq!(c.run.calls, 20);
        assert_eq!(c.run.duration, Duration::from_secs(10));
        assert_eq!(c.run.profile, Profile::Video);
        assert_eq!(c.run.endpoints, 4);
        assert!(!c.run.tls_resumption, "full TLS handshakes unless asked");
        let m = Cli::try_parse_from(["duet-loadtest", "merge", "a.json", "b.json", "-o", "m.json"])
            .unwrap();
        assert!(matches!(m.cmd, Some(Cmd::Merge(ref a)) if a.inputs.len() == 2));
        let bad = Cli::try_parse_from(["duet-loadtest", "--slo", "p99=1"]).unwrap_err();
        assert_eq!(bad.exit_code(), 2);
    }
}

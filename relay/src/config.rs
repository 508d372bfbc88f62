//! The relay's one configuration type: the TOML file schema and the command-line flags.
//!
//! Owns: field names, defaults, validation (a bad value is refused at start with the field
//! named) and the embedded defaults written into the data directory (token key). It does not
//! own TLS material (see `tls`) nor what the limits mean at run time (see `session`, `limits`).
//!
//! Precedence: built-in defaults < the TOML file (`--config`) < flags given on the command
//! line. `Config` derives both `serde::Deserialize` (every field defaulted, unknown fields
//! refused) and `clap::Args`; no flag has a clap default, so `update_from_arg_matches` only
//! overwrites the fields whose flags were actually given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};
use duet_proto::{
    NodeId, SigningKey, TokenKeyring, VerifyOptions, VerifyingKey, MAX_CONTROL_FRAME,
};
use serde::{Deserialize, Serialize};

/// The generated default token signing key (hex Ed25519 seed) inside the data directory:
/// for `duet-relay token mint` on a single-node setup. `serve` never reads it.
pub const DEFAULT_SIGNING_KEY_FILE: &str = "token-signing-key";
/// Its public half (hex), which is what `serve` trusts when no key is configured.
pub const DEFAULT_VERIFYING_KEY_FILE: &str = "token-key.pub";
/// Key id of the generated default token key.
pub const DEFAULT_TOKEN_KEY_ID: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot apply command-line flags: {0}")]
    Flags(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A trusted token key: its id and the file holding its Ed25519 public key (hex), or, for a
/// legacy HMAC key, the file holding the shared secret (hex, at least 32 bytes; only with
/// `allow_legacy_hmac_tokens`). On the command line: `--token-key ID=FILE` (a public key
/// file; repeatable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

impl FromStr for TokenKeyConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, file) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ID=FILE, got {s:?}"))?;
        Ok(Self {
            id: id.to_owned(),
            public_key_file: Some(PathBuf::from(file)),
            secret_file: None,
        })
    }
}

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

    fn validate(&self) -> Result<(), ConfigError> {
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
    /// Worker threads, each with its own SO_REUSEPORT socket; 0 = half the CPUs, at least one [default: 0]
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
        }
    }
}

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

    /// Worker threads to start. The default leaves half the CPUs to the QUIC path and the
    /// control plane, and on a small box keeps batches large: two workers splitting one
    /// load on 2 cores each woke for half-size batches and cost ~1.9x the C baseline per
    /// packet, one worker ~1.1x (benches/RESULTS.md, "Fast path vs C baseline").
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
        .min(MAX_FAST_PATH_WORKERS)
    }

    pub fn ticket_ttl(&self) -> Duration {
        Duration::from_secs(self.ticket_ttl_secs)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers > MAX_FAST_PATH_WORKERS {
            return Err(invalid(
                "fast_path.workers",
                format!(
                    "must be at most {MAX_FAST_PATH_WORKERS}, got {}",
                    self.workers
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

/// The relay's configuration: TOML file and command-line flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for generated state (self-signed certificate, default token key) [default: ./duet-data]
    #[arg(long, required = false, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// This node's id, matched against a token's `node` claim [default: local]
    #[arg(long, required = false, value_name = "ID")]
    pub node_id: String,
    /// QUIC (UDP) listen address [default: 127.0.0.1:4433]
    #[arg(long, required = false, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Ops HTTP listen address: /metrics, /healthz, /readyz [default: 127.0.0.1:9090]
    #[arg(long, required = false, value_name = "ADDR")]
    pub ops_listen: SocketAddr,
    /// Admin HTTP API (E2EE policy) listen address; off unless set.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the admin API's bearer credential; required with admin_listen.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Policy store the admin API serves [default: <data_dir>/policy]
    #[arg(long, value_name = "DIR")]
    pub policy_store: Option<PathBuf>,
    /// TLS certificate chain (PEM). Without it a self-signed one is generated in data_dir.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); required with tls_cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Trusted token keys, `ID=FILE` (hex secret). Without any, a key `default` is
    /// generated in data_dir/token-key.
    #[arg(long = "token-key", value_name = "ID=FILE")]
    pub token_keys: Vec<TokenKeyConfig>,
    /// Allowed clock difference for a token's issue time, seconds [default: 60]
    #[arg(long, required = false, value_name = "SECS")]
    pub token_clock_skew_secs: u64,
    /// Longest token lifetime (exp - iat) accepted, seconds [default: 86400]
    #[arg(long, required = false, value_name = "SECS")]
    pub token_max_lifetime_secs: u64,
    /// Accept legacy HMAC (`duet1`) tokens under keys configured with `secret_file`. Any
    /// holder of such a key can mint, so it is off by default [default: false]
    #[arg(long, required = false, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub allow_legacy_hmac_tokens: bool,
    /// After a drain starts, live sessions are ended after this long, ms [default: 30000]
    #[arg(long, required = false, value_name = "MS")]
    pub drain_deadline_ms: u64,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub fast_path: FastPathConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./duet-data"),
            node_id: "local".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_listen: None,
            admin_token_file: None,
            policy_store: None,
            tls_cert: None,
            tls_key: None,
            token_keys: Vec::new(),
            token_clock_skew_secs: 60,
            token_max_lifetime_secs: duet_proto::token::DEFAULT_MAX_LIFETIME_SECS,
            allow_legacy_hmac_tokens: false,
            drain_deadline_ms: 30_000,
            limits: LimitsConfig::default(),
            fast_path: FastPathConfig::default(),
        }
    }
}

impl Config {
    /// The defaults with every socket on 127.0.0.1, ephemeral ports, state in `data_dir`:
    /// a relay embedded in a test, a demo or the load tester, never clashing with another.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.into(),
            listen: any_port,
            ops_listen: any_port,
            ..Self::default()
        }
    }

    /// Parses a TOML document (unknown fields refused, missing ones defaulted).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads `file` if given (else the defaults), then applies the flags present in
    /// `matches` over it, then validates.
    pub fn load(file: Option<&Path>, matches: Option<&ArgMatches>) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_toml(&text, path)?
            }
            None => Self::default(),
        };
        if let Some(m) = matches {
            cfg.update_from_arg_matches(m)
                .map_err(|e| ConfigError::Flags(e.to_string()))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn node(&self) -> Result<NodeId, ConfigError> {
        NodeId::new(self.node_id.clone()).map_err(|e| invalid("node_id", e.to_string()))
    }

    pub fn drain_deadline(&self) -> Duration {
        Duration::from_millis(self.drain_deadline_ms)
    }

    /// Checks every field; the error names the first bad one.
    /// Where the E2EE policy store lives.
    pub fn policy_store_path(&self) -> PathBuf {
        self.policy_store
            .clone()
            .unwrap_or_else(|| crate::policy::default_store_path(&self.data_dir))
    }

    /// Reads the admin API credential, if the admin API is on.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "admin_token_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let token = text.trim().to_owned();
        if token.len() < 16 {
            return Err(invalid(
                "admin_token_file",
                "must hold a credential of at least 16 characters",
            ));
        }
        Ok(Some(token))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.admin_listen.is_some() && self.admin_token_file.is_none() {
            return Err(invalid(
                "admin_token_file",
                "is required when admin_listen is set (the admin API is never open)",
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key", "is required when tls_cert is set")),
            (None, Some(_)) => return Err(invalid("tls_cert", "is required when tls_key is set")),
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.token_keys {
            if !seen.insert(k.id.as_str()) {
                return Err(invalid(
                    "token_keys",
                    format!("key id {:?} appears twice", k.id),
                ));
            }
            // Checks the id's syntax with a throwaway key; the real one is read at start.
            VerifyingKey::ed25519(k.id.clone(), &[0u8; 32])
                .map_err(|e| invalid("token_keys", format!("key id {:?}: {e}", k.id)))?;
            match (&k.public_key_file, &k.secret_file) {
                (Some(_), None) => {}
                (None, Some(_)) if self.allow_legacy_hmac_tokens => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        "token_keys",
                        format!(
                            "key {:?} is a legacy HMAC secret (anyone holding it can mint); \
                             set allow_legacy_hmac_tokens = true to accept it",
                            k.id
                        ),
                    ))
                }
                _ => {
                    return Err(invalid(
                        "token_keys",
                        format!(
                            "key {:?} needs exactly one of public_key_file or secret_file",
                            k.id
                        ),
                    ))
                }
            }
        }
        if !(60..=7 * 86_400).contains(&self.token_max_lifetime_secs) {
            return Err(invalid(
                "token_max_lifetime_secs",
                format!("must be 60..=604800, got {}", self.token_max_lifetime_secs),
            ));
        }
        if self.token_clock_skew_secs > 3600 {
            return Err(invalid(
                "token_clock_skew_secs",
                format!("must be at most 3600, got {}", self.token_clock_skew_secs),
            ));
        }
        self.limits.validate()?;
        self.fast_path.validate()
    }

    /// Path of the generated default signing key (for `token mint`; `serve` never reads it).
    pub fn default_signing_key_path(&self) -> PathBuf {
        self.data_dir.join(DEFAULT_SIGNING_KEY_FILE)
    }

    /// Path of the generated default key's public half.
    pub fn default_verifying_key_path(&self) -> PathBuf {
        self.data_dir.join(DEFAULT_VERIFYING_KEY_FILE)
    }

    /// The keys this relay verifies tokens with: the configured ones, or with none
    /// configured the default key's public half (the key pair is generated in the data
    /// directory on first use). Only public keys, unless legacy HMAC keys are configured.
    pub fn load_token_keys(&self) -> Result<Vec<VerifyingKey>, ConfigError> {
        if self.token_keys.is_empty() {
            return Ok(vec![self.ensure_default_key_pair()?]);
        }
        self.token_keys
            .iter()
            .map(|k| {
                let (path, legacy) = match (&k.public_key_file, &k.secret_file) {
                    (Some(p), _) => (p, false),
                    (None, Some(p)) => (p, true),
                    (None, None) => return Err(invalid("token_keys", "a key without a file")),
                };
                let text = read_key_file(path)?;
                let key = if legacy {
                    duet_proto::hex::decode(&text)
                        .ok_or_else(|| not_hex(path))
                        .and_then(|secret| {
                            VerifyingKey::legacy_hmac(k.id.clone(), &secret)
                                .map_err(|e| key_error(&k.id, path, e))
                        })?
                } else {
                    VerifyingKey::ed25519_from_hex(k.id.clone(), &text)
                        .map_err(|e| key_error(&k.id, path, e))?
                };
                Ok(key)
            })
            .collect()
    }

    /// The default key pair in the data directory: its public half, after generating both
    /// files if the public one is missing.
    fn ensure_default_key_pair(&self) -> Result<VerifyingKey, ConfigError> {
        let public = self.default_verifying_key_path();
        match std::fs::read_to_string(&public) {
            Ok(text) => VerifyingKey::ed25519_from_hex(DEFAULT_TOKEN_KEY_ID, &text)
                .map_err(|e| key_error(DEFAULT_TOKEN_KEY_ID, &public, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(DEFAULT_TOKEN_KEY_ID)
                    .map_err(|e| key_error(DEFAULT_TOKEN_KEY_ID, &public, e))?;
                let seed = key.seed_hex().unwrap_or_default();
                write_private(
                    &self.default_signing_key_path(),
                    format!("{}\n", seed.as_str()).as_bytes(),
                )?;
                let vk = key.verifying_key();
                let hex = vk.public_hex().unwrap_or_default();
                write_private(&public, format!("{hex}\n").as_bytes())?;
                Ok(vk)
            }
            Err(source) => Err(ConfigError::Io {
                what: "cannot read token key",
                path: public,
                source,
            }),
        }
    }

    /// The key `token mint` signs with: `path` (hex Ed25519 seed) under `id`, or by default
    /// the data directory's generated key pair (created if missing).
    pub fn load_signing_key(
        &self,
        path: Option<&Path>,
        id: Option<&str>,
    ) -> Result<SigningKey, ConfigError> {
        let default = self.default_signing_key_path();
        let (path, id) = match path {
            Some(p) => (p.to_owned(), id.unwrap_or(DEFAULT_TOKEN_KEY_ID)),
            None => {
                if !default.exists() {
                    self.ensure_default_key_pair()?;
                }
                (default, id.unwrap_or(DEFAULT_TOKEN_KEY_ID))
            }
        };
        let text = zeroize::Zeroizing::new(read_key_file(&path)?);
        SigningKey::ed25519_from_hex(id, &text).map_err(|e| key_error(id, &path, e))
    }

    pub fn keyring(keys: &[VerifyingKey]) -> TokenKeyring {
        TokenKeyring::new(keys.to_vec())
    }

    /// How tokens are checked at `now` (Unix seconds).
    pub fn verify_options(&self, now: u64) -> VerifyOptions {
        VerifyOptions {
            now,
            skew_secs: self.token_clock_skew_secs,
            max_lifetime_secs: self.token_max_lifetime_secs,
        }
    }
}

fn read_key_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        what: "cannot read token key",
        path: path.to_owned(),
        source,
    })
}

fn not_hex(path: &Path) -> ConfigError {
    invalid("token_keys", format!("{} is not hex", path.display()))
}

fn key_error(id: &str, path: &Path, e: duet_proto::TokenError) -> ConfigError {
    invalid(
        "token_keys",
        format!("key {id:?} ({}): {e}", path.display()),
    )
}

/// Creates the data directory if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
        what: "cannot create data directory",
        path: dir.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` readable by its owner only (where the platform allows).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    let io = |source| ConfigError::Io {
        what: "cannot write",
        path: path.to_owned(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, contents).map_err(io)
}

/// Parses a duration in the project's one grammar (see [`duet_proto::duration`]); kept
/// here as a clap value parser.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duet_proto::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        cfg: Config,
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        let parsed = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../duet-relay.example.toml");
        let parsed = Config::from_toml(text, Path::new("duet-relay.example.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let e = Config::from_toml("listen_addr = \"1.2.3.4:5\"", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let e = Config::from_toml("[limits]\nbogus = 1", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut c = Config::default();
        c.limits.signals_per_sec = 0;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("limits.signals_per_sec"), "{e}");
        let c = Config {
            node_id: "has space".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("node_id"));
        let c = Config {
            tls_cert: Some("a.pem".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("tls_key"));
        let e = Config::from_toml("listen = \"not an addr\"", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_only_given_flags() {
        let file = "node_id = \"n1\"\nlisten = \"127.0.0.1:5000\"\n[limits]\nsignals_per_sec = 7\nmax_sessions = 3\n";
        let mut cfg = Config::from_toml(file, Path::new("x.toml")).unwrap();
        let m = Cli::command()
            .try_get_matches_from(["x", "--listen", "127.0.0.1:6000", "--max-sessions", "9"])
            .unwrap();
        cfg.update_from_arg_matches(&m).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(cfg.node_id, "n1");
        assert_eq!(cfg.limits.signals_per_sec, 7);
        assert_eq!(cfg.limits.max_sessions, 9);
        assert_eq!(cfg.ops_listen, Config::default().ops_listen);
        let m = Cli::command()
            .try_get_matches_from(["x", "--token-key", "k1=/tmp/k1"])
            .unwrap();
        cfg.update_from_arg_matches(&m).unwrap();
        assert_eq!(cfg.token_keys[0].id, "k1");
        let m = Cli::command()
            .try_get_matches_from([
                "x",
                "--fast-path-enabled",
                "false",
                "--fast-path-listen",
                "127.0.0.1:7000",
                "--fast-path-workers",
                "3",
            ])
            .unwrap();
        cfg.update_from_arg_matches(&m).unwrap();
        assert!(!cfg.fast_path.enabled);
        assert_eq!(cfg.fast_path.worker_count(), 3);
        assert_eq!(
            cfg.fast_path.listen_addr(cfg.listen),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(cfg.fast_path.ticket_ttl_secs, 600, "not given, not changed");
    }

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

    #[test]
    fn default_token_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let k1 = cfg.load_token_keys().unwrap();
        let k2 = cfg.load_token_keys().unwrap();
        assert_eq!(k1[0].id(), "default");
        assert!(
            k1[0].public_key().is_some(),
            "serve holds a public key only"
        );
        let signer = cfg.load_signing_key(None, None).unwrap();
        let claims = duet_proto::JoinClaims::builder(
            "s".parse().unwrap(),
            "u".parse().unwrap(),
            "d".parse().unwrap(),
        )
        .issued_at(1)
        .ttl(Duration::from_secs(99))
        .build()
        .unwrap();
        let t = duet_proto::JoinToken::mint(&signer, &claims);
        assert!(TokenKeyring::new(k2)
            .verify(&t, &cfg.verify_options(2))
            .is_ok());
        let text = std::fs::read_to_string(cfg.default_signing_key_path()).unwrap();
        assert_eq!(duet_proto::hex::decode(&text).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cfg.default_signing_key_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the signing key is private");
        }
    }

    #[test]
    fn legacy_hmac_keys_need_the_switch() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hmac");
        std::fs::write(&secret, duet_proto::hex::encode(&[4u8; 32])).unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_owned(),
            token_keys: vec![TokenKeyConfig {
                id: "old".into(),
                public_key_file: None,
                secret_file: Some(secret),
            }],
            ..Config::default()
        };
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("allow_legacy_hmac_tokens"), "{e}");
        cfg.allow_legacy_hmac_tokens = true;
        cfg.validate().unwrap();
        let keys = cfg.load_token_keys().unwrap();
        assert_eq!(keys[0].alg(), duet_proto::TokenAlg::LegacyHmac);
        let e = Config {
            token_max_lifetime_secs: 10,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("token_max_lifetime_secs"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }
}

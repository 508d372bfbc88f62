//! The relay's one configuration type: the TOML file schema and the command-line flags.
//!
//! Owns: field names, defaults, validation (a bad value is refused at start with the field
//! named) and the embedded defaults written into the data directory (token key). It does not
//! own TLS material (see `tls`) nor what the limits mean at run time (see `session`,
//! `forward`).
//!
//! Files: this one (the top-level schema, loading, validation), `sections` (the `[limits]`
//! and `[fast_path]` tables), `admission` (the `[admission]` table), `http` (`[http]`, bounds of the HTTP listeners), `keys` (token key files: the trusted public keys, the default
//! key pair, the signing key `token mint` uses), `files` (private files, the data
//! directory, the duration value parser).
//!
//! Precedence: built-in defaults < the TOML file (`--config`) < flags given on the command
//! line. `Config` derives both `serde::Deserialize` (every field defaulted, unknown fields
//! refused) and `clap::Args`; no flag has a clap default, so `update_from_arg_matches` only
//! overwrites the fields whose flags were actually given.

mod admission;
mod files;
mod http;
mod keys;
mod reset_key;
mod sections;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};
use duet_proto::NodeId;
use serde::{Deserialize, Serialize};

pub use admission::AdmissionConfig;
pub use files::{ensure_dir, parse_duration, write_private};
pub use http::HttpConfig;
pub use keys::{
    TokenKeyConfig, DEFAULT_SIGNING_KEY_FILE, DEFAULT_TOKEN_KEY_ID, DEFAULT_VERIFYING_KEY_FILE,
};
pub use reset_key::RESET_KEY_FILE;
pub use sections::{FastPathConfig, LimitsConfig, MAX_FAST_PATH_WORKERS};

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

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Most runtime threads; past this a typo, not a machine.
pub const MAX_RUNTIME_WORKERS: usize = 1024;

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
    /// File holding the bearer credential of the ops listener's drain endpoints
    /// (`/admin/drain`, `/admin/undrain`, `/admin/status`); they are off unless set.
    #[arg(long, value_name = "FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM). Without it a self-signed one is generated in data_dir.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); required with tls_cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// QUIC stateless-reset key (hex, >= 32 bytes), e.g. shared by relays behind one
    /// address [default: <data_dir>/stateless-reset-key, generated on first start]
    #[arg(long, value_name = "FILE")]
    pub stateless_reset_key_file: Option<PathBuf>,
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
    /// Threads of the async runtime that carries QUIC (media datagrams, control, joins); the
    /// fast path (`fast_path.workers`) and the ops listener have their own. 0: one per CPU.
    /// At ~50 datagrams/s per connection every datagram is its own chain of task wake-ups,
    /// and each hop between two runtime threads costs a futex wake [default: 0]
    #[arg(long, required = false, value_name = "N")]
    pub runtime_workers: usize,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub fast_path: FastPathConfig,
    #[command(flatten)]
    pub admission: AdmissionConfig,
    #[command(flatten)]
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./duet-data"),
            node_id: "local".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            ops_token_file: None,
            tls_cert: None,
            tls_key: None,
            stateless_reset_key_file: None,
            token_keys: Vec::new(),
            token_clock_skew_secs: 60,
            token_max_lifetime_secs: duet_proto::token::DEFAULT_MAX_LIFETIME_SECS,
            allow_legacy_hmac_tokens: false,
            drain_deadline_ms: 30_000,
            runtime_workers: 0,
            limits: LimitsConfig::default(),
            fast_path: FastPathConfig::default(),
            admission: AdmissionConfig::default(),
            http: HttpConfig::default(),
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

    /// The runtime's thread count: `runtime_workers`, or one per CPU for 0.
    pub fn runtime_worker_count(&self) -> usize {
        match self.runtime_workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// Checks every field; the error names the first bad one.
    /// Reads the drain endpoints' credential, if they are on.
    pub fn ops_token(&self) -> Result<Option<String>, ConfigError> {
        read_credential("ops_token_file", self.ops_token_file.as_deref())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key", "is required when tls_cert is set")),
            (None, Some(_)) => return Err(invalid("tls_cert", "is required when tls_key is set")),
            _ => {}
        }
        self.validate_token_keys()?;
        if !(60..=7 * 86_400).contains(&self.token_max_lifetime_secs) {
            return Err(invalid(
                "token_max_lifetime_secs",
                format!("must be 60..=604800, got {}", self.token_max_lifetime_secs),
            ));
        }
        if self.runtime_workers > MAX_RUNTIME_WORKERS {
            return Err(invalid(
                "runtime_workers",
                format!(
                    "must be 0..={MAX_RUNTIME_WORKERS}, got {}",
                    self.runtime_workers
                ),
            ));
        }
        if self.token_clock_skew_secs > 3600 {
            return Err(invalid(
                "token_clock_skew_secs",
                format!("must be at most 3600, got {}", self.token_clock_skew_secs),
            ));
        }
        self.limits.validate()?;
        self.admission.validate()?;
        self.http.validate()?;
        self.fast_path.validate()
    }
}

/// A bearer credential from `path` (trimmed, at least 16 characters).
pub fn read_credential(
    field: &'static str,
    path: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        return Err(invalid(
            field,
            "must hold a credential of at least 16 characters",
        ));
    }
    Ok(Some(token))
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
        let text = include_str!("../../duet-relay.example.toml");
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
        let c = Config {
            runtime_workers: MAX_RUNTIME_WORKERS + 1,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("runtime_workers"));
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
                "--runtime-workers",
                "1",
            ])
            .unwrap();
        cfg.update_from_arg_matches(&m).unwrap();
        assert!(!cfg.fast_path.enabled);
        assert_eq!(cfg.fast_path.worker_count(), 3);
        assert_eq!(cfg.runtime_worker_count(), 1);
        assert_eq!(
            cfg.fast_path.listen_addr(cfg.listen),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(cfg.fast_path.ticket_ttl_secs, 600, "not given, not changed");
    }
}

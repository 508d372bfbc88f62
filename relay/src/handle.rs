//! A running relay: its addresses, certificate, keys, counts, drain, shutdown, and the
//! start-up banner the binary prints ([`RelayHandle::describe`]).
//!
//! Owns nothing but handles on what `Relay::start` built; every rule is in `session`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::{CloseCode, NodeId, VerifyingKey};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::keyring::LiveKeyring;
use crate::quic::driver::{Driver, DRAIN_GRACE};
use crate::tls::{CertStore, TlsError};

/// A running relay.
pub struct RelayHandle {
    pub(crate) driver: Arc<Driver>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) quic_addr: SocketAddr,
    pub(crate) fast_path_addr: Option<SocketAddr>,
    pub(crate) ops_addr: SocketAddr,
    pub(crate) store: Arc<CertStore>,
    pub(crate) keys: Arc<LiveKeyring>,
    pub(crate) node: NodeId,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// The ops listener's thread, stopped when the handle goes.
    pub(crate) _ops: crate::http::ServeThread,
}

impl RelayHandle {
    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound fast-path (raw UDP) address, when the fast path is on.
    pub fn fast_path_addr(&self) -> Option<SocketAddr> {
        self.fast_path_addr
    }

    /// The bound ops HTTP address.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// PEM of the certificate chain in use (for clients to trust a self-signed one).
    pub fn cert_pem(&self) -> Vec<u8> {
        self.store.cert_pem()
    }

    /// Where the certificate and key were read from.
    pub fn cert_path(&self) -> PathBuf {
        self.store.paths().cert.clone()
    }

    pub fn key_path(&self) -> PathBuf {
        self.store.paths().key.clone()
    }

    pub fn cert_is_self_signed(&self) -> bool {
        self.store.paths().self_signed
    }

    /// Every key this relay verifies tokens with now (public keys; it holds no signing key).
    pub fn token_keys(&self) -> Vec<VerifyingKey> {
        self.keys.keys()
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    pub fn config(&self) -> &Config {
        &self.driver.cfg
    }

    /// The Prometheus text of this relay's metrics (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.driver.render_metrics()
    }

    pub fn session_count(&self) -> usize {
        self.driver.session_count()
    }

    pub fn endpoint_count(&self) -> usize {
        self.driver.endpoint_count()
    }

    /// Starts draining: readiness goes false, new joins get `RelayDraining`, live sessions
    /// go on until they end or the drain deadline, then get `SessionEnded(RelayShutdown)`.
    pub fn drain(&self) {
        self.driver.drain();
    }

    pub fn is_draining(&self) -> bool {
        self.driver.is_draining()
    }

    /// [`RelayHandle::drain`] with its own deadline, ending the sessions left once no more
    /// than `min_sessions` remain (what `POST /admin/drain` does). False when already
    /// draining.
    pub fn drain_with(&self, deadline: Duration, min_sessions: usize) -> bool {
        self.driver.drain_with(deadline, min_sessions)
    }

    /// Back to serving (readiness true, joins taken); false when not draining.
    pub fn undrain(&self) -> bool {
        self.driver.undrain()
    }

    pub fn drain_status(&self) -> crate::session::DrainStatus {
        self.driver.drain_status()
    }

    /// Waits until a drain has emptied the relay (sessions ended, or the deadline passed and
    /// they were ended). Returns at once if not draining and empty.
    pub async fn drained(&self) {
        let until = Instant::now() + self.driver.cfg.drain_deadline() + DRAIN_GRACE;
        while self.session_count() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The start-up banner: version, node, where every file and socket is, one per line.
    pub fn describe(&self) -> String {
        let c = self.config();
        let mut out = String::new();
        let mut line = |s: std::fmt::Arguments<'_>| {
            let _ = out.write_fmt(s);
            out.push('\n');
        };
        line(format_args!(
            "duet-relay {} serving",
            env!("CARGO_PKG_VERSION")
        ));
        line(format_args!("  node id     {}", self.node_id()));
        line(format_args!("  data dir    {}", c.data_dir.display()));
        let self_signed = if self.cert_is_self_signed() {
            " (self-signed: clients must trust this file)"
        } else {
            ""
        };
        line(format_args!(
            "  certificate {}{self_signed}",
            self.cert_path().display()
        ));
        line(format_args!("  tls key     {}", self.key_path().display()));
        if c.token_keys.is_empty() {
            line(format_args!(
                "  token key   {} (id \"default\"; `token mint` signs with {})",
                c.default_verifying_key_path().display(),
                c.default_signing_key_path().display()
            ));
        }
        for k in &c.token_keys {
            let (file, kind) = match (&k.public_key_file, &k.secret_file) {
                (Some(p), _) => (p, "ed25519 public key"),
                (None, Some(p)) => (p, "legacy HMAC secret"),
                (None, None) => continue,
            };
            line(format_args!(
                "  token key   {} (id {:?}, {kind})",
                file.display(),
                k.id
            ));
        }
        line(format_args!("  quic        {}", self.quic_addr()));
        match self.fast_path_addr() {
            Some(fp) => line(format_args!(
                "  fast path   {fp} (raw UDP; tickets handed out over QUIC)"
            )),
            None => line(format_args!("  fast path   off")),
        }
        // The runtime's own count, not the setting: what `runtime_workers` gave in fact. Before
        // the ops line, which ends the banner for those who wait on it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let n = rt.metrics().num_workers();
            let s = if n == 1 { "" } else { "s" };
            line(format_args!(
                "  runtime     {n} worker thread{s} (QUIC, control, ops)"
            ));
        }
        line(format_args!(
            "  ops http    http://{}/metrics /healthz /readyz",
            self.ops_addr()
        ));
        if c.ops_token_file.is_some() {
            line(format_args!(
                "  drain api   http://{}/admin/drain /admin/undrain /admin/status (bearer credential from ops_token_file)",
                self.ops_addr()
            ));
        }
        out
    }

    /// Re-reads the certificate and key files (SIGHUP). On error the old ones stay.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.store.reload()
    }

    /// Puts `reread`'s token keys in force (its `token_keys` and `allow_legacy_hmac_tokens`;
    /// every other field of the running configuration stays): joins from now on are verified
    /// with exactly those keys, live sessions are untouched. Returns how many keys are in
    /// force; on any error (a key file missing or not a key, a duplicate id) the old keys
    /// stay.
    pub fn reload_token_keys(&self, reread: &Config) -> Result<usize, ConfigError> {
        let mut cfg = self.config().clone();
        cfg.token_keys = reread.token_keys.clone();
        cfg.allow_legacy_hmac_tokens = reread.allow_legacy_hmac_tokens;
        self.keys.reload(&cfg)
    }

    /// What SIGHUP does for token keys: reads the configuration as `serve` did at start
    /// (`file`, then the flags in `matches`) and applies its token keys
    /// ([`RelayHandle::reload_token_keys`]). A file that no longer parses keeps the old keys.
    pub fn reload_token_keys_from(
        &self,
        file: Option<&std::path::Path>,
        matches: Option<&clap::ArgMatches>,
    ) -> Result<usize, ConfigError> {
        let reread = Config::load(file, matches);
        if reread.is_err() {
            self.keys.reload_failed();
        }
        self.reload_token_keys(&reread?)
    }

    /// Stops at once: every connection closed, sockets released.
    pub async fn shutdown(self) {
        let _ = self.driver.shutdown.send(true);
        self.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::Shutdown.to_u32()),
            b"relay shutdown",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        for t in self.tasks {
            t.abort();
        }
        if let Some(fp) = self.driver.fast_path.clone() {
            // Joining threads blocks for up to one poll interval: not on the runtime.
            let _ = tokio::task::spawn_blocking(move || fp.stop()).await;
        }
    }
}

//! duet-relay: pairs exactly two end-to-end encrypted endpoints per session and forwards
//! their opaque frames over QUIC. It holds no media keys: its only secrets are its TLS key
//! and its token-verification keys.
//!
//! Start one in-process with [`Relay::start`]; the `duet-relay` binary is a thin shell
//! around it ([`RelayHandle::describe`] is its banner).
//!
//! Module map (what each owns; what it does not):
//! - `session`: the sans-IO session core, every control-plane rule (join and token
//!   verification, pairing, resume, signals and their limits, feature refusals, tickets,
//!   timers, drain). No sockets, no clock, no QUIC.
//! - `quic`: the QUIC driver: endpoint setup, one task per connection moving control bytes
//!   to and from the core, the media datagram loop, the fast-path bridge. Decides nothing.
//! - `forward`: the forwarding vocabulary of both transports: `DropReason` (one label
//!   scheme), the one rate limiter (GCRA over atomics), the QUIC per-datagram step.
//! - `fastpath`: the raw-UDP fast path: channel table, batched socket, workers, the service,
//!   and the plane the core allocates channels and mints offers through.
//! - `config` (file + flags, key files), `tls` (rustls, certificates, key-exchange
//!   counting), `metrics` + `ops` (Prometheus, health, readiness), `http` (every HTTP
//!   listener's bounds: connection cap, header and request timeouts, body size),
//!   `process_metrics` (`process_*` from /proc), `keyring` (the token keys in force,
//!   swapped on SIGHUP), `handle` (the
//!   running relay); for the binary: `notify` (systemd), `healthcheck` (`/healthz` client),
//!   `ops_cli` (`drain`, `undrain`, `status` against a running relay), `probe` (the
//!   data-plane probe), `exit_status` (78 for a bad configuration), `fd_limit` (the
//!   open-file limit, raised at start).
//!
//! One datagram through the relay, at most three files per transport:
//! - QUIC: `quic/media.rs` (read, hand-off) -> `forward.rs` (`forward_step`: header, budget,
//!   peer) -> back in `media.rs`, or `fastpath/service.rs` (`send_bridged`) when the peer is
//!   bound on the fast path.
//! - Fast path: `fastpath/worker.rs` (receive batch, send batch) -> `fastpath/table.rs`
//!   (`process`: header, binding, source check, budget from `forward.rs`, verdict) -> back in
//!   `worker.rs`, or `quic/bridge.rs` when the peer is on QUIC. The syscalls are in
//!   `fastpath/socket/`.
//!
//! Tests: `tests/` drive the relay with raw clients, the binary and `/metrics` (helpers from
//! the `duet-testkit` crate); the tests with SDK clients are in `testkit/tests/`.

pub mod config;
pub mod exit_status;
pub mod fastpath;
pub mod fd_limit;
pub mod forward;
mod handle;
pub mod healthcheck;
pub mod http;
pub mod keyring;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod ops_cli;
pub mod probe;
mod process_metrics;
pub mod quic;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{
    AdmissionConfig, Config, ConfigError, FastPathConfig, HttpConfig, LimitsConfig, TokenKeyConfig,
};
pub use handle::RelayHandle;
pub use tls::TlsError;

use crate::fastpath::FastPathService;
use crate::metrics::RelayMetrics;
use crate::quic::bridge::Bridge;
use crate::quic::driver::{run_timers, Driver};
use crate::tls::{CertPaths, CertStore};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the {what} listener's thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Entry point: `Relay::start(config)`.
pub struct Relay;

impl Relay {
    /// Validates `config`, prepares the data directory (self-signed certificate, default
    /// token key) when needed, binds the QUIC and ops sockets and starts serving.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<RelayHandle, RelayError> {
        config.validate()?;
        config::ensure_dir(&config.data_dir)?;
        let node = config.node()?;
        let metrics = RelayMetrics::new();
        let keys = keyring::LiveKeyring::new(config.load_token_keys()?, &metrics);
        metrics
            .max_sessions
            .set(f64::from(config.limits.max_sessions));

        let provider = Arc::new(tls::provider(&metrics));
        let paths = CertPaths::resolve(&config)?;
        let store = Arc::new(CertStore::load(paths, provider.clone())?);
        let tls_cfg = tls::server_config(provider, store.clone())?;
        let server_cfg = quic::quinn_server_config(tls_cfg)?;
        let reset_key = config.stateless_reset_key()?;
        let endpoint =
            quic::bind_endpoint(server_cfg, config.listen, &reset_key).map_err(|source| {
                RelayError::Bind {
                    what: "QUIC",
                    addr: config.listen,
                    source,
                }
            })?;
        let quic_addr = endpoint.local_addr().map_err(|source| RelayError::Bind {
            what: "QUIC",
            addr: config.listen,
            source,
        })?;
        let ops_listener = tokio::net::TcpListener::bind(config.ops_listen)
            .await
            .map_err(|source| RelayError::Bind {
                what: "ops HTTP",
                addr: config.ops_listen,
                source,
            })?;
        let ops_addr = ops_listener
            .local_addr()
            .map_err(|source| RelayError::Bind {
                what: "ops HTTP",
                addr: config.ops_listen,
                source,
            })?;

        let fast_path = if config.fast_path.enabled {
            let max_sessions = config.limits.max_sessions as usize;
            let bridge = Arc::new(Bridge::new(max_sessions));
            let addr = config.fast_path.listen_addr(config.listen);
            let capacity = u32::try_from(max_sessions).unwrap_or(u32::MAX);
            let service = FastPathService::start(&config.fast_path, addr, capacity, bridge.clone())
                .map_err(|source| RelayError::Bind {
                    what: "fast path",
                    addr,
                    source,
                })?;
            Some((Arc::new(service), bridge))
        } else {
            None
        };
        let fast_path_addr = fast_path.as_ref().map(|(s, _)| s.local_addr());
        let config = Arc::new(config);
        let driver = Driver::new(config.clone(), keys.clone(), metrics, fast_path)?;

        let tasks = vec![
            tokio::spawn(quic::endpoint::accept_loop(
                driver.clone(),
                endpoint.clone(),
            )),
            tokio::spawn(run_timers(driver.clone())),
        ];
        let router = ops::router(ops::OpsState {
            driver: driver.clone(),
            endpoint: endpoint.clone(),
            token: config.ops_token()?.map(Arc::from),
        });
        // A thread of its own: health checks and scrapes must answer when QUIC keeps
        // every worker of this runtime busy (RESULTS.md, "10,000 E2EE sessions held").
        let ops = http::serve_on_thread(
            "ops",
            ops_listener,
            router,
            config.http.clone(),
            driver.shutdown.subscribe(),
        )
        .map_err(|source| RelayError::Thread {
            what: "ops",
            source,
        })?;
        tracing::info!(%quic_addr, ?fast_path_addr, %ops_addr, node = %node, "relay listening");
        Ok(RelayHandle {
            driver,
            endpoint,
            quic_addr,
            fast_path_addr,
            ops_addr,
            store,
            keys,
            node,
            tasks,
            _ops: ops,
        })
    }
}

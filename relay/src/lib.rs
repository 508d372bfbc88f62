//! duet-relay: pairs exactly two end-to-end encrypted endpoints per session and forwards
//! their opaque frames over QUIC. It holds no media keys: its only secrets are its TLS key
//! and its token-verification keys.
//!
//! Start one in-process with [`Relay::start`]; the `duet-relay` binary is a thin shell
//! around it. Module map: `config` (file + flags), `tls` (rustls, certificates, key-exchange
//! counting), `session` (sans-IO session rules), `limits` (rate limiters), `forward` (the
//! per-datagram step), `server` (QUIC I/O), `metrics` + `ops` (Prometheus, health),
//! `policy` (the administrator's E2EE policy store), `process_metrics` (`process_*` from
//! /proc); for the binary: `notify` (systemd readiness), `healthcheck` (`/healthz` client),
//! `exit_status` (78 for a bad configuration).
//!
//! Tests: `tests/` drive the relay with raw clients, the binary and `/metrics` (helpers from
//! the `duet-testkit` crate); the tests with SDK clients are in `testkit/tests/`.

pub mod config;
pub mod exit_status;
pub mod fastpath;
pub mod forward;
pub mod healthcheck;
pub mod limits;
pub mod metrics;
pub mod notify;
mod ops;
pub mod policy;
mod process_metrics;
pub mod server;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::{NodeId, VerifyingKey};
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError, FastPathConfig, LimitsConfig, TokenKeyConfig};
pub use tls::TlsError;

use crate::fastpath::FastPathService;
use crate::metrics::RelayMetrics;
use crate::server::Shared;
use crate::session::TableConfig;
use crate::tls::{CertPaths, CertStore};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("policy store: {0}")]
    PolicyStore(#[from] policy::StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
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
        let keys = config.load_token_keys()?;
        let metrics = RelayMetrics::new();
        metrics
            .max_sessions
            .set(f64::from(config.limits.max_sessions));

        let provider = Arc::new(tls::provider(&metrics));
        let paths = CertPaths::resolve(&config)?;
        let store = Arc::new(CertStore::load(paths, provider.clone())?);
        let tls_cfg = tls::server_config(provider, store.clone())?;
        let server_cfg = server::quinn_server_config(tls_cfg)?;
        let endpoint = server::bind_endpoint(server_cfg, config.listen).map_err(|source| {
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

        let table = TableConfig {
            node: node.clone(),
            max_sessions: config.limits.max_sessions as usize,
            resume_window: config.limits.resume_window(),
            idle_timeout: config.limits.idle_timeout(),
            max_lifetime: config.limits.max_session(),
            limits: config.limits.to_wire(),
        };
        let fast_path = if config.fast_path.enabled {
            let routes = Arc::new(server::FastPathRoutes::new(table.max_sessions));
            let addr = config.fast_path.listen_addr(config.listen);
            let capacity = u32::try_from(table.max_sessions).unwrap_or(u32::MAX);
            let service = FastPathService::start(&config.fast_path, addr, capacity, routes.clone())
                .map_err(|source| RelayError::Bind {
                    what: "fast path",
                    addr,
                    source,
                })?;
            Some((Arc::new(service), routes))
        } else {
            None
        };
        let fast_path_addr = fast_path.as_ref().map(|(s, _)| s.local_addr());
        let config = Arc::new(config);
        let shared = Shared::new(
            config.clone(),
            config::Config::keyring(&keys),
            metrics,
            table,
            fast_path,
        );

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(server::accept_loop(
            shared.clone(),
            endpoint.clone(),
        )));
        tasks.push(tokio::spawn(server::ticker(shared.clone())));
        let router = ops::router(ops::OpsState {
            shared: shared.clone(),
            endpoint: endpoint.clone(),
        });
        let mut stop = shared.shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(ops_listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "ops HTTP server failed");
            }
        }));
        let admin_addr = match (config.admin_listen, config.admin_token()?) {
            (Some(addr), Some(token)) => {
                let store = policy::PolicyStore::open(config.policy_store_path())?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| RelayError::Bind {
                        what: "admin HTTP",
                        addr,
                        source,
                    })?;
                let bound = listener.local_addr().map_err(|source| RelayError::Bind {
                    what: "admin HTTP",
                    addr,
                    source,
                })?;
                let router = policy::router(store, token);
                let mut stop = shared.shutdown.subscribe();
                tasks.push(tokio::spawn(async move {
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = stop.changed().await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "admin HTTP server failed");
                    }
                }));
                Some(bound)
            }
            _ => None,
        };
        tracing::info!(%quic_addr, ?fast_path_addr, %ops_addr, ?admin_addr, node = %node, "relay listening");
        Ok(RelayHandle {
            shared,
            endpoint,
            quic_addr,
            fast_path_addr,
            ops_addr,
            admin_addr,
            store,
            keys,
            node,
            tasks,
        })
    }
}

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    quic_addr: SocketAddr,
    fast_path_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    ops_addr: SocketAddr,
    store: Arc<CertStore>,
    keys: Vec<VerifyingKey>,
    node: NodeId,
    tasks: Vec<JoinHandle<()>>,
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

    /// The admin HTTP API's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
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

    /// Every key this relay verifies tokens with (public keys; it holds no signing key).
    pub fn token_keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// The Prometheus text of this relay's metrics (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.shared.render_metrics()
    }

    pub fn session_count(&self) -> usize {
        self.shared.session_count()
    }

    pub fn endpoint_count(&self) -> usize {
        self.shared.endpoint_count()
    }

    /// Starts draining: readiness goes false, new joins get `RelayDraining`, live sessions
    /// go on until they end or the drain deadline, then get `SessionEnded(RelayShutdown)`.
    pub fn drain(&self) {
        self.shared.drain();
    }

    pub fn is_draining(&self) -> bool {
        self.shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until a drain has emptied the relay (sessions ended, or the deadline passed and
    /// they were ended). Returns at once if not draining and empty.
    pub async fn drained(&self) {
        let until = Instant::now() + self.shared.cfg.drain_deadline() + Duration::from_secs(2);
        while self.session_count() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Re-reads the certificate and key files (SIGHUP). On error the old ones stay.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.store.reload()
    }

    /// Stops at once: every connection closed, sockets released.
    pub async fn shutdown(self) {
        let _ = self.shared.shutdown.send(true);
        self.endpoint.close(
            quinn::VarInt::from_u32(server::close_code::SHUTDOWN),
            b"relay shutdown",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        for t in self.tasks {
            t.abort();
        }
        if let Some(fp) = self.shared.fast_path.clone() {
            // Joining threads blocks for up to one poll interval: not on the runtime.
            let _ = tokio::task::spawn_blocking(move || fp.stop()).await;
        }
    }
}

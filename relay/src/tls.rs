//! TLS for the control connection: rustls on the aws-lc-rs provider, TLS 1.3 only, ALPN
//! `duet/1`, hybrid post-quantum key exchange (X25519MLKEM768) preferred.
//!
//! Owns: the server certificate (loaded from the configured files, or a self-signed one
//! generated into the data directory), its reload without restart (`CertStore::reload`, the
//! binary calls it on SIGHUP), and the counting of key-exchange groups actually used
//! (`duet_tls_key_exchange_total{group}`), which is how a test proves the hop is
//! post-quantum. It does not own the QUIC transport settings (see `quic::endpoint`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::{Counter, Label};
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{NamedGroup, ProtocolVersion};

use crate::config::{self, Config, ConfigError};
use crate::metrics::RelayMetrics;

pub const SELF_SIGNED_CERT: &str = "cert.pem";
pub const SELF_SIGNED_KEY: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// The leaf certificate is expired or not valid yet: refused at start and on reload,
    /// since clients would refuse it anyway.
    #[error("{path}: certificate {reason}")]
    Validity { path: PathBuf, reason: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS setup failed: {0}")]
    Quic(String),
}

/// Where the certificate and key come from.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generated here, self-signed for localhost / 127.0.0.1 / ::1.
    pub self_signed: bool,
}

impl CertPaths {
    /// The configured files, or the self-signed pair in the data directory (generated now
    /// if missing).
    pub fn resolve(cfg: &Config) -> Result<Self, TlsError> {
        if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
            return Ok(Self {
                cert: cert.clone(),
                key: key.clone(),
                self_signed: false,
            });
        }
        let cert = cfg.data_dir.join(SELF_SIGNED_CERT);
        let key = cfg.data_dir.join(SELF_SIGNED_KEY);
        if !(cert.exists() && key.exists()) {
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
            config::write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
            config::write_private(&cert, ck.cert.pem().as_bytes())?;
        }
        Ok(Self {
            cert,
            key,
            self_signed: true,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads a certificate chain and key from PEM files into a rustls `CertifiedKey`.
/// Returns it and the chain's PEM text (what a client trusts for a self-signed cert).
pub fn load_certified_key(
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<u8>), TlsError> {
    let cert_pem = read(&paths.cert)?;
    let key_pem = read(&paths.key)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: paths.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: paths.cert.clone(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: paths.key.clone(),
            reason: "no PRIVATE KEY block".into(),
        })?;
    check_validity(&chain[0], duet_proto::clock::unix_now()).map_err(|reason| {
        TlsError::Validity {
            path: paths.cert.clone(),
            reason,
        }
    })?;
    let ck = CertifiedKey::from_der(chain, key, provider)?;
    Ok((ck, cert_pem))
}

/// Whether `leaf` is valid at `now_unix` (seconds); the error says why not.
pub fn check_validity(leaf: &CertificateDer<'_>, now_unix: u64) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("cannot be parsed: {e}"))?;
    let v = cert.validity();
    let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
    let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
    if now < from {
        return Err(format!(
            "is not valid yet (not before {}, {}s from now)",
            v.not_before,
            from - now
        ));
    }
    if now > until {
        return Err(format!(
            "expired (not after {}, {}s ago)",
            v.not_after,
            now - until
        ));
    }
    Ok(())
}

/// The server certificate, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    paths: CertPaths,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    pem: ArcSwap<Vec<u8>>,
}

impl CertStore {
    pub fn load(paths: CertPaths, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let (ck, pem) = load_certified_key(&paths, &provider)?;
        Ok(Self {
            paths,
            provider,
            current: ArcSwap::from_pointee(ck),
            pem: ArcSwap::from_pointee(pem),
        })
    }

    /// Reads the files again; on error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (ck, pem) = load_certified_key(&self.paths, &self.provider)?;
        self.current.store(Arc::new(ck));
        self.pem.store(Arc::new(pem));
        Ok(())
    }

    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    /// PEM of the certificate chain in use.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.pem.load().as_ref().clone()
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// Stable metrics label of a key-exchange group.
pub fn group_label(g: NamedGroup) -> &'static str {
    match g {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        NamedGroup::secp256r1MLKEM768 => "secp256r1MLKEM768",
        NamedGroup::MLKEM768 => "MLKEM768",
        NamedGroup::MLKEM1024 => "MLKEM1024",
        _ => "other",
    }
}

/// A key-exchange group that delegates to the provider's and counts each use.
struct CountingKx {
    inner: &'static dyn SupportedKxGroup,
    uses: Counter,
}

impl std::fmt::Debug for CountingKx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountingKx({:?})", self.inner.name())
    }
}

impl SupportedKxGroup for CountingKx {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        self.uses.increment(1);
        self.inner.start()
    }

    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<CompletedKeyExchange, rustls::Error> {
        self.uses.increment(1);
        self.inner.start_and_complete(peer_pub_key)
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}

/// The aws-lc-rs provider with the hybrid post-quantum group first and every group counted
/// in this relay's metrics. (The wrappers are leaked: a few bytes per relay started.)
pub fn provider(metrics: &RelayMetrics) -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let groups: [&'static dyn SupportedKxGroup; 4] = [
        kx_group::X25519MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
    ];
    let mut p = default_provider();
    p.kx_groups = groups
        .into_iter()
        .map(|inner| {
            let uses = metrics.counter(
                "duet_tls_key_exchange_total",
                vec![Label::from_static_parts("group", group_label(inner.name()))],
            );
            let leaked: &'static CountingKx = Box::leak(Box::new(CountingKx { inner, uses }));
            leaked as &'static dyn SupportedKxGroup
        })
        .collect();
    p
}

/// The rustls server config: TLS 1.3 only, ALPN duet/1, certificates from `store`.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.alpn_protocols = vec![duet_proto::ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    // No TLS resumption: the SDK builds a fresh client config (and session cache) for each
    // connection, so a ticket is never presented again. rustls' default of two tickets per
    // handshake cost every join two stores into a locked 256-entry cache, four random draws,
    // two resumption-secret derivations and ~200 bytes of CRYPTO frames for nothing (see
    // RESULTS.md, "Relay CPU per join, session 3").
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay config keeping its files in `dir`, and the relay's crypto provider.
    fn in_data_dir(dir: &Path) -> (Config, Arc<CryptoProvider>) {
        let cfg = Config {
            data_dir: dir.to_owned(),
            ..Config::default()
        };
        (cfg, Arc::new(provider(&RelayMetrics::new())))
    }

    #[test]
    fn self_signed_cert_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, provider) = in_data_dir(dir.path());
        let p1 = CertPaths::resolve(&cfg).unwrap();
        assert!(p1.self_signed);
        let first = std::fs::read(&p1.cert).unwrap();
        let p2 = CertPaths::resolve(&cfg).unwrap();
        assert_eq!(
            std::fs::read(&p2.cert).unwrap(),
            first,
            "reused, not regenerated"
        );
        let store = Arc::new(CertStore::load(p2, provider.clone()).unwrap());
        store.reload().unwrap();
        let sc = server_config(provider, store).unwrap();
        assert_eq!(sc.alpn_protocols, vec![b"duet/1".to_vec()]);
    }

    /// A certificate valid from `from` to `until` (unix seconds) and its key, as PEM files.
    fn cert_files(dir: &Path, from: i64, until: i64) -> CertPaths {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_offset(from);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_offset(until);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let paths = CertPaths {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            self_signed: false,
        };
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        paths
    }

    fn time_offset(secs: i64) -> std::time::Duration {
        std::time::Duration::from_secs(secs.unsigned_abs())
    }

    /// Catches the old behaviour: an expired (or not yet valid) certificate loaded, at
    /// start and on reload, and was served.
    #[test]
    fn expired_and_future_certificates_are_refused_and_reload_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = RelayMetrics::new();
        let provider = Arc::new(provider(&metrics));
        let now = duet_proto::clock::unix_now() as i64;
        let expired = cert_files(dir.path(), now - 7200, now - 3600);
        let e = CertStore::load(expired, provider.clone()).unwrap_err();
        assert!(matches!(e, TlsError::Validity { .. }), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");
        let future = cert_files(dir.path(), now + 3600, now + 7200);
        let e = CertStore::load(future, provider.clone()).unwrap_err();
        assert!(e.to_string().contains("not valid yet"), "{e}");

        let good = cert_files(dir.path(), now - 60, now + 3600);
        let store = CertStore::load(good, provider.clone()).unwrap();
        let before = store.cert_pem();
        cert_files(dir.path(), now - 7200, now - 3600);
        let e = store.reload().unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert_eq!(store.cert_pem(), before, "the old certificate stays");
    }

    /// Remembers every TLS 1.3 ticket the server hands a client.
    #[derive(Debug, Default)]
    struct TicketCount(std::sync::atomic::AtomicUsize);

    impl rustls::client::ClientSessionStore for TicketCount {
        fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, _: NamedGroup) {}
        fn kx_hint(&self, _: &rustls::pki_types::ServerName<'_>) -> Option<NamedGroup> {
            None
        }
        fn set_tls12_session(
            &self,
            _: rustls::pki_types::ServerName<'static>,
            _: rustls::client::Tls12ClientSessionValue,
        ) {
        }
        fn tls12_session(
            &self,
            _: &rustls::pki_types::ServerName<'_>,
        ) -> Option<rustls::client::Tls12ClientSessionValue> {
            None
        }
        fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}
        fn insert_tls13_ticket(
            &self,
            _: rustls::pki_types::ServerName<'static>,
            _: rustls::client::Tls13ClientSessionValue,
        ) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn take_tls13_ticket(
            &self,
            _: &rustls::pki_types::ServerName<'static>,
        ) -> Option<rustls::client::Tls13ClientSessionValue> {
            None
        }
    }

    /// Catches the old behaviour: rustls' default sent two resumption tickets per handshake
    /// (stored, derived and sent for every join) that no Duet client ever presents.
    #[test]
    fn handshakes_issue_no_resumption_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, provider) = in_data_dir(dir.path());
        let store =
            Arc::new(CertStore::load(CertPaths::resolve(&cfg).unwrap(), provider.clone()).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut store.cert_pem().as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tickets = Arc::new(TicketCount::default());
        let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_cfg.alpn_protocols = vec![duet_proto::ALPN.to_vec()];
        client_cfg.resumption = rustls::client::Resumption::store(tickets.clone());
        let server_cfg = Arc::new(server_config(provider, store).unwrap());
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_cfg), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(server_cfg).unwrap();
        // Shuttle bytes both ways until neither side has anything more to say: the tickets,
        // if any, follow the client's Finished.
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(
            tickets.0.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "no resumption tickets"
        );
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not a cert").unwrap();
        let paths = CertPaths {
            cert: cert.clone(),
            key: dir.path().join("missing.pem"),
            self_signed: false,
        };
        let metrics = RelayMetrics::new();
        let e = load_certified_key(&paths, &provider(&metrics)).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}

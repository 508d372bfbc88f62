//! The client side of the hop to a relay: TLS 1.3 on aws-lc-rs with the hybrid post-quantum
//! group X25519MLKEM768 offered first, ALPN `duet/1`, trust only in the certificate the app
//! passes in, and the QUIC transport settings the SDK runs with.
//!
//! The one place this is built: [`crate::Client`] uses it, and so do tools that speak the
//! control protocol themselves (the load tester's fast-path control client, the test kit's
//! raw client). It does not connect: that is [`crate::client`].

use std::sync::Arc;

use duet_proto::ALPN;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::SdkError;
use crate::options::ConnectOptions;

/// The rustls client config: TLS 1.3 only, X25519MLKEM768 first, the relay certificate (or
/// its CA) from `opts.trusted_cert_pem` as the only root.
pub fn tls_client_config(opts: &ConnectOptions) -> Result<rustls::ClientConfig, SdkError> {
    let pem = opts
        .trusted_cert_pem
        .as_deref()
        .ok_or_else(|| SdkError::Certificate("no trusted certificate given".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| SdkError::Certificate(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| SdkError::Certificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(SdkError::Certificate("the PEM holds no certificate".into()));
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // Offer the hybrid post-quantum group first whatever rustls' build features say, so
    // the hop to the relay stays private against a future quantum adversary.
    provider
        .kx_groups
        .sort_by_key(|g| g.name() != rustls::NamedGroup::X25519MLKEM768);
    let provider = Arc::new(provider);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SdkError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// The quinn client config: [`tls_client_config`], keep-alive every `opts.keep_alive`, and
/// datagram buffers with room for a keyframe burst both ways.
pub fn quic_client_config(opts: &ConnectOptions) -> Result<quinn::ClientConfig, SdkError> {
    Ok(quic_client_config_with(
        quic_crypto(tls_client_config(opts)?)?,
        opts,
    ))
}

/// [`tls_client_config`] wrapped for QUIC. Building it parses the PEM and sets up the
/// provider, so a [`crate::SharedEndpoint`] builds it once for all its connections.
pub fn quic_crypto(
    tls: rustls::ClientConfig,
) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, SdkError> {
    quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map(Arc::new)
        .map_err(|e| SdkError::Tls(e.to_string()))
}

/// The quinn client config over an already built TLS config (see [`quic_crypto`]), with the
/// transport settings of `opts`.
pub fn quic_client_config_with(
    crypto: Arc<quinn::crypto::rustls::QuicClientConfig>,
    opts: &ConnectOptions,
) -> quinn::ClientConfig {
    let mut cfg = quinn::ClientConfig::new(crypto);
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(opts.keep_alive));
    if let Ok(idle) = quinn::IdleTimeout::try_from(opts.idle_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    // Room for a keyframe burst in both directions without dropping pieces locally.
    transport.datagram_receive_buffer_size(Some(4 << 20));
    transport.datagram_send_buffer_size(4 << 20);
    cfg.transport_config(Arc::new(transport));
    cfg
}

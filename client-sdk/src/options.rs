//! How a client reaches and trusts a relay, and the transport's timing knobs.

use std::time::Duration;

/// Options for `Client::connect`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// PEM of the relay's certificate, or of the CA that issued it. The SDK bundles no
    /// public roots: a relay is trusted only when the app says so.
    pub trusted_cert_pem: Option<Vec<u8>>,
    /// How long connecting and joining may take.
    pub join_timeout: Duration,
    /// A frame still missing a piece this long after its first piece arrived is dropped.
    pub reassembly_timeout: Duration,
    /// QUIC keep-alive, so a quiet call is not closed by idle timers on the path.
    pub keep_alive: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            trusted_cert_pem: None,
            join_timeout: Duration::from_secs(5),
            reassembly_timeout: Duration::from_millis(500),
            keep_alive: Duration::from_secs(5),
        }
    }
}

impl ConnectOptions {
    /// Defaults, trusting the given certificate (the relay's own or its CA's).
    pub fn trusting(cert_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            trusted_cert_pem: Some(cert_pem.into()),
            ..Self::default()
        }
    }
}

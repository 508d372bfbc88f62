//! An in-process relay for tests ([`TestRelay`]: the real `duet_relay::Relay` on loopback,
//! OS-chosen ports, short timeouts, its own data directory) and what any relay under test
//! offers a test ([`RelayUnderTest`]: where to connect, what to trust, tokens it accepts).
//!
//! The child-process relay is [`crate::process`]'s; clients are [`crate::raw`]'s and
//! [`crate::sdk`]'s.

use std::net::SocketAddr;
use std::path::Path;

use duet_proto::{JoinClaims, JoinToken, SigningKey};
use duet_relay::{Config, LimitsConfig, Relay, RelayHandle};

use crate::tokens::claims;

/// A relay a test talks to, in this process or a child process.
pub trait RelayUnderTest {
    /// The QUIC (control + datagram) address.
    fn quic_addr(&self) -> SocketAddr;
    /// The ops HTTP address (`/metrics`, `/healthz`, `/readyz`).
    fn ops_addr(&self) -> SocketAddr;
    /// The relay's certificate (PEM), the one thing a client trusts.
    fn cert_pem(&self) -> Vec<u8>;
    /// The key the relay's tokens are signed with: the key pair it generated in its data
    /// directory (the relay itself holds only the public half).
    fn signer(&self) -> SigningKey;

    /// A token for `user`'s `device` in `session`: E2EE allowed, any node.
    fn token(&self, session: &str, user: &str, device: &str) -> String {
        self.token_with(&claims(session, user, device))
    }

    /// A token with exactly these claims, signed by [`RelayUnderTest::signer`].
    fn token_with(&self, claims: &JoinClaims) -> String {
        JoinToken::mint(&self.signer(), claims)
    }
}

/// The test relay's configuration: loopback, OS-chosen ports, node id `test-node`, limits
/// high enough that no test trips them by accident and timeouts short enough to test.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        node_id: "test-node".into(),
        drain_deadline_ms: 10_000,
        limits: LimitsConfig {
            media_packets_per_sec: 1_000_000,
            media_bytes_per_sec: 1_000_000_000,
            signals_per_sec: 1000,
            join_timeout_ms: 2_000,
            idle_timeout_ms: 20_000,
            resume_window_ms: 5_000,
            ..LimitsConfig::default()
        },
        ..Config::loopback(data_dir)
    }
}

/// A relay running in this process (on the test's runtime) until dropped.
pub struct TestRelay {
    pub relay: RelayHandle,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for TestRelay {
    type Target = RelayHandle;
    fn deref(&self) -> &RelayHandle {
        &self.relay
    }
}

impl TestRelay {
    /// Starts a relay on [`test_config`].
    pub async fn start() -> TestRelay {
        Self::start_with(|_| {}).await
    }

    /// Starts a relay on [`test_config`] changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestRelay {
        crate::init_tracing();
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let relay = Relay::start(cfg).await.expect("the test relay starts");
        TestRelay { relay, dir }
    }

    /// The relay's data directory (certificate, token keys, policy store).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl RelayUnderTest for TestRelay {
    fn quic_addr(&self) -> SocketAddr {
        self.relay.quic_addr()
    }
    fn ops_addr(&self) -> SocketAddr {
        self.relay.ops_addr()
    }
    fn cert_pem(&self) -> Vec<u8> {
        self.relay.cert_pem()
    }
    fn signer(&self) -> SigningKey {
        self.relay
            .config()
            .load_signing_key(None, None)
            .expect("the test relay's generated signing key")
    }
}

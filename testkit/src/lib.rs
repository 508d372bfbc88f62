//! duet-testkit: what Duet's tests share, so no crate copies a test relay, a token minter or
//! a raw client. Only ever a dev-dependency (`publish = false`); its errors are `anyhow`, like
//! the tests it serves. Its own `tests/` hold the cross-crate end-to-end tests (the SDK
//! against a real relay), so the relay and the SDK need not dev-depend on each other.
//!
//! | module | owns | does not own |
//! |---|---|---|
//! | [`relay`] | [`TestRelay`] (an in-process relay on loopback, short test limits), the [`RelayUnderTest`] trait (addresses, certificate, signing key, tokens) | the relay itself |
//! | [`tokens`] | join claims with E2EE allowed ([`claims`], [`claims_builder`]), [`sid`] | token formats (`duet_proto`) |
//! | [`process`] | [`RelayProcess`]: the real `duet-relay` binary as a child (banner, signals, restart on the same ports); finding or building the binary | the binary's CLI |
//! | [`netns`] | [`netns::NetnsLink`]: a network namespace on a veth link (a relay on its own host) | the relay process ([`process`]) |
//! | [`raw`] | [`Raw`]: a hand-driven QUIC client (control frames and datagrams by hand) | the SDK's client (`duet_sdk`) |
//! | [`abuse`] | floods beside the handshake flood: garbage UDP at either port, joins with forged tokens, signal floods; what each drew | the relay's refusals |
//! | [`flood`] | QUIC Initials from a socket that never answers, and what they drew (amplification, handshake floods) | the relay's admission rules |
//! | [`dns`] | [`dns::FleetDns`]: a real DNS server (hickory-server) answering SRV and A records for a fleet, as a headless Service | the resolver (the minter's) |
//! | [`fleet`] | [`fleet::Fleet`]: several relay processes as one fleet (node ids, one token key, one certificate, drain credential); [`fleet::share_identity`] for in-process nodes | placement, failover |
//! | [`impair`] | [`impair::Impairer`]: a user-space hostile network (loss, jitter, duplication, outage, MTU, NAT rebinding) between clients and a relay | the protocols crossing it |
//! | [`hostile`] | [`HostileRelay`]: a relay front holding the relay's certificate that tampers with, injects, drops and splices what it forwards ([`Tamper`]), and logs every datagram | the SDK's and relay's behaviour |
//! | [`metrics`] | `/metrics` and other ops endpoints over HTTP, reading one series | metric names (the relay's) |
//! | [`sdk`] | SDK clients against a test relay: join, E2EE join, events (awaited by predicate), a frame sent until delivered, "media still flows", media counted while a test acts ([`sdk::carry_media`]) | the SDK's behaviour |
//!
//! Every wait is bounded by [`STEP`] (generous: a loaded 2-core box), and every address is
//! loopback with an OS-chosen port.

pub mod abuse;
pub mod dns;
pub mod fleet;
pub mod flood;
pub mod hostile;
pub mod impair;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod raw;
pub mod relay;
pub mod sdk;
pub mod tokens;

pub use hostile::{Dir, Handle, Honest, HostileRelay, Script, Tamper};
pub use metrics::{http_get, http_post, metric, metric_sum, scrape, wait_metric};
pub use process::{relay_binary, relay_command, RelayProcess};
pub use raw::{client_endpoint, Raw};
pub use relay::{test_config, RelayUnderTest, TestRelay};
pub use tokens::{claims, claims_builder, sid};

/// How long any single wait in a test may take before it fails.
pub const STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs of the code under test into the test's captured output (`RUST_LOG`, default `warn`).
/// Idempotent: every test may call it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

//! The load tester's own control client (`fpctl`, used by the fast-path bench) speaks to the
//! relay with the SDK's client configuration, so its hop negotiates the hybrid post-quantum
//! group X25519MLKEM768 like any SDK client (its old copy offered X25519 first).

use anyhow::Result;
use duet_loadtest::fpctl::{self, Control};
use duet_testkit::{metric, scrape, sid, RelayUnderTest, TestRelay, STEP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_control_client_negotiates_x25519mlkem768() -> Result<()> {
    let relay = TestRelay::start().await;
    let ep = fpctl::endpoint(
        fpctl::client_config(&relay.cert_pem())?,
        "127.0.0.1:0".parse()?,
    )?;
    let token = relay.token("lt-pq", "alice", "phone");
    let ctl = Control::join(
        &ep,
        relay.quic_addr(),
        "localhost",
        token,
        sid("lt-pq"),
        STEP,
    )
    .await?;
    let text = scrape(relay.ops_addr()).await;
    let group = |g: &str| {
        metric(
            &text,
            &format!(r#"duet_tls_key_exchange_total{{group="{g}"}}"#),
        )
    };
    assert_eq!(group("X25519MLKEM768"), 1.0, "{text}");
    assert_eq!(group("X25519"), 0.0, "{text}");
    ctl.leave().await;
    Ok(())
}

//! Session rules seen by raw clients over real QUIC on loopback: an idle session ends. (The
//! rules seen through the SDK are tested in `testkit/tests/sdk_sessions.rs`.)

use anyhow::Result;
use duet_proto::{EndReason, RelayMessage};
use duet_testkit::{Raw, TestRelay};

#[tokio::test]
async fn idle_sessions_end() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.idle_timeout_ms = 400).await;
    // Raw clients: the SDK's keep-alives are QUIC-level, which the relay does not count.
    let (mut a, _) = Raw::join(&relay, "idle", "alice", "phone").await?;
    let (mut b, _) = Raw::join(&relay, "idle", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    assert_eq!(
        a.next().await?,
        Some(RelayMessage::SessionEnded(EndReason::IdleTimeout))
    );
    assert_eq!(
        b.next().await?,
        Some(RelayMessage::SessionEnded(EndReason::IdleTimeout))
    );
    assert_eq!(relay.session_count(), 0);
    Ok(())
}

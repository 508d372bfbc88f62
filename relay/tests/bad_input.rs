//! Broken media from raw clients: media with bad headers and media before Join are dropped
//! and counted, and only good media is forwarded. (Hostile input while an SDK pair is in
//! session: `testkit/tests/sdk_bad_input.rs`.)

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use duet_proto::RelayMessage;
use duet_testkit::{metric, scrape, wait_metric, Raw, RelayUnderTest, TestRelay, STEP};

#[tokio::test]
async fn bad_media_headers_and_media_before_join_are_dropped_and_counted() -> Result<()> {
    let relay = TestRelay::start().await;
    // Before Join.
    let mut early = Raw::connect(&relay).await?;
    for _ in 0..5 {
        early
            .conn
            .send_datagram(Bytes::from_static(&[1, 1, 0xAA]))?;
    }
    let n = wait_metric(
        relay.ops_addr(),
        r#"duet_media_dropped_total{reason="before_join"}"#,
        5.0,
    )
    .await;
    assert_eq!(n, 5.0);
    match early
        .join_raw("m", relay.token("m", "alice", "phone"), None)
        .await?
    {
        RelayMessage::Joined(_) => {}
        other => panic!("{other:?}"),
    }
    let (b, _) = Raw::join(&relay, "m", "bob", "laptop").await?;
    assert_eq!(early.next().await?, Some(RelayMessage::PeerJoined));
    early.conn.send_datagram(Bytes::from_static(&[1]))?; // truncated
    early.conn.send_datagram(Bytes::from_static(&[7, 1, 0]))?; // bad version
    early.conn.send_datagram(Bytes::from_static(&[1, 9, 0]))?; // bad kind
    let text_deadline = tokio::time::Instant::now() + STEP;
    loop {
        let t = scrape(relay.ops_addr()).await;
        let all = ["truncated", "bad_version", "bad_kind"]
            .iter()
            .all(|r| metric(&t, &format!(r#"duet_media_dropped_total{{reason="{r}"}}"#)) == 1.0);
        if all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < text_deadline,
            "drops not counted: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The bad ones were not forwarded; a good one is.
    let good = Bytes::from_static(&[1, 2, 0xde, 0xad]);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        early.conn.send_datagram(good.clone())?;
        if let Ok(Ok(raw)) =
            tokio::time::timeout(Duration::from_millis(100), b.conn.read_datagram()).await
        {
            assert_eq!(
                raw, good,
                "the first datagram the peer sees is the good one"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    Ok(())
}

//! Hostile and broken input while an SDK pair is in session: garbage UDP, truncated,
//! oversized, empty and unknown control frames, a client that never joins, a Signal flood.
//! Each is dropped or refused with a typed code and counted; the relay never answers an
//! unauthenticated party with more bytes than it sent, and the SDK pair's session goes on.
//! (Bad media headers and media before Join, raw clients only: `relay/tests/bad_input.rs`.)

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use duet_proto::{ClientMessage, CloseCode, PeerLeftReason, RefusalReason, RelayMessage};
use duet_sdk::{Call, Event};
use duet_testkit::sdk::{assert_media_flows, expect_event, sdk_join};
use duet_testkit::{
    client_endpoint, metric, scrape, sid, wait_metric, Raw, RelayUnderTest, TestRelay, STEP,
};

#[tokio::test]
async fn garbage_udp_gets_no_amplification() -> Result<()> {
    let relay = TestRelay::start().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut sent = 0usize;
    let mut payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        b"hello relay".to_vec(),
        vec![0xff; 40],
        vec![0x40; 1200], // short header, unknown connection id
    ];
    // A long header claiming an unknown QUIC version, small: no version negotiation.
    let mut vn = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    vn.extend_from_slice(&[1; 8]);
    vn.push(8);
    vn.extend_from_slice(&[2; 8]);
    vn.resize(100, 0);
    payloads.push(vn);
    for _ in 0..50 {
        payloads.push(
            (0..rand::random::<u16>() % 1400)
                .map(|_| rand::random())
                .collect(),
        );
    }
    for p in &payloads {
        sock.send_to(p, relay.quic_addr()).await?;
        sent += p.len();
    }
    let mut back = 0usize;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        back += n;
    }
    assert!(
        back <= sent,
        "answered {back} bytes to {sent} bytes of garbage"
    );
    // The small garbage in particular gets nothing at all.
    let small = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for p in payloads.iter().filter(|p| p.len() < 1200) {
        small.send_to(p, relay.quic_addr()).await?;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), small.recv_from(&mut buf))
            .await
            .is_err(),
        "no reply to small garbage"
    );
    // Still serving.
    let a = sdk_join(&relay, "g", "alice", "phone").await?;
    let b = sdk_join(&relay, "g", "bob", "laptop").await?;
    assert_media_flows(&a, &b).await?;
    Ok(())
}

/// A joined pair plus a third connection that misbehaves; checks the pair goes on.
async fn pair(relay: &TestRelay, session: &str) -> Result<(Call, Call)> {
    let a = sdk_join(relay, session, "alice", "phone").await?;
    let b = sdk_join(relay, session, "bob", "laptop").await?;
    expect_event(&a, Event::PeerJoined).await?;
    Ok((a, b))
}

#[tokio::test]
async fn bad_control_frames_are_closed_with_a_typed_code() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = pair(&relay, "ctl").await?;

    // Oversized length prefix: refused as soon as the prefix arrives.
    let mut r = Raw::connect(&relay).await?;
    r.write(&(1u32 << 30).to_be_bytes()).await?;
    assert_eq!(
        r.next().await?,
        Some(RelayMessage::Refused(RefusalReason::ProtocolViolation))
    );
    assert_eq!(
        r.closed_code().await,
        Some(CloseCode::Refused.to_u32().into())
    );

    // Empty frame.
    let mut r = Raw::connect(&relay).await?;
    r.write(&0u32.to_be_bytes()).await?;
    assert_eq!(
        r.next().await?,
        Some(RelayMessage::Refused(RefusalReason::ProtocolViolation))
    );

    // Unknown message type.
    let mut r = Raw::connect(&relay).await?;
    r.write(&[0, 0, 0, 2, 0x42, 0]).await?;
    assert_eq!(
        r.next().await?,
        Some(RelayMessage::Refused(RefusalReason::ProtocolViolation))
    );

    // Truncated: a Join whose body stops half-way, then the stream ends.
    let mut r = Raw::connect(&relay).await?;
    let join = duet_proto::control::encode(&ClientMessage::Join {
        session: sid("ctl"),
        token: relay.token("ctl", "mallory", "x"),
        resume: None,
        e2ee: true,
    })?;
    // Claim the full length but deliver a malformed body of that length.
    let mut bad = join[..4].to_vec();
    bad.extend_from_slice(&join[4..join.len() / 2]);
    bad.resize(join.len(), 0xff);
    r.write(&bad).await?;
    assert_eq!(
        r.next().await?,
        Some(RelayMessage::Refused(RefusalReason::ProtocolViolation))
    );

    // A message other than Join first.
    let mut r = Raw::connect(&relay).await?;
    r.send_msg(&ClientMessage::Signal(Bytes::from_static(b"hi")))
        .await?;
    assert_eq!(
        r.next().await?,
        Some(RelayMessage::Refused(RefusalReason::ProtocolViolation))
    );

    // A joined endpoint that sends garbage: disconnected, its peer told, the relay goes on.
    let (mut m, _) = Raw::join(&relay, "ctl2", "mallory", "x").await?;
    let c = sdk_join(&relay, "ctl2", "carol", "desk").await?;
    assert_eq!(m.next().await?, Some(RelayMessage::PeerJoined));
    m.write(&[0, 0, 0, 1, 0x7f]).await?;
    assert_eq!(
        m.next().await?,
        Some(RelayMessage::SessionEnded(
            duet_proto::EndReason::ProtocolViolation
        ))
    );
    assert_eq!(
        m.closed_code().await,
        Some(CloseCode::ProtocolViolation.to_u32().into())
    );
    expect_event(&c, Event::PeerLeft(PeerLeftReason::ProtocolViolation)).await?;

    assert_media_flows(&a, &b).await?;
    let text = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(
            &text,
            r#"duet_control_errors_total{kind="frame_too_large"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, r#"duet_control_errors_total{kind="empty_frame"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"duet_control_errors_total{kind="unknown_type"}"#),
        2.0
    );
    assert_eq!(
        metric(&text, r#"duet_control_errors_total{kind="malformed"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"duet_control_errors_total{kind="not_joined"}"#),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_joins_is_closed_after_the_join_timeout() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.join_timeout_ms = 300).await;
    let (a, b) = pair(&relay, "nj").await?;
    // Connects, opens no stream.
    let ep = client_endpoint(&relay.cert_pem())?;
    let silent = ep.connect(relay.quic_addr(), "localhost")?.await?;
    // Opens the stream and sends half a frame.
    let mut half = Raw::connect(&relay).await?;
    half.write(&[0, 0, 0, 50, 0]).await?;
    let closed = tokio::time::timeout(STEP, silent.closed()).await?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(CloseCode::JoinTimeout.to_u32())
            )
        }
        other => panic!("expected an application close, got {other}"),
    }
    // With or without its stream open, a connection that never joins gets the same code.
    assert_eq!(
        half.closed_code().await,
        Some(CloseCode::JoinTimeout.to_u32().into())
    );
    let n = wait_metric(
        relay.ops_addr(),
        r#"duet_control_errors_total{kind="never_joined"}"#,
        2.0,
    )
    .await;
    assert_eq!(n, 2.0);
    assert_media_flows(&a, &b).await?;
    Ok(())
}

#[tokio::test]
async fn a_signal_flood_is_rate_limited_and_the_peer_session_goes_on() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.signals_per_sec = 10).await;
    let (mut a, _) = Raw::join(&relay, "flood", "alice", "phone").await?;
    let b = sdk_join(&relay, "flood", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    for i in 0..200u32 {
        a.send_msg(&ClientMessage::Signal(Bytes::from(
            i.to_be_bytes().to_vec(),
        )))
        .await?;
    }
    let mut limited = 0;
    while limited < 150 {
        match a.next().await? {
            Some(RelayMessage::Dropped(RefusalReason::RateLimited)) => limited += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("connection ended"),
        }
    }
    // The peer got the first burst, verbatim and in order.
    for i in 0..10u32 {
        let s = tokio::time::timeout(STEP, b.recv_signal()).await??;
        assert_eq!(s.as_ref(), i.to_be_bytes());
    }
    let text = scrape(relay.ops_addr()).await;
    assert!(
        metric(
            &text,
            r#"duet_signals_dropped_total{reason="rate_limited"}"#
        ) >= 150.0
    );
    assert!(metric(&text, r#"duet_refusals_total{reason="rate_limited"}"#) >= 150.0);
    // Still in session: media flows from the flooder to the peer.
    a.conn.send_datagram(Bytes::from_static(&[1, 1, 9, 9]))?;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        a.conn
            .send_datagram(Bytes::from_static(&[1, 1, 0, 0, 0, 0]))?;
        if wait_metric(
            relay.ops_addr(),
            r#"duet_forwarded_packets_total{kind="audio"}"#,
            1.0,
        )
        .await
            >= 1.0
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
    }
    assert!(
        metric(
            &scrape(relay.ops_addr()).await,
            r#"duet_forwarded_packets_total{kind="audio"}"#
        ) >= 1.0
    );
    Ok(())
}

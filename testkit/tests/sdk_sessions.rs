//! Session rules with SDK clients over real QUIC on loopback: two endpoints meet, a third
//! party or a companion device is refused, every plaintext feature is refused, every bad
//! token gets its code, a device resumes on a new connection, a relay drains, the hop is
//! post-quantum. (Rules seen only by raw clients: `relay/tests/sessions.rs`.)

use std::time::Duration;

use anyhow::Result;
use duet_proto::clock::unix_now as now;
use duet_proto::{
    E2eeClaim, EndReason, Feature, JoinToken, MediaKind, NodeId, PeerLeftReason, RefusalReason,
    RelayMessage, SigningKey,
};
use duet_sdk::{Client, Event, SdkError};
use duet_testkit::sdk::{assert_media_flows, connect_options, expect_event, sdk_join};
use duet_testkit::{claims, http_get, metric, scrape, sid, Raw, RelayUnderTest, TestRelay, STEP};

async fn refused(relay: &TestRelay, session: &str, token: String) -> RefusalReason {
    let client = Client::connect(relay.quic_addr(), token, connect_options(relay))
        .await
        .expect("connect");
    match client.join(sid(session)).await {
        Err(SdkError::Refused(r)) => r,
        Err(e) => panic!("expected a refusal, got error {e}"),
        Ok(_) => panic!("expected a refusal, got Joined"),
    }
}

#[tokio::test]
async fn two_endpoints_meet_and_third_party_and_companion_are_refused() -> Result<()> {
    let relay = TestRelay::start().await;
    let a = sdk_join(&relay, "call-1", "alice", "phone").await?;
    assert!(!a.peer_present_at_join());
    let b = sdk_join(&relay, "call-1", "bob", "laptop").await?;
    assert!(b.peer_present_at_join());
    assert_ne!(a.slot(), b.slot());
    expect_event(&a, Event::PeerJoined).await?;

    // A third distinct user, whatever it claims.
    let t = relay.token("call-1", "carol", "desk");
    assert_eq!(
        refused(&relay, "call-1", t).await,
        RefusalReason::SessionFull
    );
    // Alice's second device: no companion devices.
    let t = relay.token("call-1", "alice", "tablet");
    assert_eq!(
        refused(&relay, "call-1", t).await,
        RefusalReason::SessionFull
    );
    // Alice's same device without its resume secret.
    let t = relay.token("call-1", "alice", "phone");
    assert_eq!(
        refused(&relay, "call-1", t).await,
        RefusalReason::AlreadyJoined
    );

    // The session goes on.
    assert_media_flows(&a, &b).await?;
    let text = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(&text, r#"duet_refusals_total{reason="session_full"}"#),
        2.0
    );
    assert_eq!(
        metric(&text, r#"duet_refusals_total{reason="already_joined"}"#),
        1.0
    );
    assert_eq!(metric(&text, "duet_sessions"), 1.0);
    assert_eq!(metric(&text, "duet_endpoints"), 2.0);
    assert!(text.contains("duet_join_latency_seconds_bucket"));

    // Leave: the peer is told and the relay forgets the session once both are gone.
    a.leave().await?;
    expect_event(&b, Event::PeerLeft(PeerLeftReason::Left)).await?;
    b.leave().await?;
    let deadline = tokio::time::Instant::now() + STEP;
    while relay.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.session_count(), 0);
    Ok(())
}

#[tokio::test]
async fn every_feature_is_refused_plaintext_required() -> Result<()> {
    let relay = TestRelay::start().await;
    let a = sdk_join(&relay, "f", "alice", "phone").await?;
    let mut features: Vec<Feature> = Feature::ALL.to_vec();
    features.push(Feature::Unknown(999));
    for f in &features {
        assert_eq!(
            a.request(*f).await?,
            RefusalReason::PlaintextRequired,
            "{f}"
        );
    }
    let text = scrape(relay.ops_addr()).await;
    for f in Feature::ALL {
        let series = format!(
            r#"duet_feature_requests_refused_total{{feature="{}"}}"#,
            f.as_str()
        );
        assert_eq!(metric(&text, &series), 1.0, "{series}");
    }
    assert_eq!(
        metric(
            &text,
            r#"duet_feature_requests_refused_total{feature="unknown"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, r#"duet_refusals_total{reason="plaintext_required"}"#),
        features.len() as f64
    );
    Ok(())
}

#[tokio::test]
async fn every_bad_token_gets_its_code() -> Result<()> {
    let relay = TestRelay::start().await;
    let key = relay.signer();

    assert_eq!(
        refused(&relay, "s", "garbage".into()).await,
        RefusalReason::BadToken
    );

    // Longer-lived than the relay accepts (default one day): refused, however valid.
    let mut c = claims("s", "alice", "phone");
    c.exp = c.iat + 2 * 86_400;
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&key, &c)).await,
        RefusalReason::TokenLifetimeTooLong
    );

    // No E2EE decision in the token: fails closed.
    let mut c = claims("s", "alice", "phone");
    c.e2ee = E2eeClaim::Unknown;
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&key, &c)).await,
        RefusalReason::E2eeClaimInvalid
    );

    // A legacy HMAC token under the relay's key id, keyed with its public key (which
    // anyone can read): never accepted.
    let public = key.verifying_key().public_key().copied().unwrap();
    let forger = SigningKey::legacy_hmac(key.id(), &public)?;
    assert_eq!(
        refused(
            &relay,
            "s",
            JoinToken::mint(&forger, &claims("s", "alice", "phone"))
        )
        .await,
        RefusalReason::BadSignature
    );

    let mut c = claims("s", "alice", "phone");
    c.iat = now() - 100;
    c.exp = now() - 10;
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&key, &c)).await,
        RefusalReason::TokenExpired
    );

    let mut c = claims("s", "alice", "phone");
    c.iat = now() + 3600;
    c.exp = now() + 7200;
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&key, &c)).await,
        RefusalReason::TokenNotYetValid
    );

    let stranger = SigningKey::ed25519_from_seed("other", &[3u8; 32])?;
    let c = claims("s", "alice", "phone");
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&stranger, &c)).await,
        RefusalReason::UnknownKey
    );

    // Same key id, another key: a forgery.
    let impostor = SigningKey::ed25519_from_seed(key.id(), &[4u8; 32])?;
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&impostor, &c)).await,
        RefusalReason::BadSignature
    );

    // A token for another session than the one joined.
    assert_eq!(
        refused(&relay, "other-session", JoinToken::mint(&key, &c)).await,
        RefusalReason::WrongSession
    );

    let mut c2 = c.clone();
    c2.nodes = vec![NodeId::new("elsewhere")?];
    assert_eq!(
        refused(&relay, "s", JoinToken::mint(&key, &c2)).await,
        RefusalReason::WrongNode
    );
    // Placed on this very node, as the fallback after another: accepted.
    c2.nodes = vec![NodeId::new("elsewhere")?, relay.node_id().clone()];
    let ok = Client::connect(
        relay.quic_addr(),
        JoinToken::mint(&key, &c2),
        connect_options(&relay),
    )
    .await?;
    let waiting = ok.join(sid("s")).await?;

    // E2EE claims that do not allow it: refused with the claim's reason, and the waiting
    // peer is told the call cannot be end-to-end encrypted.
    for (claim, reason) in [
        (E2eeClaim::PolicyDisabled, RefusalReason::PolicyDisabled),
        (E2eeClaim::UserNotEnabled, RefusalReason::UserNotEnabled),
        (
            E2eeClaim::ComplianceRecording,
            RefusalReason::ComplianceRecording,
        ),
    ] {
        let mut c = claims("s", "bob", "laptop");
        c.e2ee = claim;
        assert_eq!(
            refused(&relay, "s", JoinToken::mint(&key, &c)).await,
            reason
        );
        expect_event(&waiting, Event::PeerE2eeUnavailable(claim)).await?;
    }

    let text = scrape(relay.ops_addr()).await;
    for r in [
        RefusalReason::BadToken,
        RefusalReason::TokenExpired,
        RefusalReason::TokenNotYetValid,
        RefusalReason::TokenLifetimeTooLong,
        RefusalReason::E2eeClaimInvalid,
        RefusalReason::UnknownKey,
        RefusalReason::WrongSession,
        RefusalReason::WrongNode,
        RefusalReason::PolicyDisabled,
        RefusalReason::UserNotEnabled,
        RefusalReason::ComplianceRecording,
    ] {
        let series = format!(r#"duet_refusals_total{{reason="{}"}}"#, r.as_str());
        assert_eq!(metric(&text, &series), 1.0, "{series}");
    }
    // The forged legacy token and the impostor key.
    let series = r#"duet_refusals_total{reason="bad_signature"}"#;
    assert_eq!(metric(&text, series), 2.0, "{series}");
    Ok(())
}

#[tokio::test]
async fn resume_replaces_the_old_connection_and_media_carries_on() -> Result<()> {
    let relay = TestRelay::start().await;
    let a = sdk_join(&relay, "r", "alice", "phone").await?;
    let b = sdk_join(&relay, "r", "bob", "laptop").await?;
    expect_event(&a, Event::PeerJoined).await?;
    assert_media_flows(&a, &b).await?;

    // Alice's device comes back on a new connection (the old one still open).
    let ticket = a.resume_ticket();
    let client = Client::connect(
        relay.quic_addr(),
        relay.token("r", "alice", "phone"),
        connect_options(&relay),
    )
    .await?;
    let a2 = client.resume(&ticket).await?;
    assert!(a2.resumed());
    assert_eq!(a2.slot(), a.slot());
    expect_event(&a, Event::SessionEnded(EndReason::Replaced)).await?;
    expect_event(&b, Event::PeerReconnecting).await?;
    expect_event(&b, Event::PeerResumed).await?;
    assert_media_flows(&a2, &b).await?;

    // The old secret is spent: presenting it again is refused.
    let client = Client::connect(
        relay.quic_addr(),
        relay.token("r", "alice", "phone"),
        connect_options(&relay),
    )
    .await?;
    match client.resume(&ticket).await {
        Err(SdkError::Refused(r)) => assert_eq!(r, RefusalReason::ResumeRejected),
        other => panic!("expected ResumeRejected, got {:?}", other.err()),
    }

    // A lost connection (closed without Leave): the peer hears PeerReconnecting, then the
    // device resumes within the window.
    let ticket = a2.resume_ticket();
    a2.connection().close(0u32.into(), b"network change");
    expect_event(&b, Event::PeerReconnecting).await?;
    let client = Client::connect(
        relay.quic_addr(),
        relay.token("r", "alice", "phone"),
        connect_options(&relay),
    )
    .await?;
    let a3 = client.resume(&ticket).await?;
    expect_event(&b, Event::PeerResumed).await?;
    assert_media_flows(&a3, &b).await?;
    let text = scrape(relay.ops_addr()).await;
    assert_eq!(metric(&text, "duet_resumes_total"), 2.0);
    Ok(())
}

#[tokio::test]
async fn lost_peer_leaves_after_the_resume_window() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.resume_window_ms = 300).await;
    let a = sdk_join(&relay, "w", "alice", "phone").await?;
    let b = sdk_join(&relay, "w", "bob", "laptop").await?;
    expect_event(&a, Event::PeerJoined).await?;
    b.connection().close(0u32.into(), b"gone");
    expect_event(&a, Event::PeerReconnecting).await?;
    expect_event(&a, Event::PeerLeft(PeerLeftReason::ConnectionLost)).await?;
    // The slot is free again: someone may take it.
    let c = sdk_join(&relay, "w", "bob", "laptop").await?;
    expect_event(&a, Event::PeerJoined).await?;
    assert_media_flows(&a, &c).await?;
    Ok(())
}

#[tokio::test]
async fn node_session_cap() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.max_sessions = 1).await;
    let _a = sdk_join(&relay, "one", "alice", "phone").await?;
    let t = relay.token("two", "bob", "laptop");
    assert_eq!(refused(&relay, "two", t).await, RefusalReason::NodeFull);
    // Joining the existing session is still fine.
    let _b = sdk_join(&relay, "one", "bob", "laptop").await?;
    Ok(())
}

#[tokio::test]
async fn drain_refuses_new_joins_and_live_sessions_continue_until_the_deadline() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.drain_deadline_ms = 1500).await;
    assert_eq!(http_get(relay.ops_addr(), "/readyz").await?.0, 200);
    assert_eq!(http_get(relay.ops_addr(), "/healthz").await?.0, 200);
    let a = sdk_join(&relay, "d", "alice", "phone").await?;
    let b = sdk_join(&relay, "d", "bob", "laptop").await?;
    expect_event(&a, Event::PeerJoined).await?;

    relay.drain();
    assert_eq!(http_get(relay.ops_addr(), "/readyz").await?.0, 503);
    assert_eq!(http_get(relay.ops_addr(), "/healthz").await?.0, 200);
    let t = relay.token("new", "carol", "desk");
    assert_eq!(
        refused(&relay, "new", t).await,
        RefusalReason::RelayDraining
    );
    // The live session still forwards media and signals.
    assert_media_flows(&a, &b).await?;
    a.send_signal(b"hello").await?;
    assert_eq!(
        tokio::time::timeout(STEP, b.recv_signal()).await??.as_ref(),
        b"hello"
    );
    // Then the deadline ends it.
    expect_event(&a, Event::SessionEnded(EndReason::RelayShutdown)).await?;
    expect_event(&b, Event::SessionEnded(EndReason::RelayShutdown)).await?;
    relay.drained().await;
    assert_eq!(relay.session_count(), 0);
    let text = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(&text, r#"duet_refusals_total{reason="relay_draining"}"#),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn the_hop_negotiates_x25519mlkem768() -> Result<()> {
    let relay = TestRelay::start().await;
    // The SDK client, and a raw quinn client on aws-lc-rs.
    let _a = sdk_join(&relay, "pq", "alice", "phone").await?;
    let _raw = Raw::connect(&relay).await?;
    let text = scrape(relay.ops_addr()).await;
    let pq = metric(
        &text,
        r#"duet_tls_key_exchange_total{group="X25519MLKEM768"}"#,
    );
    let classic = metric(&text, r#"duet_tls_key_exchange_total{group="X25519"}"#);
    assert_eq!(pq, 2.0, "{text}");
    assert_eq!(classic, 0.0);
    Ok(())
}

#[tokio::test]
async fn signals_are_forwarded_verbatim_and_size_limited() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.max_signal_bytes = 1024).await;
    let (mut a, _) = Raw::join(&relay, "sig", "alice", "phone").await?;
    let (mut b, _) = Raw::join(&relay, "sig", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    let payload = bytes::Bytes::from((0..1024u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    a.send_msg(&duet_proto::ClientMessage::Signal(payload.clone()))
        .await?;
    assert_eq!(b.next().await?, Some(RelayMessage::Signal(payload)));
    a.send_msg(&duet_proto::ClientMessage::Signal(vec![0u8; 1025].into()))
        .await?;
    assert_eq!(
        a.next().await?,
        Some(RelayMessage::Dropped(RefusalReason::TooLarge))
    );
    a.send_msg(&duet_proto::ClientMessage::Ping(42)).await?;
    assert_eq!(a.next().await?, Some(RelayMessage::Pong(42)));
    let text = scrape(relay.ops_addr()).await;
    assert_eq!(metric(&text, "duet_signals_forwarded_total"), 1.0);
    assert_eq!(
        metric(&text, r#"duet_signals_dropped_total{reason="too_large"}"#),
        1.0
    );
    // Large frames through the SDK still cross this relay.
    let sa = sdk_join(&relay, "big", "alice", "phone").await?;
    let sb = sdk_join(&relay, "big", "bob", "laptop").await?;
    expect_event(&sa, Event::PeerJoined).await?;
    let frame: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    sa.send_media(MediaKind::Video, &frame).await?;
    let got = tokio::time::timeout(STEP, sb.recv_media()).await;
    let text = scrape(relay.ops_addr()).await;
    eprintln!("{:?} {:?}", sa.stats(), sb.stats());
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("dropped") || l.contains("forwarded"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "max dgram a {:?} b {:?}",
        sa.connection().max_datagram_size(),
        sb.connection().max_datagram_size()
    );
    let got = got??;
    assert_eq!(got.kind, MediaKind::Video);
    assert_eq!(got.data.as_ref(), frame.as_slice());
    let text = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(
            &text,
            r#"duet_media_dropped_total{reason="too_large_for_peer"}"#
        ),
        0.0
    );
    Ok(())
}

//! Clients connecting through one `SharedEndpoint` (one UDP socket, one TLS config) over a
//! real in-process relay: an E2EE call whose two sides share it gets matching codes and
//! intact frames, two calls on one socket never see each other's frames, and the things
//! a shared socket cannot do (move it for one call, trust another certificate) are typed.

use anyhow::{Context, Result};
use duet_proto::{E2eeClaim, MediaKind};
use duet_sdk::{Call, Client, ConnectOptions, SdkError, SharedEndpoint};
use duet_testkit::sdk::{a_then_b, e2ee_config, e2ee_join};
use duet_testkit::{sid, RelayUnderTest, TestRelay, STEP};

/// Options that connect through `ep` (trust comes from the endpoint).
fn via(ep: &SharedEndpoint) -> ConnectOptions {
    ConnectOptions {
        endpoint: Some(ep.clone()),
        trusted_cert_pem: None,
        ..ConnectOptions::default()
    }
}

async fn recv(call: &Call) -> Result<duet_sdk::MediaFrame> {
    Ok(tokio::time::timeout(STEP, call.recv_media())
        .await
        .context("timed out waiting for a frame")??)
}

async fn e2ee_pair(relay: &TestRelay, session: &str, ep: &SharedEndpoint) -> Result<(Call, Call)> {
    let (a, b) = a_then_b(
        relay,
        e2ee_join(
            relay,
            session,
            &format!("{session}-alice"),
            E2eeClaim::Allowed,
            e2ee_config(true),
            via(ep),
        ),
        e2ee_join(
            relay,
            session,
            &format!("{session}-bob"),
            E2eeClaim::Allowed,
            e2ee_config(true),
            via(ep),
        ),
    )
    .await;
    Ok((a.context("alice")?, b.context("bob")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_e2ee_call_over_one_shared_endpoint_agrees_keys_and_carries_frames() -> Result<()> {
    let relay = TestRelay::start().await;
    let ep = SharedEndpoint::builder(relay.cert_pem()).build()?;
    assert!(!ep.tls_resumption(), "full handshakes unless asked");
    let (a, b) = e2ee_pair(&relay, "shared-e2ee", &ep).await?;
    assert!(a.is_e2ee() && b.is_e2ee());
    assert_eq!(a.security_code().unwrap(), b.security_code().unwrap());
    // Both sides really are on the one socket.
    let local = ep.local_addr()?;
    assert_eq!(a.quic_local_addr().map(|x| x.port()), Some(local.port()));
    assert_eq!(b.quic_local_addr().map(|x| x.port()), Some(local.port()));
    assert_eq!(ep.open_connections(), 2);
    for (from, to, tag) in [(&a, &b, "a->b"), (&b, &a, "b->a")] {
        for (kind, len) in [(MediaKind::Audio, 160), (MediaKind::Video, 9_000)] {
            let mut f = format!("{tag} {kind:?}").into_bytes();
            f.resize(len, 7);
            from.send_media(kind, &f).await?;
            let got = recv(to).await?;
            assert_eq!((got.kind, &got.data[..]), (kind, &f[..]));
        }
    }
    a.leave().await?;
    b.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_on_one_endpoint_never_see_each_others_frames() -> Result<()> {
    let relay = TestRelay::start().await;
    let ep = SharedEndpoint::builder(relay.cert_pem()).build()?;
    let (a1, b1) = e2ee_pair(&relay, "shared-one", &ep).await?;
    // The second call: plain transport, so a frame leaking across would be readable.
    let join = |session: &'static str, user: &'static str| {
        let (relay, ep) = (&relay, &ep);
        async move {
            let t = relay.token(session, user, "phone");
            let c = Client::connect(relay.quic_addr(), t, via(ep)).await?;
            c.join(sid(session)).await
        }
    };
    let (a2, b2) = a_then_b(
        &relay,
        join("shared-two", "carol"),
        join("shared-two", "dave"),
    )
    .await;
    let (a2, b2) = (a2?, b2?);
    assert_eq!(ep.open_connections(), 4);
    assert_ne!(a1.security_code(), None);

    let n = 20;
    for i in 0..n {
        a1.send_media(MediaKind::Audio, format!("one a {i}").as_bytes())
            .await?;
        b1.send_media(MediaKind::Audio, format!("one b {i}").as_bytes())
            .await?;
        a2.send_media(MediaKind::Audio, format!("two a {i}").as_bytes())
            .await?;
        b2.send_media(MediaKind::Audio, format!("two b {i}").as_bytes())
            .await?;
    }
    // Each endpoint gets exactly its own peer's frames, then nothing more.
    for (to, from_tag) in [
        (&b1, "one a"),
        (&a1, "one b"),
        (&b2, "two a"),
        (&a2, "two b"),
    ] {
        let mut got = Vec::new();
        for _ in 0..n {
            let f = recv(to).await?;
            got.push(String::from_utf8(f.data.to_vec())?);
        }
        assert!(
            got.iter().all(|g| g.starts_with(from_tag)),
            "{from_tag}: {got:?}"
        );
        got.sort();
        got.dedup();
        assert_eq!(got.len(), n, "{from_tag}: every frame once");
        let extra = tokio::time::timeout(std::time::Duration::from_millis(200), to.recv_media());
        assert!(extra.await.is_err(), "{from_tag}: nothing else arrives");
    }
    for c in [a1, b1, a2, b2] {
        c.leave().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_socket_is_not_moved_for_one_call_nor_trusts_another_cert() -> Result<()> {
    let relay = TestRelay::start().await;
    let ep = SharedEndpoint::builder(relay.cert_pem()).build()?;
    let t = relay.token("shared-rebind", "erin", "phone");
    let call = Client::connect(relay.quic_addr(), t, via(&ep))
        .await?
        .join(sid("shared-rebind"))
        .await?;
    match call.rebind_quic() {
        Err(SdkError::EndpointShared(_)) => {}
        other => panic!("expected EndpointShared, got {other:?}"),
    }
    assert_eq!(call.quic_local_addr(), Some(ep.local_addr()?));

    // Options naming another certificate than the endpoint's are refused before connecting.
    let other = TestRelay::start().await;
    let opts = ConnectOptions {
        trusted_cert_pem: Some(other.cert_pem()),
        ..via(&ep)
    };
    let t = relay.token("shared-cert", "frank", "phone");
    match Client::connect(relay.quic_addr(), t, opts).await {
        Err(SdkError::Certificate(_)) => {}
        Err(e) => panic!("expected a certificate error, got {e}"),
        Ok(_) => panic!("expected a certificate error, got a connection"),
    }
    // An unusable PEM is typed at build time.
    assert!(matches!(
        SharedEndpoint::builder(b"not a pem".to_vec()).build(),
        Err(SdkError::Certificate(_))
    ));
    call.leave().await?;
    Ok(())
}

//! Resuming an end-to-end encrypted call through a real relay: the same engine continues
//! on the new connection (same keys, same code, no new handshake), both sides prove they
//! hold the keys before media is delivered, and every datagram the relay forwards before,
//! during and after the resume is sealed.

use anyhow::{Context, Result};
use duet_proto::E2eeClaim;
use duet_sdk::{Call, Client, Event, ResumeError, SdkError};
use duet_testkit::sdk::{
    a_then_b, connect_options, deliver_frame, e2ee_config as cfg, e2ee_join, expect_event,
    SendFailure,
};
use duet_testkit::{RelayUnderTest, TestRelay};

const MARKER: &[u8; 24] = b"DUET-RESUME-PLAINTEXT-01";

async fn established(relay: &TestRelay, session: &str) -> Result<(Call, Call)> {
    let opts = connect_options(relay);
    let (a, b) = a_then_b(
        relay,
        e2ee_join(
            relay,
            session,
            "alice",
            E2eeClaim::Allowed,
            cfg(true),
            opts.clone(),
        ),
        e2ee_join(relay, session, "bob", E2eeClaim::Allowed, cfg(true), opts),
    )
    .await;
    Ok((a.context("alice")?, b.context("bob")?))
}

/// Sends `MARKER | i` from `from` until `to` delivers it (datagrams are unreliable).
async fn exchange(from: &Call, to: &Call, i: u8) -> Result<()> {
    let mut f = MARKER.to_vec();
    f.push(i);
    deliver_frame(from, to, &f, SendFailure::Fails).await
}

fn assert_sealed(tap: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>) -> usize {
    let mut n = 0;
    while let Ok(d) = tap.try_recv() {
        n += 1;
        assert!(
            !d.windows(12).any(|w| w == &MARKER[..12]),
            "a datagram the relay forwarded holds plaintext: {d:?}"
        );
    }
    n
}

/// Finding 1 of the E2EE review. On the old main `Client::resume` rebuilt the call with
/// `e2ee = false`: no sealer, no opener, so after the resume `send_media` sent `MARKER` in
/// the clear, bob's tap saw it, and `is_e2ee()` turned false. Now the resumed call is the
/// same engine: the code is unchanged, both sides report `KeysConfirmed`, and no datagram
/// the relay forwarded either way holds the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_e2ee_call_resumes_with_the_same_keys_and_frames_stay_sealed() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = established(&relay, "resume-sealed").await?;
    let code = a.security_code().context("a code")?;
    assert_eq!(Some(code.clone()), b.security_code());
    let (mut tap_a, mut tap_b) = (a.tap_raw(), b.tap_raw());
    exchange(&a, &b, 0).await?;
    exchange(&b, &a, 1).await?;

    // The network drops alice's connection; the relay keeps her place.
    a.connection().close(0u32.into(), b"network change");
    expect_event(&b, Event::PeerReconnecting).await?;
    a.resume().await?;
    assert!(a.resumed());
    expect_event(&a, Event::KeysConfirmed).await?;
    expect_event(&b, Event::KeysConfirmed).await?;

    assert!(a.is_e2ee() && b.is_e2ee());
    assert_eq!(a.security_code(), Some(code.clone()));
    assert_eq!(b.security_code(), Some(code));
    exchange(&a, &b, 2).await?;
    exchange(&b, &a, 3).await?;
    assert!(assert_sealed(&mut tap_a) >= 2);
    assert!(assert_sealed(&mut tap_b) >= 2);
    let (sa, sb) = (a.e2ee_stats().unwrap(), b.e2ee_stats().unwrap());
    assert!(
        sa.confirmations >= 1 && sb.confirmations >= 1,
        "{sa:?} {sb:?}"
    );
    assert_eq!(sa.rejected_tampered + sb.rejected_tampered, 0);
    a.leave().await?;
    b.leave().await?;
    Ok(())
}

/// Finding 1, the public path: on the old main `Client::resume(&ticket)` of an E2EE call
/// returned a working call with no keys. Now the ticket says the call was end-to-end
/// encrypted, and the resume fails typed before anything is joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_cannot_resume_an_e2ee_call_without_its_keys() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, _b) = established(&relay, "resume-ticket").await?;
    let ticket = a.resume_ticket();
    assert!(ticket.e2ee);
    a.connection().close(0u32.into(), b"network change");
    let client = Client::connect(
        relay.quic_addr(),
        relay.token("resume-ticket", "alice", "alice-phone"),
        connect_options(&relay),
    )
    .await?;
    match client.resume(&ticket).await {
        Err(SdkError::Resume(ResumeError::NeedsKeys)) => {}
        Ok(c) => panic!("a keyless call for an E2EE session: e2ee={}", c.is_e2ee()),
        Err(e) => panic!("untyped: {e}"),
    }
    // The call itself still resumes with its keys.
    a.resume().await?;
    expect_event(&a, Event::KeysConfirmed).await?;
    Ok(())
}

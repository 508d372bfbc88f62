//! End-to-end encrypted calls over a real in-process relay and real QUIC: the security
//! code, frames of each kind intact, the opt-in matrix, rekey mid-call, and that the bytes
//! the relay forwards hold none of the plaintext.

use std::time::Duration;

use anyhow::{Context, Result};
use duet_proto::{E2eeClaim, MediaKind};
use duet_sdk::{
    Call, E2eeConfig, E2eeUnavailable, Event, HandshakeError, SdkError, UnavailableReason,
};
use duet_testkit::sdk::{a_then_b, connect_options, e2ee_config as cfg, e2ee_join};
use duet_testkit::{claims, RelayUnderTest, TestRelay, STEP};

fn token(relay: &TestRelay, session: &str, user: &str, claim: E2eeClaim) -> String {
    let mut c = claims(session, user, &format!("{user}-phone"));
    c.e2ee = claim;
    relay.token_with(&c)
}

async fn join(
    relay: &TestRelay,
    session: &str,
    user: &str,
    claim: E2eeClaim,
    cfg: E2eeConfig,
) -> Result<Call, SdkError> {
    e2ee_join(relay, session, user, claim, cfg, connect_options(relay)).await
}

/// Slot A joins first and waits; slot B joins once A is in.
async fn pair(
    relay: &TestRelay,
    session: &str,
    (claim_a, cfg_a): (E2eeClaim, E2eeConfig),
    (claim_b, cfg_b): (E2eeClaim, E2eeConfig),
) -> (Result<Call, SdkError>, Result<Call, SdkError>) {
    a_then_b(
        relay,
        join(relay, session, "alice", claim_a, cfg_a),
        join(relay, session, "bob", claim_b, cfg_b),
    )
    .await
}

async fn established_pair(relay: &TestRelay, session: &str) -> Result<(Call, Call)> {
    let on = (E2eeClaim::Allowed, cfg(true));
    let (a, b) = pair(relay, session, on.clone(), (E2eeClaim::Allowed, cfg(true))).await;
    Ok((a.context("alice")?, b.context("bob")?))
}

async fn recv(call: &Call) -> Result<duet_sdk::MediaFrame> {
    Ok(tokio::time::timeout(STEP, call.recv_media())
        .await
        .context("timed out waiting for a frame")??)
}

fn frame(kind: MediaKind, i: usize, len: usize) -> Vec<u8> {
    let mut f = format!("{kind:?} frame {i} ").into_bytes();
    f.resize(len, (i % 251) as u8);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_get_the_same_code_and_frames_of_each_kind_arrive_intact() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = established_pair(&relay, "code-and-frames").await?;
    let (ca, cb) = (a.security_code().unwrap(), b.security_code().unwrap());
    assert_eq!(ca, cb);
    assert_eq!(ca.digits().len(), 20);
    assert!(ca.digits().bytes().all(|d| d.is_ascii_digit()));
    assert!(ca.groups().iter().all(|g| g.len() == 5));
    assert_eq!(ca.to_string().split(' ').count(), 4, "{ca}");
    assert!(a.is_e2ee() && b.is_e2ee());
    assert!(matches!(
        a.next_event().await,
        Some(Event::E2eeEstablished { .. })
    ));

    // Frames of each kind, small and multi-datagram, both ways (after B's first frame A
    // may still be buffering: covered by the ordering of join_e2ee's return).
    for (from, to) in [(&a, &b), (&b, &a)] {
        for (i, (kind, len)) in [
            (MediaKind::Audio, 160),
            (MediaKind::Video, 9_000),
            (MediaKind::Screen, 40_000),
        ]
        .into_iter()
        .enumerate()
        {
            let f = frame(kind, i, len);
            from.send_media(kind, &f).await?;
            let got = recv(to).await?;
            assert_eq!(got.kind, kind);
            assert_eq!(got.data.as_ref(), f.as_slice(), "{kind:?}");
        }
    }
    let s = a.e2ee_stats().unwrap();
    assert_eq!((s.frames_sealed, s.frames_opened, s.rejected()), (3, 3, 0));
    a.leave().await?;
    b.leave().await?;
    Ok(())
}

/// A user who turns E2EE off for one call while the token allows it: that side gets its
/// typed `UserNotEnabled`. Its decline carries a token that *allows* E2EE, so it proves
/// nothing: the other side gets a typed handshake error (it cannot tell this from a
/// relay's forged "go clear"), never an `E2eeUnavailable` inviting a fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_side_off_is_typed_on_both_sides_and_invites_no_fallback() -> Result<()> {
    let relay = TestRelay::start().await;
    for (a_on, b_on) in [(true, false), (false, true)] {
        let session = format!("one-off-{a_on}");
        let (a, b) = pair(
            &relay,
            &session,
            (E2eeClaim::Allowed, cfg(a_on)),
            (E2eeClaim::Allowed, cfg(b_on)),
        )
        .await;
        let (off, on) = if a_on { (b, a) } else { (a, b) };
        match off {
            Err(SdkError::E2eeUnavailable(u)) => {
                assert_eq!(u, E2eeUnavailable::local(UnavailableReason::UserNotEnabled))
            }
            other => panic!("the side that turned E2EE off: {:?}", other.err()),
        }
        match on {
            Err(SdkError::Handshake(HandshakeError::UnprovenDecline)) => {}
            other => panic!("the side that turned E2EE on: {:?}", other.err()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_claims_that_forbid_e2ee_are_typed_on_both_sides() -> Result<()> {
    let relay = TestRelay::start().await;
    for (claim, reason) in [
        (E2eeClaim::PolicyDisabled, UnavailableReason::PolicyDisabled),
        (
            E2eeClaim::ComplianceRecording,
            UnavailableReason::ComplianceRecording,
        ),
    ] {
        let session = format!("claim-{}", reason.as_str().replace('_', "-"));
        // The app asks for E2EE on both sides; the token says otherwise for bob.
        let (a, b) = pair(
            &relay,
            &session,
            (E2eeClaim::Allowed, cfg(true)),
            (claim, cfg(true)),
        )
        .await;
        match b {
            Err(SdkError::E2eeUnavailable(u)) => assert_eq!(u, E2eeUnavailable::local(reason)),
            other => panic!("{claim:?} side: {:?}", other.err()),
        }
        match a {
            Err(SdkError::E2eeUnavailable(u)) => {
                assert_eq!(u.reason, UnavailableReason::PeerNotEnabled);
                assert_eq!(u.peer_reason, Some(reason));
            }
            other => panic!("peer of {claim:?}: {:?}", other.err()),
        }
    }
    Ok(())
}

/// The forbidden side joins first, while nobody is there to tell: the relay remembers
/// the refusal, so the peer joining later gets a typed answer at once, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_joining_after_a_forbidden_join_gets_a_typed_answer() -> Result<()> {
    let relay = TestRelay::start().await;
    let first = join(
        &relay,
        "late-callee",
        "bob",
        E2eeClaim::PolicyDisabled,
        cfg(true),
    )
    .await;
    match first {
        Err(SdkError::E2eeUnavailable(u)) => {
            assert_eq!(u, E2eeUnavailable::local(UnavailableReason::PolicyDisabled))
        }
        other => panic!("forbidden side: {:?}", other.err()),
    }
    let started = std::time::Instant::now();
    let later = join(
        &relay,
        "late-callee",
        "alice",
        E2eeClaim::Allowed,
        cfg(true),
    )
    .await;
    match later {
        Err(SdkError::E2eeUnavailable(u)) => {
            assert_eq!(u.reason, UnavailableReason::PeerNotEnabled);
            assert_eq!(u.peer_reason, Some(UnavailableReason::PolicyDisabled));
        }
        other => panic!("later peer: {:?}", other.err()),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered, not timed out"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_mid_call_loses_no_frames() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = established_pair(&relay, "rekey").await?;
    let n = 40;
    let mut sent = Vec::new();
    for i in 0..n {
        if i == n / 2 {
            assert_eq!(a.rekey()?, 1);
        }
        let f = frame(MediaKind::Audio, i, 200);
        a.send_media(MediaKind::Audio, &f).await?;
        sent.push(f);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for f in &sent {
        assert_eq!(recv(&b).await?.data.as_ref(), f.as_slice());
    }
    let s = b.e2ee_stats().unwrap();
    assert_eq!(s.frames_opened, n as u64);
    assert_eq!(s.rekeys_received, 1);
    assert_eq!(s.rejected(), 0);
    assert_eq!(a.e2ee_stats().unwrap().rekeys_sent, 1);
    // Both sides report it.
    let mut seen = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), b.next_event()).await
    {
        seen |= ev
            == Event::Rekeyed {
                by_peer: true,
                epoch: 1,
            };
    }
    assert!(seen, "bob saw the peer's rekey");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_no_plaintext() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = established_pair(&relay, "no-plaintext").await?;
    let marker: [u8; 32] = *b"DUET-PLAINTEXT-MARKER-0123456789";
    let mut tap = b.tap_raw();
    let mut plain = Vec::new();
    for rep in 0..50 {
        plain.extend_from_slice(&marker);
        plain.push(rep as u8);
    }
    // One small frame that fits one datagram and one split over several.
    for f in [marker.to_vec(), plain.repeat(20)] {
        a.send_media(MediaKind::Video, &f).await?;
        assert_eq!(recv(&b).await?.data.as_ref(), f.as_slice());
    }
    let mut datagrams = 0;
    let mut bytes = 0;
    while let Ok(d) = tap.try_recv() {
        datagrams += 1;
        bytes += d.len();
        assert!(
            !d.windows(marker.len()).any(|w| w == marker)
                && !d.windows(8).any(|w| w == &marker[..8]),
            "a datagram the relay forwarded holds plaintext"
        );
    }
    assert!(datagrams >= 3, "tapped {datagrams} datagrams");
    assert!(bytes > plain.len() * 20, "tapped {bytes} bytes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reads_the_claim_from_the_token() -> Result<()> {
    let relay = TestRelay::start().await;
    let t = token(&relay, "s", "u", E2eeClaim::ComplianceRecording);
    assert_eq!(
        duet_sdk::token_claims(&t)?.e2ee,
        E2eeClaim::ComplianceRecording
    );
    assert!(matches!(
        duet_sdk::token_claims("not-a-token"),
        Err(SdkError::Token(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_bob_sends_the_moment_he_is_established_reach_alice() -> Result<()> {
    // Bob (slot B) is established when he sends Finished, before alice has processed it:
    // his first frames may reach alice before her keys; she buffers them and opens them.
    let relay = &TestRelay::start().await;
    let before = relay.endpoint_count();
    let first = frame(MediaKind::Audio, 7, 300);
    let a = join(relay, "early", "alice", E2eeClaim::Allowed, cfg(true));
    let b = async {
        while relay.endpoint_count() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let b = join(relay, "early", "bob", E2eeClaim::Allowed, cfg(true)).await?;
        for _ in 0..3 {
            b.send_media(MediaKind::Audio, &first).await?;
        }
        Ok::<_, SdkError>(b)
    };
    let (a, b) = tokio::join!(a, b);
    let (a, _b) = (a?, b?);
    for _ in 0..3 {
        assert_eq!(recv(&a).await?.data.as_ref(), first.as_slice());
    }
    let s = a.e2ee_stats().unwrap();
    assert_eq!((s.frames_opened, s.rejected()), (3, 0), "{s:?}");
    Ok(())
}

/// The in-call hybrid rekey through the real relay: both directions move to new roots
/// (epochs 2^20 ahead), the code does not change, no frame is lost or rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_rekey_mid_call_keeps_the_code_and_the_media() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = established_pair(&relay, "hybrid").await?;
    let code = a.security_code();
    a.rekey_hybrid().await?;
    assert!(matches!(
        a.rekey_hybrid().await,
        Err(SdkError::RekeyLimited)
    ));
    let jump = duet_sdk::e2ee::pcs::EPOCH_JUMP;
    for (from, to) in [(&a, &b), (&b, &a), (&a, &b), (&b, &a)] {
        // Resent until it arrives: the switch happens in between.
        let f = frame(MediaKind::Audio, 1, 120);
        let got = tokio::time::timeout(STEP, async {
            loop {
                from.send_media(MediaKind::Audio, &f).await?;
                if let Ok(Ok(g)) =
                    tokio::time::timeout(Duration::from_millis(200), to.recv_media()).await
                {
                    return anyhow::Ok(g);
                }
            }
        })
        .await??;
        assert_eq!(got.data.as_ref(), f.as_slice());
    }
    let deadline = tokio::time::Instant::now() + STEP;
    for c in [&a, &b] {
        let mut moved = false;
        while !moved {
            let ev = tokio::time::timeout_at(deadline, c.next_event())
                .await
                .context("no rekey event")?
                .context("events ended")?;
            moved = matches!(ev, Event::Rekeyed { by_peer: false, epoch } if epoch >= jump);
        }
        assert_eq!(c.security_code(), code);
        assert_eq!(c.e2ee_stats().unwrap().rejected_tampered, 0);
    }
    Ok(())
}

/// `Padding::ConstantAudio`: the relay sees one size for every audio frame, whatever the
/// codec produced; the app gets its frames back exactly, with their authenticated order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_size_audio_hides_frame_sizes_from_the_relay() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, b) = established_pair(&relay, "padding").await?;
    a.set_padding(duet_sdk::Padding::ConstantAudio(200));
    let mut tap = b.tap_raw();
    let mut last = None;
    for (i, len) in [10usize, 73, 150, 198].into_iter().enumerate() {
        let f = frame(MediaKind::Audio, i, len);
        a.send_media(MediaKind::Audio, &f).await?;
        let got = recv(&b).await?;
        assert_eq!(got.data.as_ref(), f.as_slice());
        let seq = got.seq.context("an E2EE frame has its order")?;
        assert!(last < Some(seq), "authenticated order increases");
        last = Some(seq);
    }
    let mut sizes = std::collections::BTreeSet::new();
    while let Ok(d) = tap.try_recv() {
        sizes.insert(d.len());
    }
    assert_eq!(sizes.len(), 1, "one size on the wire: {sizes:?}");
    assert!(a.e2ee_stats().unwrap().padding_bytes_sent > 0);
    Ok(())
}

/// `Call::rebind_quic` mid-call on loopback (no network namespace needed, unlike
/// `hostile_network`): the QUIC connection moves to a new local port and the relay follows
/// it, so the same connection carries on (no resume, no new handshake), with the same code,
/// media both ways, and the relay counts the migration. Before `rebind_quic` the SDK could
/// not move its QUIC socket, and the relay had no `duet_quic_migrations_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_quic_socket_mid_call_keeps_the_connection_and_the_code() -> Result<()> {
    use duet_testkit::sdk::{deliver_frame, SendFailure};
    let relay = TestRelay::start().await;
    let (a, b) = established_pair(&relay, "rebind-quic").await?;
    let (code, conn) = (a.security_code(), a.connection().stable_id());
    let before = a.quic_local_addr().context("a QUIC address")?;
    let after = a.rebind_quic()?;
    assert_ne!(after.port(), before.port());
    assert_eq!(a.quic_local_addr(), Some(after));
    for (i, (from, to)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
        let f = frame(MediaKind::Audio, i, 200);
        deliver_frame(from, to, &f, SendFailure::Fails).await?;
    }
    // Half a second of a call's audio both ways: the relay reads a connection's peer
    // address at most every 250 ms of its media, not per datagram.
    for i in 0..25 {
        let f = frame(MediaKind::Audio, i, 200);
        a.send_media(MediaKind::Audio, &f).await?;
        b.send_media(MediaKind::Audio, &f).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let migrations =
        duet_testkit::wait_metric(relay.ops_addr(), "duet_quic_migrations_total", 1.0).await;
    assert_eq!(migrations, 1.0);
    assert_eq!(a.connection().stable_id(), conn, "the same connection");
    assert!(!a.resumed());
    assert_eq!(a.security_code(), code);
    assert_eq!(b.security_code(), code);
    Ok(())
}

//! End-to-end encrypted calls through a hostile relay ([`duet_testkit::HostileRelay`]: a
//! front that holds the relay's own certificate and tampers with everything it forwards).
//! Every scenario ends in a call that is still end-to-end encrypted with the same code, or
//! in a typed error; never in delivered plaintext or a keyless call. One test per finding
//! of the E2EE review (1: resume strips E2EE, 2: forged decline, 3: spliced sessions,
//! 4: advisory pin), then generic tampering.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use duet_proto::{
    ClientMessage, E2eeClaim, JoinToken, MediaKind, RefusalReason, RelayMessage, SigningKey, Slot,
};
use duet_sdk::e2ee::HANDSHAKE_VERSION;
use duet_sdk::{
    Call, CallOptions, Client, E2eeConfig, Event, HandshakeError, IdentityCheck, IdentityPolicy,
    PeerIdentity, SdkError,
};
use duet_testkit::hostile::handshake_type;
use duet_testkit::sdk::{
    connect_options, deliver_frame, e2ee_config, issuer_keys, wait_for_event, SendFailure,
};
use duet_testkit::{
    claims, sid, Dir, HostileRelay, RelayUnderTest, Script, Tamper, TestRelay, STEP,
};

const MARKER: &[u8; 20] = b"HOSTILE-PLAINTEXT-01";
const T_HELLO: u8 = 2;
const T_REVEAL: u8 = 3;
const T_FINISHED: u8 = 4;
const T_DECLINE: u8 = 5;

fn hostile(relay: &TestRelay, tamper: impl Tamper) -> HostileRelay {
    HostileRelay::start(relay.quic_addr(), relay.data_dir(), Arc::new(tamper))
        .expect("the hostile front starts")
}

/// Joins `session` as `user` through the front, E2EE allowed, peer tokens verified.
async fn join_via(
    front: &HostileRelay,
    relay: &TestRelay,
    session: &str,
    user: &str,
    mut cfg: E2eeConfig,
) -> Result<Call, SdkError> {
    cfg.token_keys = issuer_keys(relay);
    let token = relay.token(session, user, &format!("{user}-phone"));
    let client = Client::connect(front.addr(), token, connect_options(relay)).await?;
    client.join_e2ee(sid(session), cfg).await
}

/// Alice (slot A) first, then bob.
async fn pair_via(
    front: &HostileRelay,
    relay: &TestRelay,
    session: &str,
    (cfg_a, cfg_b): (E2eeConfig, E2eeConfig),
) -> (Result<Call, SdkError>, Result<Call, SdkError>) {
    duet_testkit::sdk::a_then_b(
        relay,
        join_via(front, relay, session, "alice", cfg_a),
        join_via(front, relay, session, "bob", cfg_b),
    )
    .await
}

/// Waits until the relay holds no endpoint, so the next `pair_via` orders its joins by
/// the relay's count (an earlier phase's endpoints leaving would fool it).
async fn settle(relay: &TestRelay) {
    let deadline = tokio::time::Instant::now() + STEP;
    while relay.endpoint_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn on() -> E2eeConfig {
    e2ee_config(true)
}

fn with_timeout(mut cfg: E2eeConfig, t: Duration) -> E2eeConfig {
    cfg.handshake_timeout = t;
    cfg
}

async fn wait_for(call: &Call, what: &str, f: impl Fn(&Event) -> bool) -> Result<Event> {
    wait_for_event(call, what, STEP, f).await
}

/// Sends `MARKER | i` until `to` delivers it.
async fn exchange(from: &Call, to: &Call, i: u8) -> Result<()> {
    let mut f = MARKER.to_vec();
    f.push(i);
    deliver_frame(from, to, &f, SendFailure::Fails).await
}

/// A result that carries no keys and is not an invitation to fall back.
fn assert_typed_attack(r: &Result<Call, SdkError>, who: &str) {
    match r {
        Ok(c) => panic!("{who}: a call came out (e2ee={})", c.is_e2ee()),
        Err(SdkError::E2eeUnavailable(u)) => panic!("{who}: an attack read as unavailable: {u}"),
        Err(_) => {}
    }
}

/// A token with `claim` for `user` on `session`, signed by a key the relay (and the
/// attacker) has: not the issuer's.
fn forged_token(session: &str, user: &str, claim: E2eeClaim) -> String {
    let mut c = claims(session, user, &format!("{user}-phone"));
    c.e2ee = claim;
    let attacker = SigningKey::generate("default").expect("a key");
    JoinToken::mint(&attacker, &c)
}

fn decline_with(token: &str) -> Bytes {
    let mut m = vec![HANDSHAKE_VERSION, T_DECLINE, 3];
    m.extend_from_slice(&(token.len() as u16).to_be_bytes());
    m.extend_from_slice(token.as_bytes());
    m.into()
}

/// Finding 1. On the old main a relay that dropped both connections once turned the call
/// into a plaintext call: the apps' `Client::resume` built a keyless call and `send_media`
/// sent `MARKER` in the clear (the front's log would hold it). Now both resume the same
/// engine: same code, `KeysConfirmed` on both, and no datagram either way ever holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding1_both_connections_dropped_the_call_resumes_sealed_with_the_same_code() -> Result<()>
{
    let relay = TestRelay::start().await;
    let front = hostile(&relay, duet_testkit::Honest);
    let (a, b) = pair_via(&front, &relay, "h-resume", (on(), on())).await;
    let (a, b) = (a?, b?);
    let code = a.security_code().context("a code")?;
    exchange(&a, &b, 0).await?;
    exchange(&b, &a, 1).await?;

    front.handle.close(0);
    front.handle.close(1);
    for c in [&a, &b] {
        wait_for(c, "Disconnected", |e| matches!(e, Event::Disconnected(_))).await?;
    }
    let (ra, rb) = tokio::join!(a.resume(), b.resume());
    ra?;
    rb?;
    for c in [&a, &b] {
        wait_for(c, "KeysConfirmed", |e| *e == Event::KeysConfirmed).await?;
        assert!(c.is_e2ee());
        assert_eq!(c.security_code(), Some(code.clone()));
    }
    exchange(&a, &b, 2).await?;
    exchange(&b, &a, 3).await?;
    assert!(
        front.handle.legs() >= 4,
        "the resumes went through the front"
    );
    assert!(
        !front.handle.saw_in_datagrams(&MARKER[..12]),
        "plaintext crossed the relay"
    );
    Ok(())
}

/// Finding 2, in the handshake. On the old main a `Decline` was accepted in any state with
/// a reason the relay chose, so the relay could drop alice's Reveal, answer "compliance
/// recording" and the README's pattern fell back to a plain call. Now: a typed handshake
/// error (an attack) for alice, and no keys, no "unavailable" anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding2_a_forged_decline_after_reveal_is_an_attack_not_unavailable() -> Result<()> {
    let relay = TestRelay::start().await;
    let forged = forged_token("h-decline", "bob", E2eeClaim::ComplianceRecording);
    let front = hostile(
        &relay,
        Script::new().on_client(move |leg, msg, h| match msg {
            ClientMessage::Signal(s) if handshake_type(&s) == Some(T_REVEAL) => {
                h.inject(leg, RelayMessage::Signal(decline_with(&forged)));
                vec![]
            }
            other => vec![other],
        }),
    );
    let (a, b) = pair_via(
        &front,
        &relay,
        "h-decline",
        (on(), with_timeout(on(), Duration::from_secs(3))),
    )
    .await;
    assert!(
        matches!(a, Err(SdkError::Handshake(HandshakeError::UnprovenDecline))),
        "alice: {:?}",
        a.err()
    );
    assert_typed_attack(&b, "bob");
    Ok(())
}

/// Finding 2, the relay's own notice. On the old main `PeerE2eeUnavailable { claim }` was
/// taken at its word: "compliance recording", `E2eeUnavailable`, fall back. Now the token
/// it forwards must be the peer's, signed by the issuer, for this session, forbidding E2EE:
/// a relay-signed one, or a real one of another session, is a typed attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding2_a_relay_notice_without_the_peers_signed_token_is_an_attack() -> Result<()> {
    let relay = TestRelay::start().await;
    let real_elsewhere = {
        let mut c = claims("another-call", "bob", "bob-phone");
        c.e2ee = E2eeClaim::ComplianceRecording;
        relay.token_with(&c)
    };
    for token in [
        forged_token("h-notice", "bob", E2eeClaim::ComplianceRecording),
        real_elsewhere,
    ] {
        let front = hostile(
            &relay,
            Script::new().on_relay(move |_, msg, _| match msg {
                RelayMessage::Joined(j) => vec![
                    RelayMessage::Joined(j),
                    RelayMessage::PeerE2eeUnavailable {
                        claim: E2eeClaim::ComplianceRecording,
                        token: token.clone(),
                    },
                ],
                other => vec![other],
            }),
        );
        let a = join_via(&front, &relay, "h-notice", "alice", on()).await;
        assert!(
            matches!(a, Err(SdkError::Handshake(HandshakeError::UnprovenDecline))),
            "{:?}",
            a.err()
        );
    }
    Ok(())
}

/// Finding 3, the relay lying in `Joined`. Bob asked for "h-splice-b"; the relay joined
/// him there but told him "h-splice-a" and wired his signals to alice's. On the old main
/// the handshake context was `Joined.session`, so both sides used "h-splice-a", agreed and
/// showed matching codes: two unrelated callers paired. Now bob's SDK refuses the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding3_a_spliced_pairing_fails_typed() -> Result<()> {
    let relay = TestRelay::start().await;
    let front = hostile(&relay, splicer(true, "h-splice-a"));
    let (a, b) = splice_pair(&front, &relay, "h-splice").await;
    assert!(
        matches!(&b, Err(SdkError::WrongSession { .. })),
        "bob: {:?}",
        b.as_ref().err()
    );
    assert_typed_attack(&a, "alice");

    // Without the lie, the tokens tell: alice's is for another session than bob asked for.
    drop((a, b));
    settle(&relay).await;
    let front = hostile(&relay, splicer(false, "h-splice2-a"));
    let (a, b) = splice_pair(&front, &relay, "h-splice2").await;
    assert!(
        matches!(&b, Err(SdkError::Handshake(HandshakeError::WrongSession))),
        "bob: {:?}",
        b.as_ref().err()
    );
    assert_typed_attack(&a, "alice");
    Ok(())
}

/// Leg 0 = alice in `<prefix>-a`, leg 1 = bob in `<prefix>-b`: each alone in its session
/// upstream; the front tells bob he is slot B with his peer present (and, with `lie`, in
/// alice's session), tells alice bob joined, and cross-wires their signals.
fn splicer(lie: bool, alice_session: &'static str) -> Script {
    Script::new()
        .on_client(|leg, msg, h| match msg {
            ClientMessage::Signal(s) => {
                h.inject(1 - leg, RelayMessage::Signal(s));
                vec![]
            }
            other => vec![other],
        })
        .on_relay(move |leg, msg, h| match msg {
            RelayMessage::Joined(mut j) if leg == 1 => {
                if lie {
                    j.session = sid(alice_session);
                }
                j.slot = Slot::B;
                j.peer_present = true;
                h.inject(0, RelayMessage::PeerJoined);
                vec![RelayMessage::Joined(j)]
            }
            other => vec![other],
        })
}

async fn splice_pair(
    front: &HostileRelay,
    relay: &TestRelay,
    prefix: &str,
) -> (Result<Call, SdkError>, Result<Call, SdkError>) {
    let (sa, sb) = (format!("{prefix}-a"), format!("{prefix}-b"));
    duet_testkit::sdk::a_then_b(
        relay,
        join_via(
            front,
            relay,
            &sa,
            "alice",
            with_timeout(on(), Duration::from_secs(3)),
        ),
        join_via(front, relay, &sb, "bob", on()),
    )
    .await
}

/// Finding 4. On the old main a changed pinned identity was advisory (media flowed with
/// `IdentityCheck::Changed`) and `PeerIdentityChanged` went through `try_send` on a bounded
/// queue, so a flood of relay messages pushed it out. Now the default blocks (typed, no
/// keys), and under `Warn` the verdict is the call's state and its event survives a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding4_a_changed_pin_blocks_and_a_flood_cannot_hide_it() -> Result<()> {
    let relay = TestRelay::start().await;
    let pinned_wrong = |policy| {
        let mut cfg = on();
        cfg.options = CallOptions {
            pinned_peer: Some(PeerIdentity::from_bytes([0x5a; 32])),
            on_identity_change: policy,
            ..cfg.options
        };
        cfg
    };
    // Block (the default).
    let front1 = hostile(&relay, duet_testkit::Honest);
    let (a, b) = pair_via(
        &front1,
        &relay,
        "h-pin-block",
        (
            pinned_wrong(IdentityPolicy::Block),
            with_timeout(on(), Duration::from_secs(3)),
        ),
    )
    .await;
    assert!(
        matches!(
            a,
            Err(SdkError::Handshake(HandshakeError::PinnedIdentityChanged))
        ),
        "{:?}",
        a.err()
    );
    drop(b);
    settle(&relay).await;

    // Warn, with 3000 relay notices flooded in just before alice's keys are installed.
    let flooded = Arc::new(AtomicBool::new(false));
    let f = flooded.clone();
    let front2 = hostile(
        &relay,
        Script::new().on_relay(move |leg, msg, _| match msg {
            RelayMessage::Signal(s) if leg == 0 && handshake_type(&s) == Some(T_FINISHED) => {
                f.store(true, Ordering::Relaxed);
                let mut v = vec![RelayMessage::Dropped(RefusalReason::RateLimited); 3000];
                v.push(RelayMessage::Signal(s));
                v
            }
            other => vec![other],
        }),
    );
    let (a, b) = pair_via(
        &front2,
        &relay,
        "h-pin-warn",
        (pinned_wrong(IdentityPolicy::Warn), on()),
    )
    .await;
    let (a, _b) = (a?, b?);
    assert!(flooded.load(Ordering::Relaxed));
    assert_eq!(a.identity_check(), Some(IdentityCheck::Changed));
    let first = a.next_event().await;
    assert!(
        matches!(
            first,
            Some(Event::E2eeEstablished {
                identity_check: IdentityCheck::Changed,
                ..
            })
        ),
        "{first:?}"
    );
    wait_for(&a, "PeerIdentityChanged", |e| {
        matches!(e, Event::PeerIdentityChanged { .. })
    })
    .await?;
    Ok(())
}

/// Media duplicated, reordered and forged on the way: every real frame is delivered once,
/// forged ones never, and nothing crosses in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_and_forged_media_is_never_misdelivered() -> Result<()> {
    let relay = TestRelay::start().await;
    let held = Arc::new(std::sync::Mutex::new(None::<Bytes>));
    let front = hostile(
        &relay,
        Script::new().on_datagram(move |_, dir, d, _| {
            if dir == Dir::ToClient {
                return vec![d];
            }
            // Swap each pair, and send each twice.
            let mut h = held.lock().unwrap();
            match h.take() {
                None => {
                    *h = Some(d);
                    vec![]
                }
                Some(prev) => vec![d.clone(), prev.clone(), d, prev],
            }
        }),
    );
    let (a, b) = pair_via(&front, &relay, "h-media", (on(), on())).await;
    let (a, b) = (a?, b?);
    let n = 40u8;
    for i in 0..n {
        let mut f = MARKER.to_vec();
        f.push(i);
        a.send_media(MediaKind::Audio, &f).await?;
    }
    // A forged piece (valid framing, junk body) straight to bob.
    let mut forged = vec![duet_proto::MEDIA_VERSION, MediaKind::Audio as u8];
    forged.extend_from_slice(&[0, 0, 0x7f, 0xff, 0, 0, 0, 1]);
    forged.extend_from_slice(&[0xab; 60]);
    front.handle.inject_datagram(1, forged.into());
    let mut got = std::collections::BTreeSet::new();
    while let Ok(Ok(f)) = tokio::time::timeout(Duration::from_millis(500), b.recv_media()).await {
        assert!(f.data.starts_with(MARKER), "a forged frame was delivered");
        assert!(got.insert(f.data.clone()), "a frame was delivered twice");
    }
    assert!(got.len() >= (n as usize) - 1, "{} of {n} frames", got.len());
    let s = b.e2ee_stats().context("stats")?;
    assert!(s.rejected_replayed >= 1, "{s:?}");
    assert!(!front.handle.saw_in_datagrams(&MARKER[..12]));
    Ok(())
}

/// Rewritten handshake messages and a relay that gives both endpoints slot A: typed
/// errors on both sides, no keys, no "unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_signals_and_a_lying_slot_fail_typed() -> Result<()> {
    let relay = TestRelay::start().await;
    let short = || with_timeout(on(), Duration::from_secs(3));
    // A flipped byte in bob's Hello (inside his X25519 share).
    let front1 = hostile(
        &relay,
        Script::new().on_relay(|leg, msg, _| match msg {
            RelayMessage::Signal(s) if leg == 0 && handshake_type(&s) == Some(T_HELLO) => {
                let mut v = s.to_vec();
                v[40] ^= 1;
                vec![RelayMessage::Signal(v.into())]
            }
            other => vec![other],
        }),
    );
    let (a, b) = pair_via(&front1, &relay, "h-rewrite", (short(), short())).await;
    assert_typed_attack(&a, "alice");
    assert_typed_attack(&b, "bob");
    drop((a, b));
    settle(&relay).await;

    // Both told they are slot A: both commit, neither accepts a commit.
    let front2 = hostile(
        &relay,
        Script::new().on_relay(|leg, msg, _| match msg {
            RelayMessage::Joined(mut j) if leg == 1 => {
                j.slot = Slot::A;
                vec![RelayMessage::Joined(j)]
            }
            other => vec![other],
        }),
    );
    let (a, b) = pair_via(&front2, &relay, "h-slot", (short(), short())).await;
    assert_typed_attack(&a, "alice");
    assert_typed_attack(&b, "bob");
    assert!(
        matches!(
            a,
            Err(SdkError::Handshake(HandshakeError::Unexpected { .. }))
        ),
        "{:?}",
        a.err()
    );
    Ok(())
}

/// Signals delayed (each by 150 ms, so they also arrive in bursts) still give an E2EE call
/// with one code; a dropped handshake message ends both sides typed, with no keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_or_dropped_signals_end_established_or_typed() -> Result<()> {
    let relay = TestRelay::start().await;
    let front1 = hostile(
        &relay,
        Script::new().on_relay(|leg, msg, h| match msg {
            RelayMessage::Signal(s) => {
                let h = h.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    h.inject(leg, RelayMessage::Signal(s));
                });
                vec![]
            }
            other => vec![other],
        }),
    );
    let (a, b) = pair_via(&front1, &relay, "h-delay", (on(), on())).await;
    let (a, b) = (a?, b?);
    assert_eq!(a.security_code(), b.security_code());
    assert!(a.is_e2ee() && b.is_e2ee());
    exchange(&a, &b, 0).await?;
    drop((a, b));
    settle(&relay).await;

    let front2 = hostile(
        &relay,
        Script::new().on_client(|_, msg, _| match msg {
            ClientMessage::Signal(s) if handshake_type(&s) == Some(T_REVEAL) => vec![],
            other => vec![other],
        }),
    );
    let short = || with_timeout(on(), Duration::from_secs(2));
    let (a, b) = pair_via(&front2, &relay, "h-drop", (short(), short())).await;
    assert_typed_attack(&a, "alice");
    assert_typed_attack(&b, "bob");
    assert!(!front2.handle.saw_in_datagrams(&MARKER[..12]));
    Ok(())
}

//! The E2EE core through the public API only, as the transport will use it: two endpoints
//! exchange the handshake through a fake relay that records everything it forwards, then
//! send frames both ways; the recording contains none of the plaintext.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use duet_proto::{E2eeClaim, Slot};
use duet_sdk::e2ee::{
    CallOptions, E2eeUnavailable, Established, Handshake, HandshakeConfig, IdentityKey, Role,
    Start, Step, UnavailableReason,
};

enum Outcome {
    Keys(Box<Established>),
    Unavailable(E2eeUnavailable),
}

struct Endpoint {
    hs: Option<Handshake>,
    outcome: Option<Outcome>,
}

/// Runs both endpoints to completion over a relay that forwards (and records) signals.
fn call(
    a_opts: CallOptions,
    b_opts: CallOptions,
    recorded: &mut Vec<Vec<u8>>,
) -> (Outcome, Outcome) {
    let mk = |slot: Slot, opts: CallOptions, wire: &mut VecDeque<Vec<u8>>| {
        // A user who is off has it in the token (the backend's record of the switch), which
        // is what makes a decline provable.
        let claim = if opts.e2ee {
            E2eeClaim::Allowed
        } else {
            E2eeClaim::UserNotEnabled
        };
        let cfg = HandshakeConfig {
            options: opts,
            ..duet_sdk::e2ee::test_support::config(
                Role::from_slot(slot),
                &Arc::new(IdentityKey::generate().unwrap()),
                "call-42",
                claim,
            )
        };
        match Handshake::start(cfg).unwrap() {
            Start::Proceed { handshake, send } => {
                wire.extend(send);
                Endpoint {
                    hs: Some(*handshake),
                    outcome: None,
                }
            }
            Start::Declined { send, unavailable } => {
                wire.push_back(send);
                Endpoint {
                    hs: None,
                    outcome: Some(Outcome::Unavailable(unavailable)),
                }
            }
        }
    };
    let (mut a_to_b, mut b_to_a) = (VecDeque::new(), VecDeque::new());
    let mut a = mk(Slot::A, a_opts, &mut a_to_b);
    let mut b = mk(Slot::B, b_opts, &mut b_to_a);
    for _ in 0..10 {
        deliver(&mut a_to_b, &mut b, &mut b_to_a, recorded);
        deliver(&mut b_to_a, &mut a, &mut a_to_b, recorded);
    }
    (
        a.outcome.expect("a finished"),
        b.outcome.expect("b finished"),
    )
}

fn deliver(
    wire: &mut VecDeque<Vec<u8>>,
    to: &mut Endpoint,
    reply: &mut VecDeque<Vec<u8>>,
    recorded: &mut Vec<Vec<u8>>,
) {
    while let Some(msg) = wire.pop_front() {
        recorded.push(msg.clone());
        let Some(hs) = to.hs.as_mut() else { continue };
        match hs.on_signal(&msg).expect("handshake step") {
            Step::Send(m) => reply.push_back(m),
            Step::Established { send, established } => {
                reply.extend(send);
                to.hs = None;
                to.outcome = Some(Outcome::Keys(established));
            }
            Step::Unavailable(u) => {
                to.hs = None;
                to.outcome = Some(Outcome::Unavailable(u));
            }
        }
    }
}

#[test]
fn two_endpoints_agree_and_the_relay_sees_no_plaintext() {
    let mut recorded = Vec::new();
    let (a, b) = call(
        CallOptions::default(),
        CallOptions::default(),
        &mut recorded,
    );
    let (Outcome::Keys(mut a), Outcome::Keys(mut b)) = (a, b) else {
        panic!("both sides should have keys");
    };
    assert_eq!(a.code, b.code);
    assert_eq!(recorded.len(), 4, "commit, hello, reveal, finished");

    let now = Instant::now();
    let secret_audio = b"PLAINTEXT-AUDIO-SAMPLE-0123456789".repeat(5);
    let secret_video = b"PLAINTEXT-VIDEO-KEYFRAME".repeat(100);
    for pt in [&secret_audio[..], &secret_video[..]] {
        let f = a.sealer.seal(now, pt).unwrap();
        recorded.push(f.clone());
        assert_eq!(b.opener.open(now, &f).unwrap(), pt);
        let g = b.sealer.seal(now, pt).unwrap();
        recorded.push(g.clone());
        assert_eq!(a.opener.open(now, &g).unwrap(), pt);
    }
    for blob in &recorded {
        assert!(!blob.windows(9).any(|w| w == b"PLAINTEXT"));
    }
}

#[test]
fn a_peer_without_e2ee_gives_a_typed_unavailable_on_both_sides() {
    let mut recorded = Vec::new();
    let off = CallOptions {
        e2ee: false,
        ..CallOptions::default()
    };
    let (a, b) = call(CallOptions::default(), off, &mut recorded);
    match (a, b) {
        (Outcome::Unavailable(a), Outcome::Unavailable(b)) => {
            assert_eq!(a.reason, UnavailableReason::PeerNotEnabled);
            assert_eq!(a.peer_reason, Some(UnavailableReason::UserNotEnabled));
            assert_eq!(b.reason, UnavailableReason::UserNotEnabled);
        }
        _ => panic!("no side may get keys"),
    }
}

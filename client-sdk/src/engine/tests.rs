//! The engine without sockets: two engines wired back to back through the real
//! handshake, then media, a "resume" (nothing but `begin_confirmation` on the same engine)
//! and the key confirmation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::{E2eeClaim, MediaKind, SessionId};

use super::*;
use crate::e2ee::{Handshake, HandshakeConfig, IdentityKey, Role, Start, Step};

fn cfg(role: Role) -> HandshakeConfig {
    let id = Arc::new(IdentityKey::generate().unwrap());
    crate::e2ee::test_support::config(role, &id, "s1", E2eeClaim::Allowed)
}

fn agree() -> (Established, Established) {
    let Start::Proceed {
        handshake: mut a,
        send: Some(commit),
    } = Handshake::start(cfg(Role::Initiator)).unwrap()
    else {
        panic!("a proceeds")
    };
    let Start::Proceed {
        handshake: mut b, ..
    } = Handshake::start(cfg(Role::Responder)).unwrap()
    else {
        panic!("b proceeds")
    };
    let Step::Send(hello) = b.on_signal(&commit).unwrap() else {
        panic!()
    };
    let Step::Send(reveal) = a.on_signal(&hello).unwrap() else {
        panic!()
    };
    let Step::Established {
        send: Some(fin),
        established: eb,
    } = b.on_signal(&reveal).unwrap()
    else {
        panic!()
    };
    let Step::Established {
        established: ea, ..
    } = a.on_signal(&fin).unwrap()
    else {
        panic!()
    };
    (*ea, *eb)
}

fn pair(now: Instant) -> (Engine, Engine) {
    let (ea, eb) = agree();
    let sid = SessionId::new("s1").unwrap();
    let mut a = Engine::new(sid.clone(), Duration::from_millis(500), true);
    let mut b = Engine::new(sid, Duration::from_millis(500), true);
    a.install(now, ea).unwrap();
    b.install(now, eb).unwrap();
    (a, b)
}

/// Moves every piece `from` seals for `frame` into `to`.
fn send(from: &mut Engine, to: &mut Engine, now: Instant, frame: &[u8]) -> Vec<Bytes> {
    let pieces = from
        .seal_and_split(now, MediaKind::Audio, frame, 1200, None)
        .unwrap();
    for p in &pieces {
        to.handle_datagram(now, p.clone());
    }
    pieces
}

fn signals(from: &mut Engine, to: &mut Engine, now: Instant) -> usize {
    let mut n = 0;
    while let Some(s) = from.poll_transmit() {
        assert_eq!(to.handle_signal(now, &s), SignalUse::Engine);
        n += 1;
    }
    n
}

fn drain_events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

#[test]
fn sealed_media_flows_and_no_plaintext_is_on_the_wire() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    let code = a.verdict().unwrap().code.clone();
    assert_eq!(code, b.verdict().unwrap().code);
    let pieces = send(&mut a, &mut b, now, b"secret words");
    assert!(pieces.iter().all(|p| !p.windows(6).any(|w| w == b"secret")));
    assert_eq!(b.poll_frame().unwrap().data.as_ref(), b"secret words");
    assert!(matches!(
        drain_events(&mut b).first(),
        Some(Event::E2eeEstablished { .. })
    ));
}

#[test]
fn an_e2ee_engine_never_seals_nothing_before_keys() {
    let mut e = Engine::new(SessionId::new("s1").unwrap(), Duration::from_secs(1), true);
    assert!(matches!(
        e.seal_and_split(Instant::now(), MediaKind::Audio, b"x", 1200, None),
        Err(SdkError::E2eeNotEstablished)
    ));
    assert!(e.is_e2ee_session() && !e.is_e2ee());
}

#[test]
fn resume_keeps_keys_and_holds_media_until_the_peer_proves_it_has_them() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    send(&mut a, &mut b, t0, b"before");
    assert_eq!(b.poll_frame().unwrap().data.as_ref(), b"before");
    let code = a.verdict().unwrap().code.clone();

    // A's connection changed: it asks B to prove it holds the keys; B's relay says
    // PeerResumed, so B asks A too.
    let t1 = t0 + Duration::from_secs(1);
    a.begin_confirmation(t1);
    b.handle_event(t1, Event::PeerResumed);
    assert!(a.is_confirming() && b.is_confirming());
    // Media sealed before the answers is held, not delivered.
    send(&mut b, &mut a, t1, b"held");
    assert!(a.poll_frame().is_none());
    // Requests cross, replies cross.
    assert_eq!(signals(&mut a, &mut b, t1), 1);
    assert_eq!(signals(&mut b, &mut a, t1), 2);
    assert_eq!(signals(&mut a, &mut b, t1), 1);
    assert!(!a.is_confirming() && !b.is_confirming());
    assert_eq!(a.poll_frame().unwrap().data.as_ref(), b"held");
    assert!(drain_events(&mut a).contains(&Event::KeysConfirmed));
    assert!(drain_events(&mut b).contains(&Event::KeysConfirmed));
    // Same keys, same code: the frames carry on under the same epoch.
    assert_eq!(a.verdict().unwrap().code, code);
    send(&mut a, &mut b, t1, b"after");
    assert_eq!(b.poll_frame().unwrap().data.as_ref(), b"after");
    assert_eq!(a.e2ee_stats().unwrap().confirmations, 1);
}

#[test]
fn a_confirmation_from_someone_without_the_keys_confirms_nothing() {
    let t0 = Instant::now();
    let (mut a, _b) = pair(t0);
    // An impostor with keys of another call answers A's request.
    let (_, mut impostor) = pair(t0);
    a.begin_confirmation(t0);
    let req = a.poll_transmit().unwrap();
    assert_eq!(impostor.handle_signal(t0, &req), SignalUse::Engine);
    // The impostor cannot open the request, so it cannot answer it; and its own request
    // or a forged reply does not open at A either.
    impostor.begin_confirmation(t0);
    while let Some(s) = impostor.poll_transmit() {
        a.handle_signal(t0, &s);
    }
    assert!(a.is_confirming());
    assert!(
        a.poll_transmit().is_none(),
        "A answers nothing it cannot open"
    );
    assert!(a.e2ee_stats().unwrap().rejected_tampered >= 1);
}

#[test]
fn a_replayed_reply_does_not_confirm_a_later_resume() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.begin_confirmation(t0);
    let req = a.poll_transmit().unwrap();
    b.handle_signal(t0, &req);
    let reply = b.poll_transmit().unwrap();
    a.handle_signal(t0, &reply);
    assert!(!a.is_confirming());
    // A second resume: the relay replays the old reply.
    a.begin_confirmation(t0);
    a.handle_signal(t0, &reply);
    assert!(a.is_confirming());
}

#[test]
fn an_unconfirmed_peer_is_reported_and_its_media_stays_held() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.begin_confirmation(t0);
    send(&mut b, &mut a, t0, b"held");
    let mut t = t0;
    while t < t0 + CONFIRM_WARN {
        t = a.poll_timeout().unwrap();
        a.handle_timeout(t);
    }
    assert!(drain_events(&mut a).contains(&Event::KeysUnconfirmed));
    assert!(a.poll_frame().is_none(), "held, not delivered");
    // The peer answers late: confirmed, released.
    while let Some(req) = a.poll_transmit() {
        b.handle_signal(t, &req);
    }
    signals(&mut b, &mut a, t);
    assert!(!a.is_confirming());
    assert_eq!(a.poll_frame().unwrap().data.as_ref(), b"held");
}

#[test]
fn an_unanswered_request_is_sent_again_with_backoff() {
    let t0 = Instant::now();
    let (mut a, _b) = pair(t0);
    a.begin_confirmation(t0);
    assert!(a.poll_transmit().is_some());
    let t1 = a.poll_timeout().unwrap();
    assert_eq!(t1, t0 + CONFIRM_RETRY);
    a.handle_timeout(t1);
    assert!(a.poll_transmit().is_some());
    assert_eq!(a.poll_timeout().unwrap(), t1 + CONFIRM_RETRY * 2);
}

#[test]
fn a_flood_of_relay_notices_cannot_push_out_a_verdict() {
    let now = Instant::now();
    let (mut a, _b) = pair(now);
    for _ in 0..10_000 {
        a.handle_event(now, Event::Dropped(duet_proto::RefusalReason::RateLimited));
    }
    a.begin_confirmation(now);
    a.push_event(Event::KeysConfirmed);
    let evs = drain_events(&mut a);
    assert!(matches!(evs[0], Event::E2eeEstablished { .. }));
    assert!(evs.contains(&Event::KeysConfirmed));
    assert!(evs.len() <= events::MAX_SHEDDABLE + 2);
    assert!(a.events_shed() > 0);
}

#[test]
fn padding_hides_sizes_and_frames_carry_their_authenticated_order() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    a.set_padding(Padding::ConstantAudio(200));
    let sizes: Vec<usize> = [3usize, 50, 150]
        .iter()
        .map(|&n| {
            let pieces = send(&mut a, &mut b, now, &vec![7u8; n]);
            pieces.iter().map(|p| p.len()).sum()
        })
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
    for (i, n) in [3usize, 50, 150].into_iter().enumerate() {
        let f = b.poll_frame().unwrap();
        assert_eq!(f.data.len(), n);
        assert_eq!(
            f.seq,
            Some(crate::fragment::FrameSeq {
                epoch: 0,
                counter: i as u64
            })
        );
    }
    assert!(a.e2ee_stats().unwrap().padding_bytes_sent > 0);
}

#[test]
fn a_hybrid_rekey_moves_both_directions_to_new_roots_and_media_goes_on() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    send(&mut a, &mut b, t0, b"before");
    assert_eq!(b.poll_frame().unwrap().data.as_ref(), b"before");
    let code = a.verdict().unwrap().code.clone();

    a.rekey_hybrid(t0).unwrap();
    assert!(matches!(a.rekey_hybrid(t0), Err(SdkError::RekeyLimited)));
    // Offer a->b, answer b->a, Done a->b.
    assert_eq!(signals(&mut a, &mut b, t0), 1);
    assert_eq!(signals(&mut b, &mut a, t0), 1);
    // The offerer sends under its new root already; the answerer opens it.
    send(&mut a, &mut b, t0, b"after a");
    assert_eq!(b.poll_frame().unwrap().data.as_ref(), b"after a");
    assert_eq!(signals(&mut a, &mut b, t0), 1);
    send(&mut b, &mut a, t0, b"after b");
    let f = a.poll_frame().unwrap();
    assert_eq!(f.data.as_ref(), b"after b");
    assert!(f.seq.unwrap().epoch >= crate::e2ee::pcs::EPOCH_JUMP);
    assert_eq!((a.hybrid_rekeys(), b.hybrid_rekeys()), (1, 1));
    assert_eq!(a.verdict().unwrap().code, code, "the code does not change");
    let evs = drain_events(&mut a);
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::Rekeyed { by_peer: false, epoch } if *epoch >= crate::e2ee::pcs::EPOCH_JUMP)));

    // A second exchange chains from the first (the chain secret moved on both sides).
    let t1 = t0 + hybrid::MIN_GAP;
    b.rekey_hybrid(t1).unwrap();
    assert_eq!(signals(&mut b, &mut a, t1), 1);
    assert_eq!(signals(&mut a, &mut b, t1), 1);
    assert_eq!(signals(&mut b, &mut a, t1), 1);
    send(&mut a, &mut b, t1, b"twice");
    assert_eq!(b.poll_frame().unwrap().data.as_ref(), b"twice");
    send(&mut b, &mut a, t1, b"twice b");
    assert_eq!(a.poll_frame().unwrap().data.as_ref(), b"twice b");
    assert_eq!(a.e2ee_stats().unwrap().rejected(), 0);
}

#[test]
fn offers_from_both_sides_at_once_resolve_to_one_exchange() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.rekey_hybrid(t0).unwrap();
    b.rekey_hybrid(t0).unwrap();
    let (oa, ob) = (a.poll_transmit().unwrap(), b.poll_transmit().unwrap());
    // The initiator (a) ignores b's offer; b drops its own and answers a's.
    a.handle_signal(t0, &ob);
    b.handle_signal(t0, &oa);
    assert!(a.poll_transmit().is_none());
    assert_eq!(signals(&mut b, &mut a, t0), 1); // the answer
    assert_eq!(signals(&mut a, &mut b, t0), 1); // Done
    send(&mut b, &mut a, t0, b"ok");
    assert_eq!(a.poll_frame().unwrap().data.as_ref(), b"ok");
    assert_eq!((a.hybrid_rekeys(), b.hybrid_rekeys()), (1, 1));
}

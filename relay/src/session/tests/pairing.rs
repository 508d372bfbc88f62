//! Pairing rules (`session/pairing.rs`) through the core: slots, resume, E2EE declines,
//! timers, channels.

use std::time::{Duration, Instant};

use super::testing::*;
use crate::session::*;
use duet_proto::{
    E2eeClaim, EndReason, Joined, PeerLeftReason, RefusalReason, RelayMessage, ResumeSecret, Slot,
};
use duet_proto::{JoinClaims, NodeId};

fn req(c: &JoinClaims, e2ee: bool) -> JoinRequest<'_> {
    JoinRequest {
        session: &c.session,
        claims: c,
        token: "the-token",
        resume: None,
        e2ee,
    }
}

fn join(
    t: &mut SessionCore,
    c: u64,
    cl: &JoinClaims,
    now: Instant,
) -> Result<Joined, RefusalReason> {
    t.join_verified(ConnId(c), &req(cl, true), now, NOW_UNIX)
}

fn resume(
    t: &mut SessionCore,
    c: u64,
    cl: &JoinClaims,
    secret: &ResumeSecret,
    now: Instant,
) -> Result<Joined, RefusalReason> {
    let r = JoinRequest {
        resume: Some(secret),
        ..req(cl, true)
    };
    t.join_verified(ConnId(c), &r, now, NOW_UNIX)
}

/// Alice (connection 1) and Bob (2) in session `s`, their actions drained; Alice's `Joined`.
fn pair(t: &mut SessionCore, now: Instant) -> Joined {
    let a = join(t, 1, &claims("s", "alice", "p"), now).unwrap();
    join(t, 2, &claims("s", "bob", "p"), now).unwrap();
    drain(t);
    a
}

/// What `conn` was sent, `Joined` left out (its secret is random).
fn told(actions: &[Action], conn: ConnId) -> Vec<RelayMessage> {
    sends_to(actions, conn)
        .into_iter()
        .filter(|m| joined_slot(m).is_none())
        .collect()
}

#[test]
fn two_endpoints_meet_and_a_third_is_refused() {
    let mut t = core();
    let now = Instant::now();
    let a = join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    assert_eq!(a.slot, Slot::A);
    assert!(!a.peer_present);
    let acts = drain(&mut t);
    assert!(matches!(acts[0], Action::SessionOpened { .. }));
    assert_eq!(
        sends_to(&acts, ConnId(1))
            .iter()
            .map(joined_slot)
            .collect::<Vec<_>>(),
        vec![Some(Slot::A)],
        "Joined, after the route"
    );
    let b = join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
    assert_eq!(b.slot, Slot::B);
    assert!(b.peer_present);
    let acts = drain(&mut t);
    assert_eq!(sends_to(&acts, ConnId(1)), vec![RelayMessage::PeerJoined]);
    assert!(acts.iter().any(|a| matches!(a, Action::Route {
        session,
        slot: Slot::B,
        conn: Some(ConnId(2))
    } if session == &sid("s"))));
    assert_eq!(
        join(&mut t, 3, &claims("s", "carol", "p"), now),
        Err(RefusalReason::SessionFull)
    );
    // A companion device of a user already in, even with a slot free.
    let mut t = core();
    join(&mut t, 1, &claims("s", "alice", "phone"), now).unwrap();
    assert_eq!(
        join(&mut t, 2, &claims("s", "alice", "laptop"), now),
        Err(RefusalReason::SessionFull)
    );
    assert_eq!(
        join(&mut t, 3, &claims("s", "alice", "phone"), now),
        Err(RefusalReason::AlreadyJoined)
    );
    assert_eq!(t.endpoint_count(), 1);
}

#[test]
fn resume_replaces_the_old_connection() {
    let mut t = core();
    let now = Instant::now();
    let a = pair(&mut t, now);
    let wrong = ResumeSecret([0; 32]);
    assert_eq!(
        resume(&mut t, 3, &claims("s", "alice", "p"), &wrong, now),
        Err(RefusalReason::ResumeRejected)
    );
    let r = resume(&mut t, 3, &claims("s", "alice", "p"), &a.resume, now).unwrap();
    assert!(r.resumed && r.peer_present);
    assert_eq!(r.slot, Slot::A);
    assert_ne!(r.resume, a.resume, "the secret rotates");
    let acts = drain(&mut t);
    assert_sent(&acts, 1, &[RelayMessage::SessionEnded(EndReason::Replaced)]);
    assert_eq!(
        closes_of(&acts, ConnId(1)),
        vec![CloseReason::Ended(EndReason::Replaced)]
    );
    assert_sent(
        &acts,
        2,
        &[RelayMessage::PeerReconnecting, RelayMessage::PeerResumed],
    );
    // The old connection going away later changes nothing.
    t.connection_lost(ConnId(1), now);
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.slot_of(ConnId(3)).map(|(_, s)| s), Some(Slot::A));
}

#[test]
fn resume_secrets_come_from_the_injected_rng() {
    let now = Instant::now();
    let secret = |seed_core: &mut SessionCore| {
        join(seed_core, 1, &claims("s", "alice", "p"), now)
            .unwrap()
            .resume
    };
    assert_eq!(
        secret(&mut core()),
        secret(&mut core()),
        "same seed, same secret"
    );
}

#[test]
fn lost_connection_keeps_its_slot_for_the_resume_window() {
    let mut t = core();
    let now = Instant::now();
    let a = pair(&mut t, now);
    t.connection_lost(ConnId(1), now);
    let acts = drain(&mut t);
    assert_sent(&acts, 2, &[RelayMessage::PeerReconnecting]);
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(10)));
    // Resume within the window: the peer hears PeerResumed only.
    let later = now + Duration::from_secs(5);
    t.handle_timeout(later);
    assert!(drain(&mut t).is_empty());
    resume(&mut t, 3, &claims("s", "alice", "p"), &a.resume, later).unwrap();
    assert_sent(&drain(&mut t), 2, &[RelayMessage::PeerResumed]);
    // The first loss's window passes: nothing, it came back.
    t.handle_timeout(now + Duration::from_secs(10));
    assert!(drain(&mut t).is_empty());
    // Lost again, and the window passes.
    t.connection_lost(ConnId(3), later);
    drain(&mut t);
    t.handle_timeout(later + Duration::from_secs(10));
    let acts = drain(&mut t);
    assert_sent(
        &acts,
        2,
        &[RelayMessage::PeerLeft(PeerLeftReason::ConnectionLost)],
    );
    // The slot is free again.
    assert_eq!(
        join(&mut t, 4, &claims("s", "alice", "p"), later)
            .unwrap()
            .slot,
        Slot::A
    );
}

#[test]
fn leave_frees_the_slot_and_the_last_leave_closes_the_session() {
    let mut t = core_with(cfg(), Some(plane()));
    let now = Instant::now();
    join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
    let channels = drain(&mut t)
        .into_iter()
        .find_map(|a| match a {
            Action::SessionOpened { fast_path, .. } => fast_path,
            _ => None,
        })
        .expect("the session got a channel pair");
    t.leave(ConnId(1));
    let acts = drain(&mut t);
    assert_sent(&acts, 2, &[RelayMessage::PeerLeft(PeerLeftReason::Left)]);
    assert_eq!(closes_of(&acts, ConnId(1)), vec![CloseReason::Left]);
    t.leave(ConnId(2));
    assert!(drain(&mut t)
        .iter()
        .any(|a| matches!(a, Action::SessionClosed(s) if s == &sid("s"))));
    assert_eq!(t.session_count(), 0);
    let plane = t.fast_path.as_ref().unwrap();
    assert!(!plane.table().release(channels[0]), "already given back");
}

#[test]
fn a_peer_joining_after_a_declined_join_is_told() {
    let mut t = core();
    let now = Instant::now();
    let mut c = claims("s1", "alice", "phone");
    c.e2ee = E2eeClaim::ComplianceRecording;
    assert_eq!(
        t.join_verified(ConnId(1), &req(&c, true), now, NOW_UNIX),
        Err(RefusalReason::ComplianceRecording)
    );
    drain(&mut t);
    let b = join(&mut t, 2, &claims("s1", "bob", "laptop"), now).unwrap();
    assert!(!b.peer_present);
    let sent = sends_to(&drain(&mut t), ConnId(2));
    assert_eq!(joined_slot(&sent[0]), Some(Slot::A), "Joined first");
    assert_eq!(
        sent[1..],
        [RelayMessage::PeerE2eeUnavailable {
            claim: E2eeClaim::ComplianceRecording,
            token: "the-token".into(),
        }]
    );
    // Forgotten after DECLINE_MEMORY: a later session of the same id is not told.
    t.leave(ConnId(2));
    drain(&mut t);
    let later = now + DECLINE_MEMORY;
    t.handle_timeout(later);
    drain(&mut t);
    join(&mut t, 3, &claims("s1", "bob", "laptop"), later).unwrap();
    assert!(told(&drain(&mut t), ConnId(3)).is_empty());
}

#[test]
fn e2ee_claims_are_refused_and_the_waiting_peer_told() {
    let mut t = core();
    let now = Instant::now();
    join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    drain(&mut t);
    for (user, claim, refusal) in [
        (
            "bob",
            E2eeClaim::PolicyDisabled,
            RefusalReason::PolicyDisabled,
        ),
        (
            "carol",
            E2eeClaim::UserNotEnabled,
            RefusalReason::UserNotEnabled,
        ),
        (
            "dave",
            E2eeClaim::ComplianceRecording,
            RefusalReason::ComplianceRecording,
        ),
    ] {
        let mut c = claims("s", user, "p");
        c.e2ee = claim;
        assert_eq!(
            t.join_verified(ConnId(2), &req(&c, true), now, NOW_UNIX),
            Err(refusal)
        );
        assert_sent(
            &drain(&mut t),
            1,
            &[RelayMessage::PeerE2eeUnavailable {
                claim,
                token: "the-token".into(),
            }],
        );
    }
    // Nobody waiting: refused all the same, nobody told.
    let mut c = claims("other", "bob", "p");
    c.e2ee = E2eeClaim::PolicyDisabled;
    assert_eq!(join(&mut t, 3, &c, now), Err(RefusalReason::PolicyDisabled));
    assert!(drain(&mut t).is_empty());
}

/// Catches the old behaviour: the waiting peer got a `PeerE2eeUnavailable` for every
/// refused join attempt, so a client retrying its join flooded it.
#[test]
fn the_waiting_peer_is_told_once_per_refused_user_and_claim() {
    let mut t = core();
    let now = Instant::now();
    join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    drain(&mut t);
    let mut c = claims("s", "bob", "p");
    c.e2ee = E2eeClaim::PolicyDisabled;
    let mut told_alice = 0;
    for conn in 2..12 {
        assert_eq!(
            join(&mut t, conn, &c, now),
            Err(RefusalReason::PolicyDisabled)
        );
        told_alice += sends_to(&drain(&mut t), ConnId(1))
            .iter()
            .filter(|m| matches!(m, RelayMessage::PeerE2eeUnavailable { .. }))
            .count();
    }
    assert_eq!(told_alice, 1, "ten refused attempts by bob, one notice");
    // Bob's claim changed (the policy did): that is news; so is another user.
    for (conn, user, why) in [
        (15, "bob", "a new claim: told"),
        (20, "carol", "another user: told"),
    ] {
        let mut c = claims("s", user, "p");
        c.e2ee = E2eeClaim::UserNotEnabled;
        assert_eq!(
            join(&mut t, conn, &c, now),
            Err(RefusalReason::UserNotEnabled)
        );
        assert_eq!(sends_to(&drain(&mut t), ConnId(1)).len(), 1, "{why}");
    }
}

/// Catches the old behaviour: `duet_sessions_ended_total{reason}` was defined but never
/// counted.
#[test]
fn ended_sessions_are_counted_by_reason() {
    let mut t = core();
    let now = Instant::now();
    join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    join(&mut t, 2, &claims("s", "bob", "p"), now).unwrap();
    t.end_session(&sid("s"), EndReason::IdleTimeout);
    join(&mut t, 3, &claims("t", "alice", "p"), now).unwrap();
    t.leave(ConnId(3));
    drain(&mut t);
    assert_metric(
        &t,
        r#"duet_sessions_ended_total{reason="idle_timeout"}"#,
        1.0,
    );
    assert_metric(&t, r#"duet_sessions_ended_total{reason="left"}"#, 1.0);
}

#[test]
fn required_claims_refuse_plain_joins_and_unknown_claims_fail_closed() {
    let mut t = core();
    let now = Instant::now();
    let mut c = claims("s", "alice", "p");
    c.e2ee = E2eeClaim::Required;
    assert_eq!(
        t.join_verified(ConnId(1), &req(&c, false), now, NOW_UNIX),
        Err(RefusalReason::E2eeRequired)
    );
    t.join_verified(ConnId(1), &req(&c, true), now, NOW_UNIX)
        .unwrap();
    let mut c = claims("s", "bob", "p");
    c.e2ee = E2eeClaim::Unknown;
    assert_eq!(
        t.join_verified(ConnId(2), &req(&c, false), now, NOW_UNIX),
        Err(RefusalReason::E2eeClaimInvalid)
    );
}

#[test]
fn token_placement_node_cap_and_end_all() {
    let mut t = core();
    let now = Instant::now();
    let c = claims("s", "alice", "p");
    let wrong = JoinRequest {
        session: &sid("other"),
        ..req(&c, true)
    };
    assert_eq!(
        t.join_verified(ConnId(1), &wrong, now, NOW_UNIX),
        Err(RefusalReason::WrongSession)
    );
    let mut c2 = c.clone();
    c2.nodes = vec![NodeId::new("n2").unwrap()];
    assert_eq!(join(&mut t, 1, &c2, now), Err(RefusalReason::WrongNode));
    // A fallback listed after another node is accepted here.
    c2.nodes = vec![NodeId::new("n2").unwrap(), NodeId::new("n1").unwrap()];
    join(&mut t, 1, &c2, now).unwrap();
    join(&mut t, 2, &claims("s2", "alice", "p"), now).unwrap();
    assert_eq!(
        join(&mut t, 3, &claims("s3", "alice", "p"), now),
        Err(RefusalReason::NodeFull)
    );
    // Joining an existing session is fine at the cap.
    join(&mut t, 4, &claims("s2", "bob", "p"), now).unwrap();
    drain(&mut t);
    t.end_all(EndReason::RelayShutdown);
    let acts = drain(&mut t);
    for c in [1, 2, 4] {
        assert_sent(
            &acts,
            c,
            &[RelayMessage::SessionEnded(EndReason::RelayShutdown)],
        );
    }
    assert_eq!(t.session_count(), 0);
    assert_eq!(t.endpoint_count(), 0);
}

#[test]
fn idle_and_lifetime_end_the_session() {
    let mut t = core();
    let now = Instant::now();
    pair(&mut t, now);
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(30)));
    t.handle_timeout(now + Duration::from_secs(20));
    assert!(drain(&mut t).is_empty());
    t.touch(&sid("s"), now + Duration::from_secs(20));
    t.handle_timeout(now + Duration::from_secs(40));
    assert!(
        drain(&mut t).is_empty(),
        "activity pushed the idle deadline"
    );
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(50)));
    t.handle_timeout(now + Duration::from_secs(50));
    let acts = drain(&mut t);
    for c in [1, 2] {
        assert_sent(
            &acts,
            c,
            &[RelayMessage::SessionEnded(EndReason::IdleTimeout)],
        );
    }

    let mut t = core();
    join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    drain(&mut t);
    let mut at = now;
    while at < now + Duration::from_secs(3600) {
        at += Duration::from_secs(10);
        t.touch(&sid("s"), at);
        t.handle_timeout(at);
    }
    assert_eq!(
        told(&drain(&mut t), ConnId(1)),
        vec![RelayMessage::SessionEnded(EndReason::MaxLifetime)]
    );
}

#[test]
fn media_on_either_transport_keeps_a_session_alive() {
    let fp = plane();
    let mut t = core_with(cfg(), Some(fp.clone()));
    let now = Instant::now();
    join(&mut t, 1, &claims("s", "alice", "p"), now).unwrap();
    let (activity, channels) = drain(&mut t)
        .into_iter()
        .find_map(|a| match a {
            Action::SessionOpened {
                activity,
                fast_path,
                ..
            } => Some((activity, fast_path.unwrap())),
            _ => None,
        })
        .unwrap();
    // QUIC media at 25 s: the 30 s check finds the session alive.
    activity.stamp(now + Duration::from_secs(25));
    t.handle_timeout(now + Duration::from_secs(30));
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(55)));
    // Fast-path media at 50 s (both ends bound, one packet routed).
    let ends = [addr(1), addr(2)];
    for (c, a) in channels.iter().zip(ends) {
        let o = fp.offer(*c, a.ip(), 1, NOW_UNIX);
        fp.table().bind(a, *c, &o.ticket, NOW_UNIX).unwrap();
    }
    let kind = duet_proto::MediaKind::Audio;
    let at = now + Duration::from_secs(50);
    fp.table()
        .route(ends[0], channels[0], kind, 100, at)
        .unwrap();
    t.handle_timeout(now + Duration::from_secs(55));
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(80)));
    t.handle_timeout(now + Duration::from_secs(80));
    assert_eq!(
        sends_to(&drain(&mut t), ConnId(1)),
        vec![RelayMessage::SessionEnded(EndReason::IdleTimeout)],
        "idle for exactly the timeout since the last packet"
    );
}

#[test]
fn protocol_violation_disconnects_only_the_offender() {
    let mut t = core();
    let now = Instant::now();
    pair(&mut t, now);
    t.protocol_violation(ConnId(1));
    assert_ended_for_one(
        &drain(&mut t),
        (1, EndReason::ProtocolViolation),
        (2, PeerLeftReason::ProtocolViolation),
    );
    assert_eq!(t.session_count(), 1);
    assert_eq!(t.endpoint_count(), 1);
}

//! Control rules (`session/control.rs`): every message from a connection, through the core.

use std::net::SocketAddr;
use std::time::Instant;

use super::testing::*;
use crate::session::*;
use bytes::Bytes;
use duet_proto::{ClientMessage, FastPathOffer, Feature, RefusalReason, RelayMessage, Slot};
use duet_proto::{EndReason, JoinClaims, JoinToken, PeerLeftReason};
use std::time::Duration;

fn join_msg(c: &JoinClaims) -> ClientMessage {
    ClientMessage::Join {
        session: c.session.clone(),
        token: JoinToken::mint(&signer(), c),
        resume: None,
        e2ee: true,
    }
}

/// Connects `conn` from `addr(conn)` and joins it; returns what it was sent.
fn connect_and_join(
    t: &mut SessionCore,
    conn: u64,
    c: &JoinClaims,
    now: Instant,
) -> Vec<RelayMessage> {
    t.handle_connected(ConnId(conn), addr(conn as u8), now);
    t.handle_control(ConnId(conn), join_msg(c), now, NOW_UNIX);
    sends_to(&drain(t), ConnId(conn))
}

fn pair(t: &mut SessionCore, now: Instant) {
    connect_and_join(t, 1, &claims("s", "alice", "p"), now);
    connect_and_join(t, 2, &claims("s", "bob", "p"), now);
    drain(t);
}

#[test]
fn a_verified_token_joins_and_a_bad_one_is_refused_and_closed() {
    let mut t = core();
    let now = Instant::now();
    let sent = connect_and_join(&mut t, 1, &claims("s", "alice", "p"), now);
    assert_eq!(joined_slot(&sent[0]), Some(Slot::A));
    assert_metric(&t, "duet_joins_total", 1.0);
    t.handle_connected(ConnId(2), addr(2), now);
    let mut expired = claims("s", "bob", "p");
    expired.exp = NOW_UNIX - 1;
    t.handle_control(ConnId(2), join_msg(&expired), now, NOW_UNIX);
    assert_refused(&drain(&mut t), 2, RefusalReason::TokenExpired);
    // Closed: a later (valid) Join from it is not processed.
    t.handle_control(ConnId(2), join_msg(&claims("s", "bob", "p")), now, NOW_UNIX);
    assert!(drain(&mut t).is_empty());
    assert_metric(&t, r#"duet_refusals_total{reason="token_expired"}"#, 1.0);
}

#[test]
fn a_second_join_on_a_connection_is_dropped_not_closed() {
    let mut t = core();
    let now = Instant::now();
    connect_and_join(&mut t, 1, &claims("s", "alice", "p"), now);
    t.handle_control(
        ConnId(1),
        join_msg(&claims("s", "alice", "p")),
        now,
        NOW_UNIX,
    );
    let acts = drain(&mut t);
    assert_sent(
        &acts,
        1,
        &[RelayMessage::Dropped(RefusalReason::AlreadyJoined)],
    );
    assert!(closes_of(&acts, ConnId(1)).is_empty());
    assert_eq!(t.endpoint_count(), 1);
}

#[test]
fn a_signal_before_join_is_a_violation() {
    let mut t = core();
    let now = Instant::now();
    t.handle_connected(ConnId(1), addr(1), now);
    t.handle_control(
        ConnId(1),
        ClientMessage::Signal(Bytes::from_static(b"hi")),
        now,
        NOW_UNIX,
    );
    assert_refused(&drain(&mut t), 1, RefusalReason::ProtocolViolation);
    assert_metric(&t, r#"duet_control_errors_total{kind="not_joined"}"#, 1.0);
}

#[test]
fn signals_are_forwarded_verbatim_within_their_size_and_rate() {
    let mut t = core(); // 100 bytes, 3 per second
    let now = Instant::now();
    pair(&mut t, now);
    let ok = Bytes::from(vec![7u8; 100]);
    t.handle_control(ConnId(1), ClientMessage::Signal(ok.clone()), now, NOW_UNIX);
    assert_sent(&drain(&mut t), 2, &[RelayMessage::Signal(ok.clone())]);
    t.handle_control(
        ConnId(1),
        ClientMessage::Signal(vec![0u8; 101].into()),
        now,
        NOW_UNIX,
    );
    assert_sent(
        &drain(&mut t),
        1,
        &[RelayMessage::Dropped(RefusalReason::TooLarge)],
    );
    for _ in 0..2 {
        t.handle_control(ConnId(1), ClientMessage::Signal(ok.clone()), now, NOW_UNIX);
    }
    t.handle_control(ConnId(1), ClientMessage::Signal(ok.clone()), now, NOW_UNIX);
    let acts = drain(&mut t);
    assert_eq!(sends_to(&acts, ConnId(2)).len(), 2, "the burst is 3");
    assert_sent(
        &acts,
        1,
        &[RelayMessage::Dropped(RefusalReason::RateLimited)],
    );
    // Per connection, refilled with time.
    t.handle_control(ConnId(2), ClientMessage::Signal(ok.clone()), now, NOW_UNIX);
    let later = now + Duration::from_millis(400);
    t.handle_control(
        ConnId(1),
        ClientMessage::Signal(ok.clone()),
        later,
        NOW_UNIX,
    );
    let acts = drain(&mut t);
    assert_sent(&acts, 1, &[RelayMessage::Signal(ok.clone())]);
    assert_sent(&acts, 2, &[RelayMessage::Signal(ok.clone())]);
    // No peer: dropped silently, counted.
    t.handle_control(ConnId(2), ClientMessage::Leave, later, NOW_UNIX);
    drain(&mut t);
    let much_later = now + Duration::from_secs(5);
    t.handle_control(ConnId(1), ClientMessage::Signal(ok), much_later, NOW_UNIX);
    assert!(sends_to(&drain(&mut t), ConnId(1)).is_empty());
    for reason in ["too_large", "rate_limited", "no_peer"] {
        let series = format!(r#"duet_signals_dropped_total{{reason="{reason}"}}"#);
        assert_metric(&t, &series, 1.0);
    }
}

#[test]
fn features_are_refused_and_pings_answered() {
    let mut t = core();
    let now = Instant::now();
    connect_and_join(&mut t, 1, &claims("s", "alice", "p"), now);
    for f in [Feature::Recording, Feature::Unknown(999)] {
        t.handle_control(ConnId(1), ClientMessage::Request(f), now, NOW_UNIX);
    }
    t.handle_control(ConnId(1), ClientMessage::Ping(42), now, NOW_UNIX);
    assert_sent(
        &drain(&mut t),
        1,
        &[
            RelayMessage::FeatureRefused {
                feature: Feature::Recording,
                reason: RefusalReason::PlaintextRequired,
            },
            RelayMessage::FeatureRefused {
                feature: Feature::Unknown(999),
                reason: RefusalReason::PlaintextRequired,
            },
            RelayMessage::Pong(42),
        ],
    );
}

#[test]
fn leave_before_and_after_join() {
    let mut t = core();
    let now = Instant::now();
    t.handle_connected(ConnId(9), addr(9), now);
    t.handle_control(ConnId(9), ClientMessage::Leave, now, NOW_UNIX);
    assert_eq!(
        closes_of(&drain(&mut t), ConnId(9)),
        vec![CloseReason::Left]
    );
    pair(&mut t, now);
    t.handle_control(ConnId(1), ClientMessage::Leave, now, NOW_UNIX);
    let acts = drain(&mut t);
    assert_eq!(closes_of(&acts, ConnId(1)), vec![CloseReason::Left]);
    assert_sent(&acts, 2, &[RelayMessage::PeerLeft(PeerLeftReason::Left)]);
}

#[test]
fn a_bad_frame_refuses_before_join_and_ends_the_session_after() {
    let mut t = core();
    let now = Instant::now();
    t.handle_connected(ConnId(9), addr(9), now);
    t.handle_bad_frame(ConnId(9), "empty_frame");
    assert_sent(
        &drain(&mut t),
        9,
        &[RelayMessage::Refused(RefusalReason::ProtocolViolation)],
    );
    pair(&mut t, now);
    t.handle_bad_frame(ConnId(1), "malformed");
    assert_ended_for_one(
        &drain(&mut t),
        (1, EndReason::ProtocolViolation),
        (2, PeerLeftReason::ProtocolViolation),
    );
    assert_metric(&t, r#"duet_control_errors_total{kind="malformed"}"#, 1.0);
}

#[test]
fn a_connection_that_never_joins_is_closed_at_its_deadline() {
    let mut t = core(); // join timeout 5 s
    let now = Instant::now();
    t.handle_connected(ConnId(1), addr(1), now);
    t.handle_connected(ConnId(2), addr(2), now);
    t.handle_control(ConnId(2), join_msg(&claims("s", "bob", "p")), now, NOW_UNIX);
    drain(&mut t);
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(5)));
    t.handle_timeout(now + Duration::from_secs(4));
    assert!(drain(&mut t).is_empty());
    t.handle_timeout(now + Duration::from_secs(5));
    let acts = drain(&mut t);
    assert_eq!(closes_of(&acts, ConnId(1)), vec![CloseReason::JoinTimeout]);
    assert!(closes_of(&acts, ConnId(2)).is_empty(), "it joined");
    assert_metric(&t, r#"duet_control_errors_total{kind="never_joined"}"#, 1.0);
}

#[test]
fn tickets_carry_the_current_address_and_a_rising_seq() {
    let mut t = core_with(cfg(), Some(plane()));
    let now = Instant::now();
    let sent = connect_and_join(&mut t, 1, &claims("s", "alice", "p"), now);
    let RelayMessage::Joined(j) = &sent[0] else {
        panic!("{sent:?}")
    };
    let first = j.fast_path.clone().expect("an offer in Joined");
    assert_eq!(first.port, 4434);
    let moved = SocketAddr::from(([10, 9, 9, 9], 5000));
    t.handle_remote(ConnId(1), moved);
    // The media and control tasks may both report the same move: one migration.
    t.handle_remote(ConnId(1), moved);
    assert_metric(&t, "duet_quic_migrations_total", 1.0);
    assert_eq!(t.remote_of(ConnId(1)), Some(moved));
    t.handle_control(ConnId(1), ClientMessage::FastPathTicket, now, NOW_UNIX);
    let sent = sends_to(&drain(&mut t), ConnId(1));
    let [RelayMessage::FastPathTicket(second)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(second.channel, first.channel);
    let key = duet_proto::fastpath::FastPathKey::new(&[9u8; 32]).unwrap();
    let verify = |o: &FastPathOffer, ip| {
        duet_proto::fastpath::FastPathTicket::verify(&o.ticket, &key, ip, NOW_UNIX)
    };
    assert_eq!(verify(&first, addr(1).ip()).unwrap().seq, 1);
    assert_eq!(verify(second, moved.ip()).unwrap().seq, 2);
    // Charged to the signal budget (3 per second): the fourth is refused.
    for _ in 0..3 {
        t.handle_control(ConnId(1), ClientMessage::FastPathTicket, now, NOW_UNIX);
    }
    assert_eq!(
        sends_to(&drain(&mut t), ConnId(1)).last(),
        Some(&RelayMessage::Dropped(RefusalReason::RateLimited))
    );
    // Without a fast path: unavailable, before or after join.
    let mut t = core();
    t.handle_connected(ConnId(1), addr(1), now);
    t.handle_control(ConnId(1), ClientMessage::FastPathTicket, now, NOW_UNIX);
    let mut acts = drain(&mut t);
    connect_and_join(&mut t, 2, &claims("s", "alice", "p"), now);
    t.handle_control(ConnId(2), ClientMessage::FastPathTicket, now, NOW_UNIX);
    acts.extend(drain(&mut t));
    for c in [1, 2] {
        assert_sent(
            &acts,
            c,
            &[RelayMessage::Dropped(RefusalReason::FastPathUnavailable)],
        );
    }
    assert!(acts.iter().all(|a| !matches!(a, Action::Close(..))));
}

#[test]
fn unbind_stops_fast_path_delivery_to_that_endpoint() {
    let fp = plane();
    let mut t = core_with(cfg(), Some(fp.clone()));
    let now = Instant::now();
    let sent = connect_and_join(&mut t, 1, &claims("s", "alice", "p"), now);
    let RelayMessage::Joined(j) = &sent[0] else {
        panic!()
    };
    let offer = j.fast_path.clone().unwrap();
    fp.table()
        .bind(addr(1), offer.channel, &offer.ticket, NOW_UNIX)
        .unwrap();
    assert_eq!(fp.table().bound_addr(offer.channel), Some(addr(1)));
    t.handle_control(ConnId(1), ClientMessage::FastPathUnbind, now, NOW_UNIX);
    assert_eq!(fp.table().bound_addr(offer.channel), None);
}

/// Catches the old behaviour: Pings and feature requests before Join were answered without
/// limit, so an unjoined connection could make the relay write for as long as it liked.
#[test]
fn pings_and_feature_requests_before_join_are_bounded() {
    let mut t = core();
    let now = Instant::now();
    t.handle_connected(ConnId(1), addr(1), now);
    for n in 0..BEFORE_JOIN_MAX {
        let msg = if n % 2 == 0 {
            ClientMessage::Ping(u64::from(n))
        } else {
            ClientMessage::Request(Feature::Recording)
        };
        t.handle_control(ConnId(1), msg, now, NOW_UNIX);
    }
    let acts = drain(&mut t);
    assert_eq!(sends_to(&acts, ConnId(1)).len(), BEFORE_JOIN_MAX as usize);
    assert!(closes_of(&acts, ConnId(1)).is_empty());
    t.handle_control(ConnId(1), ClientMessage::Ping(99), now, NOW_UNIX);
    assert_refused(&drain(&mut t), 1, RefusalReason::ProtocolViolation);
    assert_metric(
        &t,
        r#"duet_control_errors_total{kind="before_join_limit"}"#,
        1.0,
    );
    // Nothing more is answered.
    t.handle_control(ConnId(1), ClientMessage::Ping(100), now, NOW_UNIX);
    assert!(drain(&mut t).is_empty());
}

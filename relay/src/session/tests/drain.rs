//! The drain state machine (`session/drain.rs`).

use std::time::{Duration, Instant};

use super::testing::*;
use crate::session::*;
use duet_proto::EndReason;
use duet_proto::{ClientMessage, JoinToken, RefusalReason, RelayMessage};

fn join(
    t: &mut SessionCore,
    conn: u64,
    session: &str,
    user: &str,
    now: Instant,
) -> Vec<RelayMessage> {
    let c = claims(session, user, "p");
    t.handle_connected(ConnId(conn), addr(conn as u8), now);
    t.handle_control(
        ConnId(conn),
        ClientMessage::Join {
            session: c.session.clone(),
            token: JoinToken::mint(&signer(), &c),
            resume: None,
            e2ee: true,
        },
        now,
        NOW_UNIX,
    );
    sends_to(&drain(t), ConnId(conn))
}

#[test]
fn draining_refuses_joins_and_ends_sessions_at_the_deadline() {
    let mut t = core();
    let now = Instant::now();
    join(&mut t, 1, "s", "alice", now);
    assert!(t.drain(now, Duration::from_secs(3)));
    assert!(!t.drain(now, Duration::from_secs(99)), "already draining");
    assert!(t.is_draining());
    assert_eq!(
        join(&mut t, 2, "s", "bob", now),
        vec![RelayMessage::Refused(RefusalReason::RelayDraining)]
    );
    assert_eq!(
        metric(&t, r#"duet_refusals_total{reason="relay_draining"}"#),
        1.0
    );
    let status = t.drain_status(now + Duration::from_secs(1));
    assert_eq!(status.deadline_left, Some(Duration::from_secs(2)));
    assert_eq!(status.sessions, 1);
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(3)));
    t.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(
        sends_to(&drain(&mut t), ConnId(1)),
        vec![RelayMessage::SessionEnded(EndReason::RelayShutdown)]
    );
    assert_eq!(t.session_count(), 0);
    assert_ne!(
        t.poll_timeout(),
        Some(now + Duration::from_secs(3)),
        "the drain has nothing left to wait for"
    );
    assert!(t.is_draining(), "still not taking joins");
}

/// Starting a drain tells every joined endpoint to move (`Draining` with the deadline);
/// undrain takes joins again; with `min_sessions`, the few sessions left are ended at once.
///
/// Catches the old behaviour: a drain told live endpoints nothing (they learnt at the
/// deadline, from `SessionEnded`), could not be undone, and had no minimum.
#[test]
fn a_drain_tells_endpoints_to_move_can_be_undone_and_ends_the_last_few_early() {
    let mut t = core();
    let now = Instant::now();
    join(&mut t, 1, "s", "alice", now);
    join(&mut t, 2, "s", "bob", now);
    join(&mut t, 3, "u", "carol", now);
    drain(&mut t);
    assert!(t.drain_with(now, Duration::from_secs(60), 0));
    let acts = drain(&mut t);
    for c in 1..=3 {
        assert_eq!(
            sends_to(&acts, ConnId(c)),
            vec![RelayMessage::Draining {
                deadline_ms: 60_000
            }]
        );
    }
    assert!(t.undrain());
    assert!(!t.undrain(), "already serving");
    assert_eq!(t.drain_status(now).deadline_left, None);
    let j = join(&mut t, 4, "u", "dave", now);
    assert!(matches!(j[0], RelayMessage::Joined(_)), "{j:?}");
    assert_eq!(t.session_count(), 2);

    // Two sessions, the last one ended at once: not yet; "u" ends, then "s" is ended
    // without waiting for the deadline.
    let later = now + Duration::from_secs(1);
    assert!(t.drain_with(later, Duration::from_secs(60), 1));
    drain(&mut t);
    assert_eq!(t.drain_deadline(), Some(later + Duration::from_secs(60)));
    t.handle_control(ConnId(3), ClientMessage::Leave, later, NOW_UNIX);
    t.handle_control(ConnId(4), ClientMessage::Leave, later, NOW_UNIX);
    drain(&mut t);
    let due = t.poll_timeout().expect("due at once");
    assert!(due <= later, "{due:?}");
    t.handle_timeout(later);
    let acts = drain(&mut t);
    assert_eq!(
        sends_to(&acts, ConnId(1)),
        vec![RelayMessage::SessionEnded(EndReason::RelayShutdown)]
    );
    assert_eq!(t.session_count(), 0);
}

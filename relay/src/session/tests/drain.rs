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

//! A core with short, round limits and a real fast-path table, driven by hand.

use crate::session::*;
use duet_proto::fastpath::FastPathKey;
use duet_proto::{E2eeClaim, EndReason, JoinClaims, PeerLeftReason, SigningKey};
use rand::SeedableRng;

pub const NOW_UNIX: u64 = 1_700_000_000;

pub fn cfg() -> CoreConfig {
    CoreConfig {
        node: NodeId::new("n1").unwrap(),
        max_sessions: 2,
        resume_window: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(3600),
        join_timeout: Duration::from_secs(5),
        max_signal_bytes: 100,
        signals_per_sec: 3,
        token_skew_secs: 60,
        token_max_lifetime_secs: 86_400,
        limits: crate::config::LimitsConfig::default().to_wire(),
    }
}

pub fn signer() -> SigningKey {
    SigningKey::ed25519_from_seed("k", &[7u8; 32]).unwrap()
}

pub fn plane() -> FastPathPlane {
    let key = FastPathKey::new(&[9u8; 32]).unwrap();
    let table = Arc::new(crate::fastpath::ChannelTable::new(4, key.clone()));
    FastPathPlane::new(table, key, 4434, None, Duration::from_secs(600))
}

pub fn core_with(cfg: CoreConfig, fast_path: Option<FastPathPlane>) -> SessionCore {
    SessionCore::new(
        cfg,
        crate::keyring::LiveKeyring::unmetered(duet_proto::TokenKeyring::new(vec![
            signer().verifying_key()
        ])),
        fast_path,
        RelayMetrics::new(),
        StdRng::seed_from_u64(7),
        Instant::now(),
    )
}

pub fn core() -> SessionCore {
    core_with(cfg(), None)
}

pub fn claims(session: &str, user: &str, device: &str) -> JoinClaims {
    JoinClaims::builder(
        SessionId::new(session).unwrap(),
        UserId::new(user).unwrap(),
        DeviceId::new(device).unwrap(),
    )
    .issued_at(NOW_UNIX - 10)
    .ttl(Duration::from_secs(3600))
    .e2ee(E2eeClaim::Allowed)
    .build()
    .unwrap()
}

pub fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

pub fn drain(t: &mut SessionCore) -> Vec<Action> {
    std::iter::from_fn(|| t.poll_action()).collect()
}

pub fn sends_to(actions: &[Action], conn: ConnId) -> Vec<RelayMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, m) if *c == conn => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn closes_of(actions: &[Action], conn: ConnId) -> Vec<CloseReason> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close(c, why) if *c == conn => Some(*why),
            _ => None,
        })
        .collect()
}

/// What was sent to `conn`, with `Joined` reduced to its slot (secrets are random).
pub fn joined_slot(m: &RelayMessage) -> Option<Slot> {
    match m {
        RelayMessage::Joined(j) => Some(j.slot),
        _ => None,
    }
}

pub fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 4000 + u16::from(n)))
}

pub fn metric(t: &SessionCore, series: &str) -> f64 {
    t.metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.rsplit_once(' ')
                .filter(|(k, _)| *k == series)
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// `series` of the core's metrics reads `want`.
#[track_caller]
pub fn assert_metric(t: &SessionCore, series: &str, want: f64) {
    assert_eq!(metric(t, series), want, "{series}");
}

/// `conn` was sent exactly `want`.
#[track_caller]
pub fn assert_sent(actions: &[Action], conn: u64, want: &[RelayMessage]) {
    assert_eq!(
        sends_to(actions, ConnId(conn)),
        want,
        "sent to connection {conn}"
    );
}

/// `conn` was refused for `r` and closed for it.
#[track_caller]
pub fn assert_refused(actions: &[Action], conn: u64, r: RefusalReason) {
    assert_sent(actions, conn, &[RelayMessage::Refused(r)]);
    assert_eq!(
        closes_of(actions, ConnId(conn)),
        vec![CloseReason::Refused(r)]
    );
}

/// The session ended for `conn` alone (`SessionEnded(ended)`) and its peer `peer` was told
/// `PeerLeft(left)`.
#[track_caller]
pub fn assert_ended_for_one(
    actions: &[Action],
    (conn, ended): (u64, EndReason),
    (peer, left): (u64, PeerLeftReason),
) {
    assert_sent(actions, conn, &[RelayMessage::SessionEnded(ended)]);
    assert_sent(actions, peer, &[RelayMessage::PeerLeft(left)]);
}

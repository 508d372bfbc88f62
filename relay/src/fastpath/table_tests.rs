//! The channel table's rules (`table.rs`): binds, routes, drops, budgets, pair lifecycle.

use super::*;
use std::time::Duration;

const NOW: u64 = 1_000_000;

fn key() -> FastPathKey {
    FastPathKey::new(&[9u8; 32]).unwrap()
}

fn table() -> ChannelTable {
    ChannelTable::new(4, key())
}

const UNLIMITED: MediaLimits = MediaLimits {
    packets_per_sec: u32::MAX,
    bytes_per_sec: u64::MAX / 4,
};

fn ticket(channel: ChannelId, addr: SocketAddr, seq: u32) -> [u8; 54] {
    FastPathTicket {
        channel,
        ip: addr.ip(),
        expires_unix: NOW + 60,
        seq,
    }
    .encode(&key())
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn binds_routes_and_names_each_drop() {
    let t = table();
    let now = Instant::now();
    let [c0, c1] = t.allocate(UNLIMITED).unwrap();
    let (e0, e1, x) = (a("10.0.0.1:1000"), a("10.0.0.2:2000"), a("10.0.0.3:3000"));
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 100, now),
        Err(DropReason::Unbound)
    );
    assert_eq!(
        t.bind(e0, c0, &ticket(c0, e0, 1), NOW),
        Ok(BindOutcome::New)
    );
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 100, now),
        Ok(Verdict::Bridge {
            peer_channel: c1,
            kind: MediaKind::Audio
        }),
        "the peer is not on the fast path: bridge to its QUIC connection"
    );
    assert_eq!(
        t.bind(e1, c1, &ticket(c1, e1, 1), NOW),
        Ok(BindOutcome::New)
    );
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 100, now),
        Ok(Verdict::Forward(e1))
    );
    assert_eq!(
        t.route(e1, c1, MediaKind::Audio, 100, now),
        Ok(Verdict::Forward(e0))
    );
    assert_eq!(
        t.route(x, c0, MediaKind::Audio, 100, now),
        Err(DropReason::SpoofedSource)
    );
    // Same IP, other port: still spoofed until re-bound.
    assert_eq!(
        t.route(a("10.0.0.1:1001"), c0, MediaKind::Audio, 100, now),
        Err(DropReason::SpoofedSource)
    );
    // A ticket for c0 presented on c1, another IP, an expired one, a bad MAC.
    assert_eq!(
        t.bind(e1, c1, &ticket(c0, e1, 5), NOW),
        Err(DropReason::WrongChannel)
    );
    assert_eq!(
        t.bind(x, c0, &ticket(c0, e0, 5), NOW),
        Err(DropReason::WrongAddress)
    );
    assert_eq!(
        t.bind(e0, c0, &ticket(c0, e0, 5), NOW + 60),
        Err(DropReason::TicketExpired)
    );
    let mut bad = ticket(c0, e0, 5);
    bad[53] ^= 1;
    assert_eq!(t.bind(e0, c0, &bad, NOW), Err(DropReason::BadMac));
    // Unknown ids: out of range, never issued generation, released.
    assert_eq!(
        t.route(e0, ChannelId(c0.0 | 0xFFFF_FFF0), MediaKind::Audio, 1, now),
        Err(DropReason::UnknownChannel)
    );
    assert_eq!(
        t.route(e0, ChannelId(c0.0 + (2 << 32)), MediaKind::Audio, 1, now),
        Err(DropReason::UnknownChannel)
    );
    assert!(t.release(c1));
    assert!(!t.release(c0), "already released");
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 1, now),
        Err(DropReason::UnknownChannel)
    );
    // The slot is reused with a new generation; the old ids stay dead.
    let [d0, _] = t.allocate(UNLIMITED).unwrap();
    assert_ne!(d0, c0);
    assert_eq!(
        t.bind(e0, c0, &ticket(c0, e0, 9), NOW),
        Err(DropReason::UnknownChannel)
    );
    assert_eq!(
        t.route(e0, d0, MediaKind::Audio, 1, now),
        Err(DropReason::Unbound)
    );
    // Every reason the table gives is one the fast-path counters carry.
    for r in [
        DropReason::Unbound,
        DropReason::SpoofedSource,
        DropReason::WrongChannel,
        DropReason::UnknownChannel,
        DropReason::StaleTicket,
    ] {
        assert!(DropReason::FAST_PATH.contains(&r), "{r:?}");
    }
}

#[test]
fn rebind_needs_a_fresher_ticket() {
    let t = table();
    let [c0, _] = t.allocate(UNLIMITED).unwrap();
    let old = a("10.0.0.1:1000");
    let moved = a("10.0.0.1:1001");
    let tk1 = ticket(c0, old, 1);
    assert_eq!(t.bind(old, c0, &tk1, NOW), Ok(BindOutcome::New));
    assert_eq!(t.bind(old, c0, &tk1, NOW), Ok(BindOutcome::Refreshed));
    assert_eq!(t.bind(moved, c0, &tk1, NOW), Err(DropReason::StaleTicket));
    assert_eq!(t.bound_addr(c0), Some(old));
    assert_eq!(
        t.bind(moved, c0, &ticket(c0, moved, 2), NOW),
        Ok(BindOutcome::Moved)
    );
    assert_eq!(t.bound_addr(c0), Some(moved));
    // The old address cannot take it back with its old ticket, nor with an equal seq.
    assert_eq!(t.bind(old, c0, &tk1, NOW), Err(DropReason::StaleTicket));
    assert_eq!(
        t.bind(old, c0, &ticket(c0, old, 2), NOW),
        Err(DropReason::StaleTicket)
    );
    // Unbound by its endpoint: nothing goes there, and only a newer ticket binds again.
    assert!(t.unbind(c0));
    assert!(!t.unbind(c0), "already unbound");
    assert_eq!(t.bound_addr(c0), None);
    assert_eq!(
        t.route(moved, c0, MediaKind::Audio, 1, Instant::now()),
        Err(DropReason::Unbound)
    );
    assert_eq!(
        t.bind(moved, c0, &ticket(c0, moved, 2), NOW),
        Err(DropReason::StaleTicket)
    );
    assert_eq!(
        t.bind(moved, c0, &ticket(c0, moved, 3), NOW),
        Ok(BindOutcome::New)
    );
}

#[test]
fn rate_limits_per_endpoint_after_the_source_check() {
    let t = table();
    let now = Instant::now();
    let [c0, c1] = t
        .allocate(MediaLimits {
            packets_per_sec: 3,
            bytes_per_sec: 1_000_000,
        })
        .unwrap();
    let (e0, e1) = (a("10.0.0.1:1"), a("10.0.0.2:2"));
    t.bind(e0, c0, &ticket(c0, e0, 0), NOW).unwrap();
    t.bind(e1, c1, &ticket(c1, e1, 0), NOW).unwrap();
    // Spoofed packets spend nothing.
    for _ in 0..10 {
        assert_eq!(
            t.route(a("10.9.9.9:9"), c0, MediaKind::Audio, 10, now),
            Err(DropReason::SpoofedSource)
        );
    }
    for _ in 0..3 {
        assert_eq!(
            t.route(e0, c0, MediaKind::Audio, 10, now),
            Ok(Verdict::Forward(e1))
        );
    }
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 10, now),
        Err(DropReason::RateLimited)
    );
    assert_eq!(
        t.route(e1, c1, MediaKind::Audio, 10, now),
        Ok(Verdict::Forward(e0)),
        "per endpoint"
    );
    let later = now + Duration::from_millis(400);
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 10, later),
        Ok(Verdict::Forward(e1))
    );
    // The endpoint's QUIC media draws on the same budget, and the other way round.
    let quic = t.budget(c0);
    assert!(!quic.admit(10, later), "spent by the fast path");
    let again = later + Duration::from_millis(340);
    assert!(quic.admit(10, again));
    assert_eq!(
        t.route(e0, c0, MediaKind::Audio, 10, again),
        Err(DropReason::RateLimited),
        "spent by QUIC"
    );
    // Bytes: 1 MB/s, a 600 kB "packet" twice does not fit.
    let [b0, b1] = t
        .allocate(MediaLimits {
            packets_per_sec: 1000,
            bytes_per_sec: 1_000_000,
        })
        .unwrap();
    t.bind(e0, b0, &ticket(b0, e0, 0), NOW).unwrap();
    t.bind(e1, b1, &ticket(b1, e1, 0), NOW).unwrap();
    assert_eq!(
        t.route(e0, b0, MediaKind::Audio, 600_000, now),
        Ok(Verdict::Forward(e1))
    );
    assert_eq!(
        t.route(e0, b0, MediaKind::Audio, 600_000, now),
        Err(DropReason::RateLimited)
    );
    assert_eq!(
        t.route(e0, b0, MediaKind::Audio, 400_000, now),
        Ok(Verdict::Forward(e1))
    );
}

#[test]
fn process_never_forwards_binds_and_table_fills() {
    let t = ChannelTable::new(1, key());
    let [c0, _] = t.allocate(UNLIMITED).unwrap();
    assert!(t.allocate(UNLIMITED).is_none());
    let e0 = a("10.0.0.1:1");
    let pkt = FastPathTicket {
        channel: c0,
        ip: e0.ip(),
        expires_unix: NOW + 1,
        seq: 0,
    }
    .bind_packet(&key());
    let now = Instant::now();
    assert_eq!(
        t.process(e0, &pkt, now, NOW),
        Ok(Verdict::Bound {
            channel: c0,
            outcome: BindOutcome::New
        })
    );
    assert_eq!(t.bound_addr(c0), Some(e0));
    assert_eq!(
        t.process(e0, &[1, 1, 0], now, NOW),
        Err(DropReason::Truncated)
    );
}

#[test]
fn last_activity_is_when_a_packet_was_last_admitted() {
    let t = table();
    let [c0, c1] = t.allocate(UNLIMITED).unwrap();
    let (e0, e1) = (a("10.0.0.1:1"), a("10.0.0.2:2"));
    assert_eq!(t.last_activity(c0), None, "never");
    t.bind(e0, c0, &ticket(c0, e0, 0), NOW).unwrap();
    t.bind(e1, c1, &ticket(c1, e1, 0), NOW).unwrap();
    let at = Instant::now() + Duration::from_secs(3);
    let _ = t.route(a("10.9.9.9:9"), c0, MediaKind::Audio, 10, at);
    assert_eq!(
        t.last_activity(c0),
        None,
        "a spoofed packet is not activity"
    );
    t.route(e0, c0, MediaKind::Audio, 10, at).unwrap();
    assert_eq!(
        t.last_activity(c1),
        Some(at),
        "either side's id names the pair"
    );
    t.release(c0);
    assert_eq!(t.last_activity(c0), None);
}

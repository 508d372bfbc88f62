//! Admission of QUIC handshakes under load, attacked from loopback as a hostile network
//! would: Initials from a socket that never answers (amplification), floods of them while a
//! call runs, and the caps on handshakes in flight.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use duet_proto::{MediaHeader, MediaKind};
use duet_testkit::flood::{flood_initials, Flood};
use duet_testkit::{metric, scrape, Raw, RelayUnderTest, TestRelay};

/// One Initial of the smallest size a client can send (1200 bytes, X25519 only) from an
/// address that never answers draws at most three times its size, counted over the whole
/// handshake lifetime (every retransmission, and the close at the handshake timeout).
///
/// Catches the old behaviour: every attempt was handshaked at once, and quinn's server
/// flight and its retransmissions drew 3,822 bytes for 1,200 (3.19x).
#[tokio::test]
async fn an_initial_that_never_answers_draws_at_most_three_times_its_size() -> Result<()> {
    let relay = TestRelay::start_with(|c| c.limits.join_timeout_ms = 3_000).await;
    let r = flood_initials(
        relay.quic_addr(),
        &relay.cert_pem(),
        Flood {
            attempts: 1,
            per_sec: 1,
            linger: Duration::from_secs(6),
            small_hello: true,
        },
    )
    .await?;
    eprintln!("{r:?} amplification {:.2}", r.amplification());
    assert_eq!(r.sent_datagrams, 1, "one 1200-byte Initial: {r:?}");
    assert!(r.received_datagrams >= 1, "the relay answered: {r:?}");
    assert!(
        r.received_bytes <= 3 * r.sent_bytes,
        "amplification {:.2} > 3: {r:?}",
        r.amplification()
    );
    Ok(())
}

/// Below the Retry threshold a handshake starts at once; the handshakes in flight are
/// capped per source prefix, refusals are counted by reason, and the places come back when
/// the attempts time out.
///
/// Catches the old behaviour: every attempt was accepted and got a task (no cap at all).
#[tokio::test]
async fn handshakes_in_flight_are_capped_per_source_and_freed() -> Result<()> {
    let relay = TestRelay::start_with(|c| {
        c.admission.retry_above_handshakes = 50;
        c.admission.max_handshakes = 50;
        c.admission.max_handshakes_per_source = 3;
        c.limits.join_timeout_ms = 1_000;
    })
    .await;
    let r = flood_initials(
        relay.quic_addr(),
        &relay.cert_pem(),
        Flood {
            attempts: 20,
            per_sec: 200,
            linger: Duration::from_millis(300),
            small_hello: false,
        },
    )
    .await?;
    let m = scrape(relay.ops_addr()).await;
    assert_eq!(
        metric(&m, r#"duet_quic_handshakes_total{outcome="accepted"}"#),
        3.0,
        "{r:?}"
    );
    assert_eq!(
        metric(
            &m,
            r#"duet_quic_handshakes_refused_total{reason="per_source"}"#
        ),
        17.0
    );
    assert_eq!(metric(&m, "duet_quic_handshakes_in_flight"), 3.0);
    // The attempts never finish: at the handshake timeout their places are free again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let m = scrape(relay.ops_addr()).await;
    assert_eq!(metric(&m, "duet_quic_handshakes_in_flight"), 0.0);
    // And a real client gets in.
    let (_a, _) = Raw::join(&relay, "after", "alice", "phone").await?;
    Ok(())
}

/// A flood of Initials from loopback while a call runs: the call's media keeps flowing
/// (each side sends 100 datagrams/s, > 95% arrive during the flood), the flood is answered
/// with Retries only, and a client connecting during the flood still joins.
///
/// Catches the old behaviour: each Initial got a handshake and a task (relay memory grew
/// by ~37 KB per attempt and live calls lost frames).
#[tokio::test]
async fn a_flood_of_initials_leaves_a_live_call_alone() -> Result<()> {
    let relay = TestRelay::start().await;
    let (a, _) = Raw::join(&relay, "live", "alice", "phone").await?;
    let (b, _) = Raw::join(&relay, "live", "bob", "laptop").await?;
    duet_testkit::raw::assert_datagrams_flow(&a, &b).await?;

    let cert = relay.cert_pem();
    let flood = flood_initials(
        relay.quic_addr(),
        &cert,
        Flood {
            attempts: 2_000,
            per_sec: 2_000,
            linger: Duration::from_millis(500),
            small_hello: false,
        },
    );
    let media = async {
        let until = Instant::now() + Duration::from_millis(1_500);
        let mut sent = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while Instant::now() < until {
            tick.tick().await;
            let mut d = MediaHeader::new(MediaKind::Audio).to_bytes().to_vec();
            d.extend_from_slice(&sent.to_be_bytes());
            let d = Bytes::from(d);
            a.conn.send_datagram(d.clone())?;
            b.conn.send_datagram(d)?;
            sent += 1;
        }
        anyhow::Ok(sent)
    };
    let count = |r: &Raw| {
        let conn = r.conn.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(800), conn.read_datagram()).await
            {
                n += 1;
            }
            n
        })
    };
    let (got_a, got_b) = (count(&a), count(&b));
    let joiner = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Raw::join(&relay, "during", "carol", "phone").await
    };
    let (flood, sent, joined) = tokio::join!(flood, media, joiner);
    let (flood, sent) = (flood?, sent?);
    let (got_a, got_b) = (got_a.await?, got_b.await?);
    eprintln!("{flood:?}; media sent {sent} each way, got {got_a} / {got_b}");
    joined?;
    for got in [got_a, got_b] {
        assert!(
            f64::from(got) >= 0.95 * f64::from(sent),
            "media lost under the flood: {got} of {sent}"
        );
    }
    let m = scrape(relay.ops_addr()).await;
    // Every attempt that reached the relay got a Retry (or was dropped by quinn's bounded
    // queue); the only handshakes are the three real clients'.
    let retried = metric(&m, r#"duet_quic_handshakes_total{outcome="retried"}"#);
    assert!(retried >= 100.0, "the flood got Retries: {retried}");
    assert_eq!(
        metric(&m, r#"duet_quic_handshakes_total{outcome="accepted"}"#),
        3.0
    );
    assert!(
        flood.received_bytes <= 3 * flood.sent_bytes,
        "amplification {:.2}",
        flood.amplification()
    );
    Ok(())
}

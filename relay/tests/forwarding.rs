//! Media forwarding over real QUIC on loopback with raw clients: thousands of datagrams of
//! each kind cross the relay byte-for-byte, both ways, and a rate limit drops the excess.
//! (SDK frames: `testkit/tests/sdk_forwarding.rs`.)

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use duet_proto::{MediaHeader, MediaKind, RelayMessage};
use duet_testkit::{metric, scrape, wait_metric, Raw, RelayUnderTest, TestRelay};

const PER_KIND: u32 = 2000;

/// Sequence numbers per window: the sender has at most this many datagrams of each kind in
/// flight (48 in all, under 54 KB, about 110 KiB of kernel buffer as loopback skbs) before
/// the receiver has counted them.
///
/// Why a window: unreliable datagrams sent blindly are dropped somewhere when the receiver
/// falls behind. Measured on a loaded 2-core box (quinn-proto traces, `/proc/net/snmp`
/// `RcvbufErrors`): the relay took in and forwarded all 6,000, and neither its datagram send
/// buffer nor either side's quinn datagram receive buffer dropped one; what dropped was the
/// receiving client's kernel UDP receive buffer (`SO_RCVBUF`, 208 KiB by default, which
/// quinn's client endpoint leaves as it is) while the client's endpoint task was not
/// scheduled: the relay's connection to it saw runs of 50 to 100 packets lost. A window well
/// under that buffer means a correct relay delivers every datagram, so the test counts them
/// exactly.
const WINDOW_SEQS: u32 = 16;

fn datagram(kind: MediaKind, seq: u32, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_slice(&MediaHeader::new(kind).to_bytes());
    b.put_u32(seq);
    while b.len() < len {
        b.put_u8((seq as usize + b.len()) as u8);
    }
    b.freeze()
}

/// Sends PER_KIND datagrams of each kind from `from`, one window at a time, and checks that
/// `to` receives each one exactly once and unchanged.
async fn one_way(from: &Raw, to: &Raw) -> Result<()> {
    let total = 3 * PER_KIND as usize;
    let (counted_tx, mut counted) = tokio::sync::watch::channel(0usize);
    let receiver = async move {
        let mut got = Vec::with_capacity(total);
        while got.len() < total {
            let d = to
                .recv_datagram()
                .await
                .with_context(|| format!("after {} of {total} datagrams", got.len()))?;
            got.push(d);
            counted_tx.send_replace(got.len());
        }
        anyhow::Ok(got)
    };
    let sender = async {
        let mut sent: HashMap<(u8, u32), Bytes> = HashMap::new();
        for first in (0..PER_KIND).step_by(WINDOW_SEQS as usize) {
            for seq in first..(first + WINDOW_SEQS).min(PER_KIND) {
                for kind in MediaKind::ALL {
                    let len = 16 + (seq as usize * 37 + kind as usize * 101) % 1100;
                    let d = datagram(kind, seq, len);
                    from.conn.send_datagram_wait(d.clone()).await?;
                    sent.insert((kind as u8, seq), d);
                }
            }
            let window_sent = sent.len();
            counted
                .wait_for(|n| *n >= window_sent)
                .await
                .context("the receiver stopped")?;
        }
        anyhow::Ok(sent)
    };
    let (got, sent) = tokio::join!(receiver, sender);
    let (got, mut sent) = (got?, sent?);
    for d in &got {
        let kind = d[1];
        let seq = u32::from_be_bytes([d[2], d[3], d[4], d[5]]);
        let want = sent
            .remove(&(kind, seq))
            .with_context(|| format!("datagram {kind}/{seq} was never sent or arrived twice"))?;
        assert_eq!(d, &want, "datagram {kind}/{seq} changed in flight");
    }
    assert!(sent.is_empty(), "{} datagrams never arrived", sent.len());
    Ok(())
}

#[tokio::test]
async fn thousands_of_datagrams_of_each_kind_cross_byte_identical() -> Result<()> {
    let relay = TestRelay::start().await;
    let (mut a, _) = Raw::join(&relay, "fwd", "alice", "phone").await?;
    let (b, _) = Raw::join(&relay, "fwd", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    one_way(&a, &b).await?;
    one_way(&b, &a).await?;
    let text = scrape(relay.ops_addr()).await;
    for kind in MediaKind::ALL {
        let series = format!(
            r#"duet_forwarded_packets_total{{kind="{}"}}"#,
            kind.as_str()
        );
        assert_eq!(metric(&text, &series), 2.0 * PER_KIND as f64, "{series}");
        let bytes = format!(r#"duet_forwarded_bytes_total{{kind="{}"}}"#, kind.as_str());
        assert!(metric(&text, &bytes) > 2.0 * 16.0 * PER_KIND as f64);
    }
    Ok(())
}

#[tokio::test]
async fn media_rate_limit_drops_the_excess_and_counts_it() -> Result<()> {
    let relay = TestRelay::start_with(|c| {
        c.limits.media_packets_per_sec = 100;
        c.limits.media_bytes_per_sec = 1_000_000;
    })
    .await;
    let (mut a, _) = Raw::join(&relay, "rl", "alice", "phone").await?;
    let (b, _) = Raw::join(&relay, "rl", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    for seq in 0..400 {
        a.conn
            .send_datagram_wait(datagram(MediaKind::Audio, seq, 100))
            .await?;
    }
    let dropped = wait_metric(
        relay.ops_addr(),
        r#"duet_media_dropped_total{reason="rate_limited"}"#,
        250.0,
    )
    .await;
    assert!(dropped >= 250.0, "dropped {dropped}");
    let mut got = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), b.conn.read_datagram()).await
    {
        got += 1;
    }
    assert!((100..=150).contains(&got), "forwarded {got}");
    Ok(())
}

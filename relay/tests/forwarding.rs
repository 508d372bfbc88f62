//! Media forwarding over real QUIC on loopback: thousands of datagrams of each kind cross
//! the relay byte-for-byte, both ways; SDK frames of each kind arrive intact.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use duet_proto::{MediaHeader, MediaKind, RelayMessage};
use duet_sdk::Event;

const PER_KIND: u32 = 2000;

fn datagram(kind: MediaKind, seq: u32, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_slice(&MediaHeader::new(kind).to_bytes());
    b.put_u32(seq);
    while b.len() < len {
        b.put_u8((seq as usize + b.len()) as u8);
    }
    b.freeze()
}

/// Sends PER_KIND datagrams of each kind from `from`, paced so nothing is dropped for
/// buffer space, and checks that `to` receives each one unchanged.
async fn one_way(from: &Raw, to: &Raw) -> Result<()> {
    let mut sent: HashMap<(u8, u32), Bytes> = HashMap::new();
    let receiver = async {
        let mut got = Vec::new();
        while got.len() < 3 * PER_KIND as usize {
            got.push(to.recv_datagram().await?);
        }
        anyhow::Ok(got)
    };
    let sender = async {
        for seq in 0..PER_KIND {
            for kind in MediaKind::ALL {
                let len = 16 + (seq as usize * 37 + kind as usize * 101) % 1100;
                let d = datagram(kind, seq, len);
                from.conn.send_datagram_wait(d.clone()).await?;
                sent.insert((kind as u8, seq), d);
            }
            if seq % 50 == 49 {
                // Pace: loopback is fast, the relay's per-peer buffer is bounded.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        anyhow::Ok(())
    };
    let (got, s) = tokio::join!(receiver, sender);
    s?;
    let got = got?;
    for d in &got {
        let kind = d[1];
        let seq = u32::from_be_bytes([d[2], d[3], d[4], d[5]]);
        let want = sent.get(&(kind, seq)).expect("a datagram that was sent");
        assert_eq!(d, want, "datagram {kind}/{seq} changed in flight");
    }
    Ok(())
}

#[tokio::test]
async fn thousands_of_datagrams_of_each_kind_cross_byte_identical() -> Result<()> {
    let relay = start().await;
    let (mut a, _) = Raw::join(&relay, "fwd", "alice", "phone").await?;
    let (b, _) = Raw::join(&relay, "fwd", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    one_way(&a, &b).await?;
    one_way(&b, &a).await?;
    let text = scrape(&relay).await;
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
async fn sdk_frames_of_each_kind_arrive_intact() -> Result<()> {
    let relay = start().await;
    let a = sdk_join(&relay, "sdk", "alice", "phone").await?;
    let b = sdk_join(&relay, "sdk", "bob", "laptop").await?;
    expect_event(&a, Event::PeerJoined).await?;
    for kind in MediaKind::ALL {
        for (i, size) in [1usize, 700, 5_000, 60_000].into_iter().enumerate() {
            let frame: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
            a.send_media(kind, &frame).await?;
            let got = tokio::time::timeout(STEP, b.recv_media()).await??;
            assert_eq!(got.kind, kind);
            assert_eq!(got.data.as_ref(), frame.as_slice());
            b.send_media(kind, &frame).await?;
            let got = tokio::time::timeout(STEP, a.recv_media()).await??;
            assert_eq!(got.data.as_ref(), frame.as_slice());
        }
    }
    // A burst of small frames of each kind.
    for kind in MediaKind::ALL {
        for n in 0..300u32 {
            a.send_media(kind, &n.to_be_bytes()).await?;
            let got = tokio::time::timeout(STEP, b.recv_media()).await??;
            assert_eq!(got.data.as_ref(), n.to_be_bytes());
        }
    }
    Ok(())
}

#[tokio::test]
async fn media_rate_limit_drops_the_excess_and_counts_it() -> Result<()> {
    let relay = start_with(|c| {
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
        &relay,
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

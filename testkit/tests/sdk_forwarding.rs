//! SDK media over a real in-process relay: frames of each kind and size, up to ones split
//! into many datagrams, arrive intact both ways. (Raw datagrams byte for byte:
//! `relay/tests/forwarding.rs`.)

use anyhow::Result;
use duet_proto::MediaKind;
use duet_sdk::Event;
use duet_testkit::sdk::{expect_event, sdk_join};
use duet_testkit::{TestRelay, STEP};

#[tokio::test]
async fn sdk_frames_of_each_kind_arrive_intact() -> Result<()> {
    let relay = TestRelay::start().await;
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

//! Failover without a new key agreement (the SDK side of the fleet issue): two relay nodes
//! that trust one token issuer, tokens that list both, SDKs that know where each node is.
//! When the node carrying an E2EE call dies (SIGKILL of a relay process) or tells its
//! clients it is draining, both endpoints move to the next node of their tokens' list and
//! the same call engine continues: same code, `Migrated`, `KeysConfirmed`, media sealed.

use std::time::Duration;

use anyhow::{Context, Result};
use duet_proto::NodeId;
use duet_sdk::{Call, Client, ConnectOptions, Event, SdkError};
use duet_testkit::fleet::{share_identity, Fleet};
use duet_testkit::sdk::{deliver_frame, e2ee_config, issuer_keys, wait_for_event, SendFailure};
use duet_testkit::{
    claims_builder, sid, Honest, HostileRelay, RelayProcess, RelayUnderTest, TestRelay, STEP,
};

const MARKER: &[u8; 18] = b"FAILOVER-PLAINTEXT";

fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("a node id")
}

/// Quick loss detection for a test: a silent node is dead after 1.5 s.
fn fleet_options(cert: Vec<u8>, nodes: Vec<(NodeId, std::net::SocketAddr)>) -> ConnectOptions {
    ConnectOptions {
        nodes,
        keep_alive: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1500),
        join_timeout: Duration::from_secs(2),
        ..ConnectOptions::trusting(cert)
    }
}

async fn join(
    issuer: &impl RelayUnderTest,
    dial: std::net::SocketAddr,
    opts: ConnectOptions,
    session: &str,
    user: &str,
) -> Result<Call, SdkError> {
    let c = claims_builder(session, user, &format!("{user}-phone"))
        .nodes(vec![node("n1"), node("n2")])
        .build()
        .expect("claims");
    let mut cfg = e2ee_config(true);
    cfg.token_keys = issuer_keys(issuer);
    let client = Client::connect(dial, issuer.token_with(&c), opts).await?;
    client.join_e2ee(sid(session), cfg).await
}

/// Alice first (slot A), bob half a second later.
async fn pair(
    issuer: &impl RelayUnderTest,
    dial: std::net::SocketAddr,
    opts: &ConnectOptions,
    session: &str,
) -> Result<(Call, Call)> {
    let (a, b) = tokio::join!(join(issuer, dial, opts.clone(), session, "alice"), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        join(issuer, dial, opts.clone(), session, "bob").await
    });
    Ok((a.context("alice")?, b.context("bob")?))
}

/// Sends `MARKER | i` until `to` delivers it; sends fail while the link moves.
async fn exchange(from: &Call, to: &Call, i: u8) -> Result<()> {
    let mut f = MARKER.to_vec();
    f.push(i);
    deliver_frame(from, to, &f, SendFailure::Retried).await
}

async fn wait_for(call: &Call, what: &str, f: impl Fn(&Event) -> bool) -> Result<Event> {
    wait_for_event(call, what, 2 * STEP, f).await
}

/// Two in-process nodes of one fleet (one certificate, one token issuer), n1 and n2.
async fn two_nodes() -> (TestRelay, TestRelay) {
    let n1 = TestRelay::start_with(|c| c.node_id = "n1".into()).await;
    let from = n1.data_dir().to_owned();
    let n2 = TestRelay::start_with(move |c| {
        c.node_id = "n2".into();
        share_identity(&from, &c.data_dir).expect("one fleet");
    })
    .await;
    (n1, n2)
}

async fn assert_moved(a: &Call, b: &Call, code: &duet_sdk::SecurityCode) -> Result<()> {
    for c in [a, b] {
        let ev = wait_for(c, "Migrated", |e| matches!(e, Event::Migrated { .. })).await?;
        assert_eq!(
            ev,
            Event::Migrated {
                from: node("n1"),
                to: node("n2")
            }
        );
        wait_for(c, "KeysConfirmed", |e| *e == Event::KeysConfirmed).await?;
        assert_eq!(c.security_code().as_ref(), Some(code), "never a new code");
        assert_eq!(c.node(), Some(node("n2")));
        assert!(c.is_e2ee());
    }
    exchange(a, b, 10).await?;
    exchange(b, a, 11).await?;
    Ok(())
}

/// The node carrying the call is SIGKILLed: no goodbye, only silence. Both SDKs notice
/// (idle timeout), fail to resume on the dead node, and move to n2 with the same keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_the_call_continues_on_the_next_with_the_same_code() -> Result<()> {
    duet_testkit::init_tracing();
    let mut fleet = Fleet::start(2, |b| b)?;
    let opts = fleet_options(fleet.cert_pem(), fleet.address_book());
    let n1 = &fleet.nodes[0];
    let (a, b) = pair(n1, n1.quic_addr(), &opts, "failover-kill").await?;
    let code = a.security_code().context("a code")?;
    assert_eq!(b.security_code().as_ref(), Some(&code));
    assert_eq!(a.node(), Some(node("n1")));
    exchange(&a, &b, 0).await?;

    fleet.nodes[0].sigkill()?;
    assert_moved(&a, &b, &code).await?;
    Ok(())
}

/// The node is drained by its operator: it tells its clients `Draining`, and both move to
/// n2 at once, same code, before the drain deadline ends the session there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_the_call_moves_to_the_next_with_the_same_code() -> Result<()> {
    let (n1, n2) = two_nodes().await;
    let opts = fleet_options(
        n1.cert_pem(),
        vec![(node("n1"), n1.quic_addr()), (node("n2"), n2.quic_addr())],
    );
    let (a, b) = pair(&n1, n1.quic_addr(), &opts, "failover-drain").await?;
    let code = a.security_code().context("a code")?;
    exchange(&a, &b, 0).await?;
    let mut tap = b.tap_raw();
    n1.relay.drain();
    assert_moved(&a, &b, &code).await?;
    while let Ok(d) = tap.try_recv() {
        assert!(
            !d.windows(10).any(|w| w == &MARKER[..10]),
            "plaintext forwarded"
        );
    }
    Ok(())
}

/// The node a call moves to is hostile: a front holding the fleet's certificate stands
/// where the SDKs' address book says n2 is, and it injects well-framed plaintext media into
/// both endpoints once they are there. The moved call confirms its keys end to end, delivers
/// only the peer's sealed frames (never the injected ones), and nothing crosses the front
/// in the clear: a failover is no way around the end-to-end keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_next_node_cannot_make_a_moved_call_deliver_or_see_plaintext() -> Result<()> {
    const INJECTED: &[u8] = b"INJECTED-PLAINTEXT";
    let (n1, n2) = two_nodes().await;
    let front = HostileRelay::start(n2.quic_addr(), n2.data_dir(), std::sync::Arc::new(Honest))?;
    let opts = fleet_options(
        n1.cert_pem(),
        vec![(node("n1"), n1.quic_addr()), (node("n2"), front.addr())],
    );
    let (a, b) = pair(&n1, n1.quic_addr(), &opts, "failover-hostile").await?;
    let code = a.security_code().context("a code")?;
    exchange(&a, &b, 0).await?;
    n1.relay.drain();
    assert_moved(&a, &b, &code).await?;
    assert!(
        front.handle.legs() >= 2,
        "both endpoints moved through the front"
    );

    let mut forged = vec![
        duet_proto::MEDIA_VERSION,
        duet_proto::MediaKind::Audio as u8,
    ];
    forged.extend_from_slice(&[0, 0, 0x7f, 0xff, 0, 0, 0, 1]);
    forged.extend_from_slice(INJECTED);
    for _ in 0..20 {
        for leg in 0..front.handle.legs() {
            front.handle.inject_datagram(leg, forged.clone().into());
        }
    }
    for i in 20..30u8 {
        let mut f = MARKER.to_vec();
        f.push(i);
        a.send_media(duet_proto::MediaKind::Audio, &f).await?;
    }
    let mut real = 0;
    for call in [&b, &a] {
        while let Ok(Ok(f)) =
            tokio::time::timeout(Duration::from_millis(500), call.recv_media()).await
        {
            assert!(
                !f.data.windows(INJECTED.len()).any(|w| w == INJECTED),
                "injected plaintext was delivered"
            );
            assert!(f.data.starts_with(MARKER), "an unknown frame was delivered");
            real += 1;
        }
    }
    assert!(
        real >= 8,
        "{real} of 10 sealed frames delivered after the move"
    );
    // The injected frames reached the engines (so this test can fail) and were refused there.
    let (sa, sb) = (
        a.e2ee_stats().context("stats")?,
        b.e2ee_stats().context("stats")?,
    );
    assert!(sa.rejected() + sb.rejected() >= 20, "{sa:?} {sb:?}");
    assert!(
        sa.confirmations >= 1 && sb.confirmations >= 1,
        "{sa:?} {sb:?}"
    );
    assert!(
        !front.handle.saw_in_datagrams(&MARKER[..10]),
        "plaintext crossed the next node"
    );
    Ok(())
}

/// The only node restarts on the same ports (a crash and a supervisor restart): the SDKs
/// notice at once (a stateless reset: the relay keeps its reset key; `ConnectionReset`),
/// the restarted node has lost the session, and both join it afresh: the same engine
/// continues, same code, keys confirmed end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_the_call_continues_on_it_with_the_same_code() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut n1 = RelayProcess::builder()
        .data_dir(dir.path())
        .args(["--node-id", "n1"])
        .start()?;
    let opts = fleet_options(n1.cert_pem(), vec![(node("n1"), n1.quic_addr())]);
    let (a, b) = pair(&n1, n1.quic_addr(), &opts, "failover-restart").await?;
    let code = a.security_code().context("a code")?;
    exchange(&a, &b, 0).await?;

    n1.sigkill()?;
    n1.restart()?;
    for c in [&a, &b] {
        // The relay keeps its stateless-reset key in its data directory, so the first
        // packet to the new process gets a reset the SDK recognises: told at once.
        wait_for(c, "ConnectionReset", |e| *e == Event::ConnectionReset).await?;
        wait_for(c, "KeysConfirmed", |e| *e == Event::KeysConfirmed).await?;
        assert_eq!(c.security_code().as_ref(), Some(&code));
    }
    exchange(&a, &b, 1).await?;
    exchange(&b, &a, 2).await?;
    Ok(())
}

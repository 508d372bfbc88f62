//! The test kit's child-process relay: the real binary starts, serves a join on the
//! addresses its banner printed, comes back on the same ports and data directory after a
//! crash (SIGKILL), and dies with its handle; on a one-thread runtime it still forwards.

use anyhow::Result;
use duet_proto::RelayMessage;
use duet_testkit::raw::assert_datagrams_flow;
use duet_testkit::{http_get, Raw, RelayProcess, RelayUnderTest};

/// A raw client joins the relay process (its own token key, its own certificate).
fn joins(rt: &tokio::runtime::Runtime, relay: &RelayProcess, session: &str) -> Result<()> {
    rt.block_on(async {
        let (mut a, _) = Raw::join(relay, session, "alice", "phone").await?;
        let (_b, _) = Raw::join(relay, session, "bob", "laptop").await?;
        assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
        let (status, _) = http_get(relay.ops_addr(), "/readyz").await?;
        assert_eq!(status, 200);
        Ok(())
    })
}

#[test]
fn a_killed_relay_restarts_on_the_same_ports_and_a_dropped_one_is_gone() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut relay = RelayProcess::start()?;
    let before = relay.addrs();
    assert!(before.fast_path.is_some(), "{}", relay.banner());
    joins(&rt, &relay, "before-crash")?;

    let status = relay.sigkill()?;
    assert!(!status.success(), "{status:?}");
    relay.restart()?;
    assert_eq!(relay.addrs(), before, "same ports after the restart");
    joins(&rt, &relay, "after-crash")?;

    let pid = libc::pid_t::try_from(relay.pid())?;
    drop(relay);
    // SAFETY: signal 0 only checks whether the (reaped) pid still exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the relay process outlived its handle");
    Ok(())
}

/// A relay started with `--runtime-workers n`, whose banner shows that many runtime threads.
fn with_runtime_workers(n: usize) -> Result<RelayProcess> {
    let relay = RelayProcess::builder()
        .args(["--runtime-workers", &n.to_string()])
        .start()?;
    let s = if n == 1 { " " } else { "s " };
    let want = format!("runtime     {n} worker thread{s}");
    assert!(relay.banner().contains(&want), "{}", relay.banner());
    Ok(relay)
}

#[test]
fn runtime_workers_sets_the_runtime_and_one_thread_still_forwards() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let relay = with_runtime_workers(1)?;
    rt.block_on(async {
        let (a, _) = Raw::join(&relay, "one-thread", "alice", "phone").await?;
        let (b, _) = Raw::join(&relay, "one-thread", "bob", "laptop").await?;
        assert_datagrams_flow(&a, &b).await
    })?;
    with_runtime_workers(2)?;
    Ok(())
}

//! A relay killed (SIGKILL) and restarted on the same ports: its old clients learn at once.

use std::time::{Duration, Instant};

use anyhow::Result;
use duet_proto::ClientMessage;
use duet_testkit::{Raw, RelayProcess, RelayUnderTest};

/// After kill -9 and a restart on the same ports and data directory, a client of the old
/// process gets a stateless reset at its next packet (within one round trip, far below the
/// 30 s idle timeout), because the reset key persists in the data directory.
///
/// Catches the old behaviour: each process drew a new random reset key, so the new
/// process's resets did not match the tokens clients held and were ignored; clients waited
/// out the idle timeout.
#[tokio::test]
async fn after_a_crash_and_restart_old_connections_are_reset_at_once() -> Result<()> {
    let mut relay = RelayProcess::start()?;
    let (mut a, _) = Raw::join(&relay, "crash", "alice", "phone").await?;
    relay.restart()?;
    let key = std::fs::read_to_string(relay.data_dir().join("stateless-reset-key"))?;
    assert_eq!(key.trim().len(), 64, "a 32-byte key in hex");

    let t0 = Instant::now();
    // Anything the old connection sends reaches the new process, which knows no such
    // connection and answers with a stateless reset.
    a.send_msg(&ClientMessage::Ping(1)).await?;
    let err = tokio::time::timeout(Duration::from_secs(5), a.conn.closed()).await?;
    let took = t0.elapsed();
    assert!(
        matches!(err, quinn::ConnectionError::Reset),
        "expected a stateless reset, got {err}"
    );
    assert!(took < Duration::from_secs(2), "reset after {took:?}");
    eprintln!("reset after {took:?}");

    // The restarted relay serves new connections as before.
    let (_b, _) = Raw::join(&relay, "again", "bob", "laptop").await?;
    let _ = relay.quic_addr();
    Ok(())
}

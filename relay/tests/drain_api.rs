//! The operator's drain control through a real relay process: the `/admin/` endpoints of
//! the ops listener and the `drain`, `undrain`, `status` subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use duet_proto::{RefusalReason, RelayMessage};
use duet_testkit::{http_get, metric, relay_command, scrape, Raw, RelayProcess};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "drain-credential-0123456789";

fn cli(verb: &str, ops: SocketAddr, token: &std::path::Path, extra: &[&str]) -> Result<Value> {
    let out = relay_command()
        .arg(verb)
        .args(["--ops", &ops.to_string()])
        .arg("--token-file")
        .arg(token)
        .args(extra)
        .output()?;
    ensure!(
        out.status.success(),
        "duet-relay {verb}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A relay process whose ops listener serves `/admin/` with [`TOKEN`] as its credential.
struct Admin {
    relay: RelayProcess,
    ops: SocketAddr,
    /// The credential file, for the subcommands.
    token: PathBuf,
    /// Holds the credential file.
    _dir: tempfile::TempDir,
}

impl Admin {
    fn start() -> Result<Admin> {
        let dir = tempfile::tempdir()?;
        let token = dir.path().join("ops-token");
        std::fs::write(&token, TOKEN)?;
        let relay = RelayProcess::builder()
            .arg("--ops-token-file")
            .arg(&token)
            .start()?;
        let ops = relay.addrs().ops;
        Ok(Admin {
            relay,
            ops,
            token,
            _dir: dir,
        })
    }
}

async fn post(ops: SocketAddr, path: &str, auth: Option<&str>) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(ops).await?;
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Drain from the CLI: live endpoints get `Draining { deadline_ms }`, readiness goes false,
/// `duet_draining` is 1, new joins are refused `RelayDraining`; undrain brings all of it
/// back; without the credential the endpoints answer 401.
///
/// Catches the old behaviour: a drain could only be started by SIGTERM (which also stops
/// the process), never undone, and told live endpoints nothing until their sessions ended.
#[tokio::test]
async fn drain_and_undrain_from_the_command_line() -> Result<()> {
    let admin = Admin::start()?;
    let (relay, ops, token) = (&admin.relay, admin.ops, &admin.token);
    let (mut a, _) = Raw::join(relay, "d", "alice", "phone").await?;
    let (mut b, _) = Raw::join(relay, "d", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));

    let st = cli("status", ops, token, &[])?;
    assert_eq!(st["draining"], false);
    assert_eq!(st["sessions"], 1);
    assert_eq!(post(ops, "/admin/drain", None).await?, 401);
    assert_eq!(
        post(ops, "/admin/drain", Some("wrong-credential-xxxx")).await?,
        401
    );
    assert_eq!(http_get(ops, "/readyz").await?.0, 200);

    let st = cli("drain", ops, token, &["--deadline", "20s"])?;
    assert_eq!(st["draining"], true);
    assert_eq!(st["changed"], true);
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.next().await?,
            Some(RelayMessage::Draining {
                deadline_ms: 20_000
            })
        );
    }
    assert_eq!(http_get(ops, "/readyz").await?.0, 503);
    assert_eq!(metric(&scrape(ops).await, "duet_draining"), 1.0);
    let mut late = Raw::connect(relay).await?;
    let token_late = duet_testkit::RelayUnderTest::token(relay, "e", "carol", "phone");
    assert_eq!(
        late.join_raw("e", token_late, None).await?,
        RelayMessage::Refused(RefusalReason::RelayDraining)
    );
    let again = cli("drain", ops, token, &[])?;
    assert_eq!(again["changed"], false, "already draining");

    let st = cli("undrain", ops, token, &[])?;
    assert_eq!(st["draining"], false);
    assert_eq!(st["sessions"], 1, "the live call goes on");
    assert_eq!(http_get(ops, "/readyz").await?.0, 200);
    assert_eq!(metric(&scrape(ops).await, "duet_draining"), 0.0);
    let (_c, _) = Raw::join(relay, "e", "carol", "phone").await?;
    duet_testkit::raw::assert_datagrams_flow(&a, &b).await?;
    Ok(())
}

/// `min_sessions`: once no more than that many sessions remain, the drain ends them at
/// once instead of waiting for its deadline.
#[tokio::test]
async fn a_drain_with_min_sessions_ends_the_last_ones_early() -> Result<()> {
    let admin = Admin::start()?;
    let (relay, ops, token) = (&admin.relay, admin.ops, &admin.token);
    let (mut a, _) = Raw::join(relay, "m", "alice", "phone").await?;
    let st = cli(
        "drain",
        ops,
        token,
        &["--deadline", "10m", "--min-sessions", "1"],
    )?;
    assert_eq!(st["draining"], true);
    assert_eq!(
        a.next().await?,
        Some(RelayMessage::Draining {
            deadline_ms: 600_000
        })
    );
    assert_eq!(
        a.next().await?,
        Some(RelayMessage::SessionEnded(
            duet_proto::EndReason::RelayShutdown
        ))
    );
    assert_eq!(cli("status", ops, token, &[])?["sessions"], 0);
    let m = scrape(ops).await;
    assert_eq!(
        metric(&m, r#"duet_sessions_ended_total{reason="relay_shutdown"}"#),
        1.0
    );
    Ok(())
}

/// A `--token-file` that cannot be read, or holds too short a credential, is a bad
/// configuration: exit 78, like `serve`'s, so a script does not retry it. Before the fix the
/// `ConfigError` sat behind `OpsCliError`'s transparent variant, invisible to the exit-status
/// check, and this exited 1.
#[test]
fn a_bad_token_file_for_drain_exits_78() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort")?;
    let missing = dir.path().join("missing");
    for (verb, file) in [("drain", &missing), ("drain", &short), ("status", &missing)] {
        let out = relay_command()
            .arg(verb)
            .args(["--ops", "127.0.0.1:9", "--timeout", "1s"])
            .arg("--token-file")
            .arg(file)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(78),
            "{verb} --token-file {}: {}\n{stderr}",
            file.display(),
            out.status
        );
        ensure!(stderr.contains("--token-file"), "{stderr}");
    }
    Ok(())
}

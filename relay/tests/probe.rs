//! `duet-relay probe` against a real relay process.

use anyhow::Result;
use duet_testkit::{relay_command, RelayProcess};

fn probe(
    relay: &RelayProcess,
    key: &std::path::Path,
    extra: &[&str],
) -> Result<std::process::Output> {
    Ok(relay_command()
        .arg("probe")
        .args(["--relay", &relay.addrs().quic.to_string()])
        .arg("--ca")
        .arg(relay.data_dir().join("cert.pem"))
        .arg("--token-key")
        .arg(key)
        .args(["--timeout", "20s"])
        .args(extra)
        .output()?)
}

/// The probe joins two endpoints, gets media back both ways over QUIC and over the fast
/// path, and exits 0 with both round-trip times.
#[test]
fn the_probe_measures_both_transports_and_exits_0() -> Result<()> {
    let relay = RelayProcess::start()?;
    let out = probe(&relay, &relay.data_dir().join("token-signing-key"), &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok quic_rtt_ms="), "{stdout}");
    assert!(stdout.contains("fast_path_rtt_ms="), "{stdout}");
    eprintln!("{stdout}");
    Ok(())
}

/// A probe that cannot do its job exits 1: tokens from a key the relay does not trust, or a
/// relay without its fast path (unless `--quic-only`).
#[test]
fn the_probe_fails_with_1_when_the_data_plane_is_not_whole() -> Result<()> {
    let relay = RelayProcess::start()?;
    let dir = tempfile::tempdir()?;
    let other = dir.path().join("other-key");
    std::fs::write(&other, duet_proto::hex::encode(&[7u8; 32]))?;
    let out = probe(&relay, &other, &[])?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));

    let quic_only = RelayProcess::builder()
        .args(["--fast-path-enabled", "false"])
        .start()?;
    let key = quic_only.data_dir().join("token-signing-key");
    let out = probe(&quic_only, &key, &[])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fast path"));
    let out = probe(&quic_only, &key, &["--quic-only"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fast_path=skipped"));
    Ok(())
}

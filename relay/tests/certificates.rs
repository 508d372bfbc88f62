//! Certificates out of their validity period, at start and on SIGHUP reload.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use duet_relay::exit_status;
use duet_testkit::process::PROCESS_WAIT;
use duet_testkit::{relay_command, Raw, RelayProcess};

/// Writes a certificate valid from `from` to `until` (seconds from now) and its key.
fn write_cert(dir: &Path, from: i64, until: i64) -> Result<()> {
    let at = |secs: i64| {
        let now = time_now();
        if secs >= 0 {
            now + Duration::from_secs(secs as u64)
        } else {
            now - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params.not_before = at(from).into();
    params.not_after = at(until).into();
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("tls-cert.pem"), cert.pem())?;
    std::fs::write(dir.join("tls-key.pem"), key.serialize_pem())?;
    Ok(())
}

fn time_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// An expired certificate is refused at start with the configuration exit status (78), the
/// reason on stderr.
///
/// Catches the old behaviour: it was loaded and served; every client then failed its
/// handshake.
#[test]
fn an_expired_certificate_is_refused_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_cert(dir.path(), -7200, -3600)?;
    let mut child = relay_command()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(dir.path().join("tls-cert.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("tls-key.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // A relay that took the certificate would serve forever: bounded wait, then fail.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t0.elapsed() > PROCESS_WAIT {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("the relay started with an expired certificate");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr)?;
    }
    assert_eq!(
        status.code(),
        Some(i32::from(exit_status::CONFIG)),
        "{stderr}"
    );
    assert!(stderr.contains("expired"), "{stderr}");
    Ok(())
}

/// On SIGHUP, a not-yet-valid certificate is refused: the old one stays in use (a client
/// trusting it still connects) and the reason is logged.
///
/// Catches the old behaviour: the reload took it and served it.
#[tokio::test]
async fn sighup_keeps_the_old_certificate_when_the_new_one_is_not_valid() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_cert(dir.path(), -60, 3600)?;
    let relay = RelayProcess::builder()
        .arg("--tls-cert")
        .arg(dir.path().join("tls-cert.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("tls-key.pem"))
        .env("RUST_LOG", "info")
        .start()?;
    let old = std::fs::read(dir.path().join("tls-cert.pem"))?;
    write_cert(dir.path(), 3600, 7200)?;
    relay.sighup()?;
    let t0 = Instant::now();
    while !relay.stderr().contains("TLS reload failed") {
        assert!(
            t0.elapsed() < PROCESS_WAIT,
            "no reload log: {}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        relay.stderr().contains("not valid yet"),
        "{}",
        relay.stderr()
    );
    let (_a, _) = Raw::connect_to(relay.addrs().quic, &old)
        .await
        .map(|r| (r, ()))?;
    Ok(())
}

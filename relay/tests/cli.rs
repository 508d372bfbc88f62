//! The `duet-relay` binary: `token mint` on the embedded default key, config errors named
//! by field, and `serve` on embedded defaults printing its paths and draining on SIGTERM.

use std::time::Duration;

use duet_proto::{TokenKeyring, VerifyOptions, VerifyingKey};
use duet_testkit::{relay_command, RelayProcess};

/// The public key `token mint` generated next to its signing key in `dir`.
fn default_public_key(dir: &std::path::Path) -> VerifyingKey {
    let hex = std::fs::read_to_string(dir.join("token-key.pub")).unwrap();
    VerifyingKey::ed25519_from_hex("default", &hex).unwrap()
}

#[test]
fn token_mint_creates_the_default_key_and_signs_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay_command()
        .args([
            "token",
            "mint",
            "--session",
            "s1",
            "--user",
            "alice",
            "--device",
            "phone",
        ])
        .args(["--ttl", "10m", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("duet2.default."), "{token}");
    let now = duet_proto::clock::unix_now();
    let claims = TokenKeyring::new(vec![default_public_key(dir.path())])
        .verify(&token, &VerifyOptions::at(now))
        .unwrap();
    assert_eq!(claims.session.as_str(), "s1");
    assert!(claims.exp >= now + 590 && claims.exp <= now + 601);
}

/// Without `--e2ee`, the claim comes from the policy store: out of the box Global is
/// `disabled`; once the administrator allows user override and the user turns E2EE on,
/// the next token carries `allowed`.
#[test]
fn token_mint_evaluates_the_policy_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("policy");
    let mint = || {
        let out = relay_command()
            .args(["token", "mint", "--session", "s1", "--user", "bob"])
            .args(["--device", "laptop", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        TokenKeyring::new(vec![default_public_key(dir.path())])
            .verify(&token, &VerifyOptions::at(duet_proto::clock::unix_now()))
            .unwrap()
            .e2ee
    };
    assert_eq!(mint(), duet_proto::E2eeClaim::PolicyDisabled);
    let admin = |args: &[&str]| {
        let out = relay_command()
            .args(args)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    admin(&[
        "policy",
        "set",
        "Global",
        "--calling-e2ee",
        "disabled-user-override",
    ]);
    assert_eq!(mint(), duet_proto::E2eeClaim::UserNotEnabled);
    admin(&["user", "e2ee", "--user", "bob", "on"]);
    assert_eq!(mint(), duet_proto::E2eeClaim::Allowed);
    admin(&["user", "compliance-recording", "--user", "bob", "on"]);
    assert_eq!(mint(), duet_proto::E2eeClaim::ComplianceRecording);
}

#[test]
fn bad_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, "[limits]\nsignals_per_sec = 0\n").unwrap();
    let out = relay_command()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.signals_per_sec"), "{err}");

    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nlisten_port = 5\n").unwrap();
    let out = relay_command()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_port"), "{err}");
}

#[cfg(unix)]
#[test]
fn serve_on_embedded_defaults_prints_its_paths_and_drains_on_sigterm() {
    let mut relay = RelayProcess::builder()
        .args(["--drain-deadline-ms", "200"])
        .start()
        .unwrap();
    let seen = relay.banner();
    assert!(seen.contains("cert.pem"), "{seen}");
    assert!(seen.contains("token-key.pub"), "{seen}");
    assert!(seen.contains("quic"), "{seen}");
    let dir = relay.data_dir();
    assert!(dir.join("cert.pem").exists());
    assert!(dir.join("token-key.pub").exists());
    assert!(dir.join("token-signing-key").exists());
    // SIGTERM: drains (nothing to wait for) and exits cleanly.
    relay.sigterm().unwrap();
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// `serve` raises its soft open-file limit to the hard one (a shell's `ulimit -n` 256 under
/// a hard 4096: it serves with 4096, `process_max_fds` says so, the log names both) and
/// warns when the limit is below what `limits.max_sessions` is sized for. Before, the relay
/// ran with whatever soft limit it inherited, silently.
#[test]
fn serve_raises_its_open_file_limit_and_warns_when_it_is_short() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = duet_testkit::RelayProcess::builder()
        .nofile_soft_hard(256, 4096)
        .args(["--max-sessions", "100"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .start()
        .unwrap();
    let text = rt.block_on(duet_testkit::scrape(relay.addrs().ops));
    assert_eq!(duet_testkit::metric(&text, "process_max_fds"), 4096.0);
    let log = relay.stderr();
    assert!(
        log.contains("open-file limit") && log.contains("soft=4096") && log.contains("was=256"),
        "{log}"
    );
    assert!(!log.contains("below what limits.max_sessions"), "{log}");
    drop(relay);

    // Default max_sessions (10,000) wants 21,024 descriptors; a hard 512 cannot give them.
    let relay = duet_testkit::RelayProcess::builder()
        .nofile(512)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .start()
        .unwrap();
    // stderr is read on its own thread: the line may trail the banner a little.
    let t0 = std::time::Instant::now();
    while !relay.stderr().contains("wanted=") && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = relay.stderr();
    assert!(
        log.contains("below what limits.max_sessions") && log.contains("wanted=21024"),
        "{log}"
    );
}

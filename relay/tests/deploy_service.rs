//! The `duet-relay` binary as a supervised service (systemd unit, container image):
//! `Type=notify` readiness and stopping over a real `NOTIFY_SOCKET`, exit status 78 for a
//! bad configuration (the unit's `RestartPreventExitStatus=78`) but 1 for a busy port, and
//! the `healthcheck` subcommand the image's `HEALTHCHECK` runs.
#![cfg(unix)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use duet_proto::{ClientMessage, RelayMessage};
use duet_relay::healthcheck;
use duet_testkit::process::PROCESS_WAIT;
use duet_testkit::{relay_command, Raw, RelayProcess, RelayUnderTest, TestRelay};

fn recv_notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn get_status(ops: SocketAddr, path: &str) -> Option<u16> {
    match healthcheck::check(ops, path, Duration::from_secs(10)) {
        Ok(()) => Some(200),
        Err(healthcheck::HealthcheckError::Status { status, .. }) => Some(status),
        Err(_) => None,
    }
}

/// The real process: READY=1 arrives only once QUIC and ops listen; SIGTERM with a live
/// session gives STOPPING=1 while readiness is already false, and the process exits 0 once
/// the session ends.
#[test]
fn serve_sends_ready_when_listening_and_stopping_when_draining() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(PROCESS_WAIT)).unwrap();
    let mut relay = RelayProcess::builder()
        .args(["--fast-path-enabled", "false"])
        .args(["--drain-deadline-ms", "60000"])
        .env("NOTIFY_SOCKET", &sock_path)
        .start()
        .unwrap();

    let ready = recv_notification(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Listening already when READY=1 was sent: ops answers without any retry.
    let ops = relay.ops_addr();
    assert_eq!(get_status(ops, "/healthz"), Some(200));
    assert_eq!(get_status(ops, "/readyz"), Some(200));

    // One endpoint holds a session open, so the drain has something to wait for.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut endpoint = rt.block_on(async {
        let mut r = Raw::connect(&relay).await.expect("connect");
        let token = relay.token("drain-me", "alice", "phone");
        match r.join_raw("drain-me", token, None).await.expect("join") {
            RelayMessage::Joined(_) => r,
            other => panic!("expected Joined, got {other:?}"),
        }
    });

    relay.sigterm().unwrap();
    let stopping = recv_notification(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(stopping.contains("STATUS=draining"), "{stopping:?}");
    assert_eq!(
        get_status(ops, "/readyz"),
        Some(503),
        "readiness false at STOPPING=1"
    );
    assert_eq!(
        get_status(ops, "/healthz"),
        Some(200),
        "still alive while draining"
    );
    assert!(
        relay.try_wait().unwrap().is_none(),
        "waits for the live session"
    );

    rt.block_on(endpoint.send_msg(&ClientMessage::Leave))
        .expect("leave");
    let status = relay.wait_exit(PROCESS_WAIT).unwrap();
    assert!(status.success(), "{status:?}");
}

fn serve_status(args: &[&str], data: &std::path::Path) -> (Option<i32>, String) {
    let out = relay_command()
        .arg("serve")
        .args(["--ops-listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 78 (EX_CONFIG) for every kind of configuration mistake; 1 for a failure a restart can
/// fix (the QUIC port is taken), so the two are told apart by systemd.
#[test]
fn a_bad_configuration_exits_78_and_a_busy_port_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("relay.toml");
    let file = cfg.to_str().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("bad TOML", "listen = [", &["--config", file]),
        ("unknown field", "listen_port = 5\n", &["--config", file]),
        (
            "invalid field",
            "[limits]\nmax_sessions = 0\n",
            &["--config", file],
        ),
        (
            "unreadable token key file",
            "[[token_keys]]\nid = \"k1\"\nsecret_file = \"/nonexistent/duet/k1\"\n",
            &["--config", file],
        ),
        (
            "missing config file",
            "",
            &["--config", "/nonexistent/duet/relay.toml"],
        ),
        ("bad flag value", "", &["--listen", "not-an-address"]),
        ("unknown flag", "", &["--no-such-flag"]),
    ];
    for (what, toml, args) in cases {
        std::fs::write(&cfg, toml).unwrap();
        let (code, err) = serve_status(args, &data);
        assert_eq!(code, Some(78), "{what}: {err}");
    }

    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = serve_status(&["--listen", &addr, "--fast-path-enabled", "false"], &data);
    assert_eq!(code, Some(1), "busy port: {err}");
    assert!(err.contains("cannot bind QUIC"), "{err}");

    let out = relay_command().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "--help is not a failure");
}

fn healthcheck_status(ops: SocketAddr, timeout: &str) -> (Option<i32>, Duration) {
    let t0 = Instant::now();
    let out = relay_command()
        .args([
            "healthcheck",
            "--ops",
            &ops.to_string(),
            "--timeout",
            timeout,
        ])
        .output()
        .unwrap();
    (out.status.code(), t0.elapsed())
}

/// `duet-relay healthcheck`: 0 against a live relay (draining or not: liveness is not
/// readiness), 1 when nothing listens, and 1 within its timeout when the peer never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_exits_0_on_a_live_relay_and_1_otherwise() {
    let relay = TestRelay::start().await;
    let ops = relay.ops_addr();
    let live = tokio::task::spawn_blocking(move || healthcheck_status(ops, "10s"));
    assert_eq!(live.await.unwrap().0, Some(0));
    relay.drain();
    let draining = tokio::task::spawn_blocking(move || healthcheck_status(ops, "10s"));
    assert_eq!(draining.await.unwrap().0, Some(0), "alive while draining");

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let refused = tokio::task::spawn_blocking(move || healthcheck_status(closed_addr, "10s"));
    assert_eq!(refused.await.unwrap().0, Some(1), "nothing listens");

    // Accepts (the kernel's backlog does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hung = tokio::task::spawn_blocking(move || healthcheck_status(silent_addr, "300ms"));
    let (code, took) = hung.await.unwrap();
    assert_eq!(code, Some(1), "a silent peer fails the check");
    assert!(
        took < Duration::from_secs(30),
        "bounded by --timeout: {took:?}"
    );
    drop(silent);
}

/// The value of `key` in a systemd unit (`Key=value`) or a YAML manifest (`key: value`).
fn setting(text: &str, key: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(':')))
        })
        .unwrap_or_else(|| panic!("{key} not set"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// The configs shipped in deploy/ are valid relay configs, and what the unit and the
/// StatefulSet promise about them holds: the stop timeout outlasts the longest drain
/// (deadline, then up to 2 s for sessions to be ended and 2 s for QUIC to close, see
/// `RelayHandle::drained` and `shutdown`) and the descriptor limit covers one per endpoint
/// at the session cap plus 1,024.
#[test]
fn deploy_configs_are_valid_and_their_stop_timeouts_outlast_the_drain() {
    use duet_relay::Config;
    let unit = include_str!("../../deploy/systemd/duet-relay.service");
    let sts = include_str!("../../deploy/kubernetes/base/statefulset.yaml");
    for (path, text, grace) in [
        (
            "deploy/systemd/relay.toml",
            include_str!("../../deploy/systemd/relay.toml"),
            setting(unit, "TimeoutStopSec"),
        ),
        (
            "deploy/kubernetes/base/relay.toml",
            include_str!("../../deploy/kubernetes/base/relay.toml"),
            setting(sts, "terminationGracePeriodSeconds"),
        ),
    ] {
        let cfg = Config::from_toml(text, std::path::Path::new(path)).expect(path);
        cfg.validate().expect(path);
        assert_eq!(cfg.listen, "0.0.0.0:4433".parse().unwrap(), "{path}");
        let longest_drain = cfg.drain_deadline_ms / 1000 + 2 + 2;
        assert!(
            grace > longest_drain,
            "{path}: stop timeout {grace} s must exceed the drain's {longest_drain} s"
        );
        if path.contains("systemd") {
            assert_eq!(cfg.data_dir, std::path::Path::new("/var/lib/duet-relay"));
            let nofile = setting(unit, "LimitNOFILE");
            assert!(
                nofile >= 2 * u64::from(cfg.limits.max_sessions) + 1024,
                "LimitNOFILE {nofile}"
            );
        }
    }
    assert!(unit.contains("RestartPreventExitStatus=78\n"));
    assert_eq!(duet_relay::exit_status::CONFIG, 78);
}

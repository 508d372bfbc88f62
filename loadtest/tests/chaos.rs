//! `--chaos`: a relay process SIGKILLed mid-run, with calls spread over two nodes. The
//! report must say the kill was done and when; the killed node's calls fail over to the
//! other node (their tokens list both) and go on, and `media_gap` shows what that cost
//! beside the calls that never moved.

mod common;

use duet_loadtest::report::Report;
use duet_testkit::fleet::Fleet;
use duet_testkit::RelayUnderTest;

#[test]
fn a_relay_killed_mid_run_moves_its_calls_and_reports_the_media_gap() {
    let fleet = Fleet::start(2, |b| b).unwrap();
    let (n1, n2) = (&fleet.nodes[0], &fleet.nodes[1]);
    let report = fleet.dir().join("r.json");
    let out = common::bin()
        .args(["--calls", "8", "--duration", "5s", "--profile", "audio"])
        .args(["--ramp", "100/s", "--run-id", "chaos1", "--progress", "off"])
        .args(["--grace", "5s", "--drain", "500ms"])
        .args(["--idle-timeout", "1s", "--keep-alive", "250ms"])
        .arg("--relay")
        .arg(format!("n1={}", n1.quic_addr()))
        .arg("--relay")
        .arg(format!("n2={}", n2.quic_addr()))
        .arg("--cert")
        .arg(n1.data_dir().join("cert.pem"))
        .arg("--token-key-file")
        .arg(n1.data_dir().join("token-signing-key"))
        .arg("--chaos")
        .arg(format!("kill:{}@2s", n1.pid()))
        .arg("--chaos")
        .arg(format!("drain:{}@3s", n2.ops_addr()))
        .arg("--ops-token-file")
        .arg(fleet.ops_token_file())
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r = Report::from_json(
        &std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report ({e}): {stderr}")),
    )
    .unwrap();
    assert_eq!(r.chaos.len(), 2, "{:?}", r.chaos);
    let (kill, drain) = (&r.chaos[0], &r.chaos[1]);
    assert!(
        kill.ok && kill.spec.starts_with("kill:") && kill.at_s >= 2.0,
        "{kill:?}"
    );
    assert!(
        drain.ok && drain.spec.starts_with("drain:") && drain.at_s >= 3.0,
        "{drain:?}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, _) = rt
        .block_on(duet_testkit::http_get(n2.ops_addr(), "/readyz"))
        .unwrap();
    assert_eq!(status, 503, "a drained node is not ready");
    let on = |n: &str| r.calls.per_node.get(n).copied().unwrap_or(0);
    assert!(on("n1") > 0 && on("n2") > 0, "{:?}", r.calls.per_node);
    // Every receiving endpoint recorded its longest silence; audio frames come every 20 ms,
    // so the survivors' gaps are short; the killed node's calls went silent for at least the
    // SDK's dead-relay floor (500 ms of owed silence) but well under the old idle-timeout
    // recovery (2 s and more with a 1 s idle timeout).
    assert_eq!(
        r.media_gap.count,
        2 * r.calls.established,
        "{:?}",
        r.media_gap
    );
    let gaps = r.media_gap.hist().unwrap();
    let survivors = on("n2") as f64 / r.calls.established as f64;
    let (low, high) = (survivors * 0.9, 1.0 - (1.0 - survivors) * 0.9);
    assert!(gaps.quantile_us(low) < 500_000, "{:?}", r.media_gap);
    assert!(gaps.quantile_us(high) > 400_000, "{:?}", r.media_gap);
    assert!(gaps.quantile_us(high) < 1_500_000, "{:?}", r.media_gap);
}

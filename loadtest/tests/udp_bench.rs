//! `duet-loadtest udp` against an in-test forwarder speaking the C baseline's protocol (what
//! `fwd.c` does: 8-byte session id, the first two source addresses pair up, forward
//! unchanged): zero loss at a low rate, a report with the documented fields, and argument
//! errors exit 2. Real loopback sockets, bounded in time, no timing asserts.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use duet_loadtest::udpbench::{UdpReport, UDP_SCHEMA};

/// A tiny `fwd.c`: one socket, pairs by the first two source addresses per session id.
struct Fwd {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fwd {
    fn start() -> Fwd {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), forwarded.clone());
        let thread = std::thread::spawn(move || {
            let mut pairs: HashMap<u64, Vec<SocketAddr>> = HashMap::new();
            let mut buf = [0u8; 2048];
            while !s.load(Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 8 {
                    continue;
                }
                let id = u64::from_be_bytes(buf[..8].try_into().unwrap());
                let m = pairs.entry(id).or_default();
                let dst = match m.iter().position(|a| *a == from) {
                    Some(i) => m.get(1 - i).copied(),
                    None if m.len() < 2 => {
                        m.push(from);
                        (m.len() == 2).then(|| m[0])
                    }
                    None => None,
                };
                if let Some(d) = dst {
                    if sock.send_to(&buf[..n], d).is_ok() {
                        f.fetch_add(1, Relaxed);
                    }
                }
            }
        });
        Fwd {
            addr,
            stop,
            forwarded,
            thread: Some(thread),
        }
    }
}

impl Drop for Fwd {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `duet-loadtest udp` for 1 s against `fwd`, measuring this test process as the
/// forwarder, with `args` and the report written to `report`.
fn udp_baseline(fwd: &Fwd, args: &[&str], report: &std::path::Path) -> std::process::Output {
    common::bin()
        .args(["udp", "--duration", "1s"])
        .args(args)
        .arg("--target")
        .arg(format!("baseline={}", fwd.addr))
        .args(["--relay-pid", &std::process::id().to_string(), "--report"])
        .arg(report)
        .output()
        .unwrap()
}

#[test]
fn baseline_target_delivers_everything_and_reports() {
    let fwd = Fwd::start();
    let (_dir, path) = common::tmp("udp.json");
    let out = udp_baseline(
        &fwd,
        &["--pairs", "4", "--pps", "400", "--size", "160"],
        &path,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("RESULT ")).unwrap();
    for key in [
        "offered_pps=",
        "recv_pps=",
        "loss_pct=",
        "p50_us=",
        "p99_us=",
        "p999_us=",
        "max_us=",
        "relay_cpu_us_per_pkt=",
        "loadgen_cpu_s=",
    ] {
        assert!(line.contains(key), "{key} missing in {line}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let r: UdpReport = serde_json::from_str(&text).unwrap();
    assert_eq!(r.schema, UDP_SCHEMA);
    assert_eq!(
        (r.target.as_str(), r.pairs, r.endpoints),
        ("baseline", 4, 8)
    );
    assert_eq!(r.stop_reason, "completed");
    assert_eq!(r.setup.hellos_back, Some(4));
    assert_eq!(r.setup.pairs_ready, 4);
    assert!(r.sent > 0);
    assert_eq!(r.received, r.sent, "{line}");
    assert_eq!(r.bad, 0);
    assert_eq!(r.loss_pct, 0.0);
    assert_eq!(r.received_bytes, r.received * 160);
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    let h = duet_loadtest::hist::Hist::from_base64(&r.latency_us.histogram).unwrap();
    assert_eq!(h.count(), r.received);
    let relay = r.relay.as_ref().unwrap();
    assert!(relay.cpu_s.is_some() && relay.cpu_us_per_packet.is_some());
    // Hellos (4: B's to A) plus every media packet went through the forwarder.
    assert_eq!(fwd.forwarded.load(Relaxed), r.received + 4);
    // Every documented field is in the JSON, and nothing undocumented.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md")).unwrap();
    let section = doc
        .split("## udp report")
        .nth(1)
        .expect("REPORT.md: udp report section");
    let mut fields = Vec::new();
    collect(&v, "", &mut fields);
    for f in &fields {
        assert!(
            section.contains(&format!("| `{f}` |")),
            "field {f} not documented in REPORT.md's udp report section"
        );
    }
}

fn collect(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_json::Value::Object(m) = v {
        for (k, x) in m {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if matches!(x, serde_json::Value::Object(_)) && k != "failures" {
                collect(x, &name, out);
            }
            out.push(name);
        }
    }
}

/// Several generator workers: pairs split across them, loss and latency still exact (every
/// packet the pacers sent arrives once, the merged histogram holds every sample).
#[test]
fn baseline_target_with_threads_merges_exactly() {
    for addressing in ["ports", "ips"] {
        baseline_with_threads(addressing);
    }
}

fn baseline_with_threads(addressing: &str) {
    let fwd = Fwd::start();
    let (_dir, path) = common::tmp("udp.json");
    let args = [
        "--pairs",
        "6",
        "--pps",
        "600",
        "--size",
        "100",
        "--threads",
        "3",
    ];
    let out = udp_baseline(
        &fwd,
        &[&args[..], &["--addressing", addressing]].concat(),
        &path,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" threads=3 "), "{stdout}");
    let r: UdpReport = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!((r.threads, r.setup.pairs_ready), (3, 6));
    assert!(r.sent > 0);
    assert_eq!(r.received, r.sent, "{stdout}");
    assert_eq!(r.bad, 0);
    let h = duet_loadtest::hist::Hist::from_base64(&r.latency_us.histogram).unwrap();
    assert_eq!(h.count(), r.received);
    assert_eq!(fwd.forwarded.load(Relaxed), r.received + 6);
    assert!(r.generator_kept_up && r.generator_window_cpu_s.is_some());
}

/// Two generator processes at once against one forwarder, then `merge`: counters and
/// pairs add, the histograms add exactly, the forwarder's CPU is one reading (not a sum),
/// and reports of different loads are refused.
#[test]
fn reports_of_generators_run_at_once_merge() {
    let fwd = Fwd::start();
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id().to_string();
    let gens: Vec<_> = [("a", "4", "ports"), ("b", "2", "ips")]
        .into_iter()
        .map(|(name, pairs, addressing)| {
            let path = dir.path().join(format!("{name}.json"));
            let child = common::bin()
                .args(["udp", "--pairs", pairs, "--pps", "400", "--duration", "1s"])
                .args(["--size", "120", "--addressing", addressing, "--target"])
                .arg(format!("baseline={}", fwd.addr))
                .args(["--relay-pid", &pid, "--report"])
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (path, child)
        })
        .collect();
    let mut parts = Vec::new();
    for (path, mut child) in gens {
        assert_eq!(child.wait().unwrap().code(), Some(0));
        let r: UdpReport = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        parts.push((path, r));
    }
    let merged = dir.path().join("m.json");
    let out = common::bin()
        .arg("merge")
        .args(parts.iter().map(|(p, _)| p))
        .arg("-o")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("RESULT "));
    let m: UdpReport = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    let (a, b) = (&parts[0].1, &parts[1].1);
    assert_eq!((m.pairs, m.setup.pairs_ready), (6, 6));
    assert_eq!(m.sent, a.sent + b.sent);
    assert_eq!(m.received, a.received + b.received);
    assert_eq!(m.received, m.sent);
    assert_eq!(m.target_pps, 800.0);
    assert_eq!(m.addressing, "mixed");
    let h = duet_loadtest::hist::Hist::from_base64(&m.latency_us.histogram).unwrap();
    assert_eq!(h.count(), m.received);
    assert!(m.latency_us.max >= a.latency_us.max.max(b.latency_us.max));
    let cpu = |r: &UdpReport| r.relay.as_ref().and_then(|x| x.cpu_s).unwrap();
    assert_eq!(cpu(&m), cpu(a).max(cpu(b)));
    assert_eq!(fwd.forwarded.load(Relaxed), m.received + 6);
    // Different sizes measured different things: refused.
    let mut other = b.clone();
    other.size_bytes = 200;
    let odd = dir.path().join("odd.json");
    std::fs::write(&odd, serde_json::to_string(&other).unwrap()).unwrap();
    let out = common::bin()
        .arg("merge")
        .arg(&parts[0].0)
        .arg(&odd)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("size_bytes"));
}

#[test]
fn idle_mode_sets_up_pairs_and_sends_no_media() {
    let fwd = Fwd::start();
    let out = common::bin()
        .args(["udp", "--idle", "--pairs", "3", "--duration", "200ms"])
        .arg("--target")
        .arg(format!("baseline={}", fwd.addr))
        .args(["--relay-pid", &std::process::id().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ready_pairs=3") && stdout.contains(" sent=0 "),
        "{stdout}"
    );
}

#[test]
fn udp_argument_errors_exit_2() {
    for args in [
        vec!["udp"],
        vec!["udp", "--target", "nowhere"],
        vec!["udp", "--target", "other=127.0.0.1:1"],
        vec!["udp", "--target", "baseline=[::1]:1"],
        vec!["udp", "--target", "baseline=127.0.0.1:1", "--pairs", "0"],
        vec!["udp", "--target", "baseline=127.0.0.1:1", "--pps", "0"],
        vec!["udp", "--target", "baseline=127.0.0.1:1", "--size", "10"],
        // 20 bytes: fits quic's 2-byte header + probe, not baseline's 8-byte session id.
        vec!["udp", "--target", "baseline=127.0.0.1:1", "--size", "20"],
        vec![
            "udp",
            "--target",
            "baseline=127.0.0.1:1",
            "--duration",
            "11m",
        ],
        vec!["udp", "--target", "fastpath=127.0.0.1:1"],
        vec!["udp", "--target", "quic=127.0.0.1:1", "--cert", "c.pem"],
        vec![
            "udp",
            "--target",
            "baseline=127.0.0.1:1",
            "--token-key-file",
            "k",
        ],
        // turn: credentials required, no relay access files, at most 4 minutes.
        vec!["udp", "--target", "turn=127.0.0.1:1"],
        vec!["udp", "--target", "turn=127.0.0.1:1", "--turn-user", "u"],
        vec![
            "udp",
            "--target",
            "turn=127.0.0.1:1",
            "--turn-user",
            "u:p",
            "--duration",
            "5m",
        ],
        vec![
            "udp",
            "--target",
            "turn=127.0.0.1:1",
            "--turn-user",
            "u:p",
            "--cert",
            "c.pem",
        ],
        vec![
            "udp",
            "--target",
            "baseline=127.0.0.1:1",
            "--turn-user",
            "u:p",
        ],
        vec!["udp", "--target", "baseline=127.0.0.1:1", "--threads", "0"],
        vec![
            "udp",
            "--target",
            "baseline=127.0.0.1:1",
            "--addressing",
            "other",
        ],
        // quic is paced by one thread through the SDK.
        vec![
            "udp",
            "--target",
            "quic=127.0.0.1:1",
            "--cert",
            "c.pem",
            "--token-key-file",
            "k",
            "--threads",
            "2",
        ],
    ] {
        let out = common::bin().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

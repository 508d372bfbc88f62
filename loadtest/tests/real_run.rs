//! Short real runs against the embedded relay: real SDK clients over real QUIC on loopback.

mod common;

use std::time::{Duration, Instant};

use duet_loadtest::report::{Report, StopReason};

#[test]
fn three_calls_for_two_seconds() {
    let (_dir, path) = common::tmp("run.json");
    let t = Instant::now();
    let out = common::bin()
        .args([
            "--calls",
            "3",
            "--duration",
            "2s",
            "--profile",
            "video",
            "--seed",
            "7",
        ])
        .args(["--progress", "plain", "--report"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(t.elapsed() < Duration::from_secs(30), "bounded in time");
    let r = Report::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(!r.partial);
    assert_eq!(r.stop_reason, StopReason::Completed);
    assert_eq!(r.calls.established, 3, "{:?}", r.calls);
    assert_eq!(r.calls.by_transport.get("quic"), Some(&3), "{:?}", r.calls);
    assert_eq!(r.calls.failed, 0);
    assert_eq!(r.join.count, 6, "both endpoints of every call joined");
    assert!(r.config.embedded_relay);
    assert!(r.config.e2ee && r.config.e2ee_active, "E2EE by default");
    for (kind, k) in [("audio", &r.media.audio), ("video", &r.media.video)] {
        assert!(k.frames_received > 0, "{kind}: nothing received");
        assert!(k.loss_ratio < 0.02, "{kind}: loss {}", k.loss_ratio);
        assert_eq!(k.misrouted, 0);
        assert!(k.latency.count > 0 && k.latency.p50_ms > 0.0);
        assert!(k.latency.p99_ms < 1000.0, "{kind} p99 {}", k.latency.p99_ms);
    }
    // Video frames are split into several datagrams, each within the relay's path.
    assert!(r.media.video.datagrams_sent > r.media.video.frames_sent);
    assert!(r.transport.max_datagram_bytes > 0 && r.transport.max_datagram_bytes <= 1200);
    assert_eq!(r.media.screen.frames_sent, 0);
    let relay = &r.relays[0];
    assert_eq!(relay.source, "embedded");
    assert_eq!(relay.sessions_peak, Some(3));
    assert!(relay.forwarded_packets.unwrap() > 0);
    assert!(relay.cpu_seconds.is_some());
    // Progress went to stderr as plain lines; the summary to stdout.
    assert!(stderr.contains("calls 3/3 up"), "{stderr}");
    assert!(stdout.contains("established"), "{stdout}");
}

#[test]
fn a_hard_deadline_aborts_and_marks_the_report_partial() {
    // Zero grace: the drain after the last frame cannot fit, so the deadline hits.
    let (_dir, path) = common::tmp("deadline.json");
    let out = common::bin()
        .args([
            "--calls",
            "2",
            "--duration",
            "1s",
            "--profile",
            "audio",
            "--grace",
            "0s",
        ])
        .args(["--drain", "2s", "--progress", "off", "--report"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Report::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(r.partial);
    assert_eq!(r.stop_reason, StopReason::Deadline);
    assert_eq!(r.calls.established, 2);
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_cleanly_with_a_partial_report() {
    let (_dir, path) = common::tmp("partial.json");
    let mut child = common::bin()
        .args([
            "--calls",
            "6",
            "--duration",
            "60s",
            "--ramp",
            "1/s",
            "--profile",
            "mixed",
        ])
        .args(["--progress", "off", "--report"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("did not stop within 15 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let r = Report::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(r.partial);
    assert_eq!(r.stop_reason, StopReason::Interrupted);
    assert!(
        r.calls.attempted < 6,
        "stopped during the ramp: {:?}",
        r.calls
    );
    assert!(r.calls.established >= 1);
    assert!(r.media.audio.frames_received > 0);
}

#[test]
fn fast_path_transport_reports_calls_per_transport() {
    let (_dir, path) = common::tmp("fp.json");
    let out = common::bin()
        .args(["--calls", "2", "--duration", "1s", "--profile", "audio"])
        .args(["--transport", "fast-path", "--progress", "off", "--report"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Report::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(r.config.transport, "fast-path");
    assert_eq!(r.calls.established, 2, "{:?}", r.calls);
    // Each call is counted once, under the transport its endpoints ended on.
    assert_eq!(
        r.calls.by_transport.values().sum::<u64>(),
        2,
        "{:?}",
        r.calls
    );
    assert!(r
        .calls
        .by_transport
        .keys()
        .all(|k| ["quic", "fast_path", "mixed"].contains(&k.as_str())));
    assert!(stdout.contains("calls by transport:"), "{stdout}");
}

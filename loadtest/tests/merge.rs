//! Merging reports: percentiles of the merge equal those of one histogram fed every sample;
//! counters add; the `merge` subcommand works end to end.

mod common;

use duet_loadtest::merge::{merge, MergeError};
use duet_loadtest::report::{Report, StopReason};

#[test]
fn merged_percentiles_are_those_of_all_samples() {
    let a = common::samples(11, 5000, 20_000);
    // A second generator with a very different distribution: averaging percentiles would be
    // far off, merging histograms is exact.
    let b: Vec<u64> = common::samples(12, 1000, 200_000)
        .into_iter()
        .map(|v| v + 50_000)
        .collect();
    let ja = common::samples(13, 40, 5_000);
    let jb = common::samples(14, 10, 90_000);
    let ra = common::report_with(&a, &ja, 5100, "ga");
    let rb = common::report_with(&b, &jb, 1000, "gb");
    let m = merge(&[ra.clone(), rb.clone()]).unwrap();

    let all: Vec<u64> = a.iter().chain(&b).copied().collect();
    let one = common::hist_of(&all).summary().unwrap();
    let lat = &m.media.audio.latency;
    assert_eq!(lat.count, 6000);
    for (got, want) in [
        (lat.p50_ms, one.p50_ms),
        (lat.p90_ms, one.p90_ms),
        (lat.p99_ms, one.p99_ms),
        (lat.p999_ms, one.p999_ms),
        (lat.max_ms, one.max_ms),
        (lat.mean_ms, one.mean_ms),
    ] {
        assert_eq!(got, want);
    }
    assert_eq!(m.media.audio.latency.hist().unwrap(), common::hist_of(&all));
    // `all` is derived from the kinds.
    assert_eq!(m.media.all.latency.p99_ms, one.p99_ms);
    let joins: Vec<u64> = ja.iter().chain(&jb).copied().collect();
    assert_eq!(
        m.join.p99_ms,
        common::hist_of(&joins).summary().unwrap().p99_ms
    );
    // Not an average of percentiles.
    let avg = (ra.media.audio.latency.p99_ms + rb.media.audio.latency.p99_ms) / 2.0;
    assert_ne!(lat.p99_ms, avg);

    // Counters add, loss is recomputed from the sums.
    assert_eq!(m.generators, 2);
    assert_eq!(m.media.audio.frames_sent, 6100);
    assert_eq!(m.media.audio.frames_received, 6000);
    assert!((m.media.audio.loss_ratio - 100.0 / 6100.0).abs() < 1e-6);
    assert_eq!(m.calls.established, 18);
    assert_eq!(m.calls.failed_by_reason.get("session_full"), Some(&2));
    assert_eq!(
        m.relays.len(),
        2,
        "relay observations are kept side by side"
    );
    assert_eq!(m.config.run_id, "ga+gb");
    assert_eq!(m.config.calls, 20);
}

#[test]
fn merge_is_order_independent_and_keeps_the_worst_stop() {
    let a = common::report_with(&common::samples(1, 300, 9000), &[1000], 300, "a");
    let mut b = common::report_with(&common::samples(2, 300, 9000), &[2000], 310, "b");
    b.partial = true;
    b.stop_reason = StopReason::Interrupted;
    let ab = merge(&[a.clone(), b.clone()]).unwrap();
    let ba = merge(&[b, a]).unwrap();
    assert_eq!(ab.media.audio.latency, ba.media.audio.latency);
    assert_eq!(ab.media.all, ba.media.all);
    assert!(ab.partial && ba.partial);
    assert_eq!(ab.stop_reason, StopReason::Interrupted);
    assert!(matches!(merge(&[]), Err(MergeError::Empty)));
}

#[test]
fn merge_subcommand_writes_the_merged_report() {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.json");
    let pb = dir.path().join("b.json");
    let out = dir.path().join("merged.json");
    let a = common::report_with(&common::samples(5, 800, 15_000), &[1500, 2500], 800, "a");
    let b = common::report_with(&common::samples(6, 400, 40_000), &[3500], 410, "b");
    std::fs::write(&pa, a.to_json().unwrap()).unwrap();
    std::fs::write(&pb, b.to_json().unwrap()).unwrap();
    let st = common::bin()
        .args(["merge"])
        .arg(&pa)
        .arg(&pb)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let m = Report::from_json(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(m, merge(&[a, b]).unwrap());

    // A merge can be checked against an SLO: exit 3 when missed.
    let st = common::bin()
        .args(["merge", "--slo", "p99<1ms"])
        .arg(&pa)
        .arg(&pb)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(3));
    let printed = Report::from_json(&String::from_utf8_lossy(&st.stdout)).unwrap();
    assert!(!printed.slo.unwrap().passed);

    // An unreadable input is an error naming the file.
    std::fs::write(&pb, "{not json").unwrap();
    let st = common::bin()
        .arg("merge")
        .arg(&pa)
        .arg(&pb)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&st.stderr).contains("b.json"));
}

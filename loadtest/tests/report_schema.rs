//! The report's schema: JSON roundtrip, required fields, and REPORT.md documenting exactly
//! the fields a report has.

mod common;

use std::collections::BTreeSet;

use duet_loadtest::report::{Report, ReportError, SCHEMA_VERSION};
use duet_loadtest::slo::SloSpec;
use serde_json::Value;

fn full_report() -> Report {
    let mut r = common::report_with(&common::samples(1, 500, 30_000), &[2000, 3000], 520, "x1");
    // A failing SLO, so every slo field is present.
    let spec: SloSpec = "p99<1ms,loss<0.1%".parse().unwrap();
    r.slo = Some(spec.evaluate(&r));
    // A chaos action that failed, so every chaos field is present.
    r.chaos = vec![duet_loadtest::chaos::ChaosEvent {
        spec: "drain:127.0.0.1:1@1s".into(),
        at_s: 1.0,
        ok: false,
        error: "connection refused".into(),
    }];
    r
}

#[test]
fn roundtrips_through_json() {
    let r = full_report();
    let json = r.to_json().unwrap();
    let back = Report::from_json(&json).unwrap();
    assert_eq!(back, r);
    // Histograms come back whole: the same percentiles when re-derived.
    let mut again = back.clone();
    again.finalize().unwrap();
    assert_eq!(again.media.all.latency, r.media.all.latency);
}

#[test]
fn required_fields_are_present() {
    let v: Value = serde_json::from_str(&full_report().to_json().unwrap()).unwrap();
    for ptr in [
        "/schema_version",
        "/partial",
        "/stop_reason",
        "/config/e2ee",
        "/config/e2ee_active",
        "/calls/established",
        "/calls/failed_by_reason",
        "/join/p50_ms",
        "/join/p99_ms",
        "/join/hdr",
        "/media/audio/loss_ratio",
        "/media/audio/latency/p999_ms",
        "/media/audio/jitter/mean_ms",
        "/media/all/frames_sent",
        "/relays/0/memory_per_session_bytes",
        "/relays/0/cpu_seconds",
        "/slo/passed",
        "/slo/violations/0/clause",
    ] {
        assert!(v.pointer(ptr).is_some(), "missing {ptr}");
    }
    assert_eq!(v["schema_version"], SCHEMA_VERSION);
    assert_eq!(v["stop_reason"], "completed");
    assert!(v["join"]["hdr"].as_str().unwrap().starts_with("HISTF"));
    // (20 - 10) MiB / 9 sessions.
    let per = v["relays"][0]["memory_per_session_bytes"].as_f64().unwrap();
    assert!((per - (10 << 20) as f64 / 9.0).abs() < 1.0);
}

#[test]
fn newer_schema_and_garbage_are_refused_clearly() {
    let mut v: Value = serde_json::from_str(&full_report().to_json().unwrap()).unwrap();
    v["schema_version"] = Value::from(SCHEMA_VERSION + 1);
    let e = Report::from_json(&v.to_string()).unwrap_err();
    assert!(matches!(e, ReportError::NewerSchema(_)), "{e}");
    assert!(Report::from_json("{\"schema_version\":1}").is_err());
    // Unknown extra fields are fine (forward compatible).
    let mut v: Value = serde_json::from_str(&full_report().to_json().unwrap()).unwrap();
    v["some_future_field"] = Value::from(1);
    assert!(Report::from_json(&v.to_string()).is_ok());
}

const MAPS: &[&str] = &[
    "failed_by_reason",
    "dropped_by_reason",
    "per_node",
    "by_transport",
    "media_dropped",
    "refusals",
];
const HISTS: &[&str] = &["join", "latency", "jitter", "send_lag", "media_gap"];

/// Every field path of `v`, normalized like REPORT.md writes them.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let p = p
                    .replace("media.audio", "media.<kind>")
                    .replace("media.video", "media.<kind>")
                    .replace("media.screen", "media.<kind>")
                    .replace("media.all", "media.<kind>");
                if HISTS.contains(&prefix.rsplit('.').next().unwrap_or("")) {
                    out.insert(format!("<histogram>.{k}"));
                    continue;
                }
                out.insert(p.clone());
                if !MAPS.contains(&k.as_str()) {
                    paths(child, &p, out);
                }
            }
        }
        Value::Array(a) => {
            if let Some(first) = a.first() {
                if first.is_object() {
                    paths(first, &format!("{prefix}[]"), out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn report_md_documents_every_field_and_no_other() {
    let v: Value = serde_json::from_str(&full_report().to_json().unwrap()).unwrap();
    let mut actual = BTreeSet::new();
    paths(&v, "", &mut actual);
    assert!(actual.len() > 80, "walked too few fields: {actual:?}");
    assert!(actual.contains("<histogram>.hdr") && actual.contains("relays[].note"));
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md")).unwrap();
    // The `udp` subcommand's report has its own section (checked in udp_bench.rs).
    let md = md.split("\n## udp report").next().unwrap_or(&md);
    let documented: BTreeSet<String> = md
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(f, _)| f.to_owned())
        .collect();
    let undocumented: Vec<_> = actual.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&actual).collect();
    assert!(
        undocumented.is_empty(),
        "fields missing from REPORT.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "REPORT.md documents fields reports do not have: {stale:?}"
    );
}

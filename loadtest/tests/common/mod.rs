//! Helpers shared by the integration tests: synthetic reports and the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use duet_loadtest::hist::Hist;
use duet_loadtest::report::{
    kind_report, CallsReport, GeneratorReport, KindCounts, MediaReport, RelayReport, Report,
    RunConfig, StopReason, TransportReport, SCHEMA_VERSION,
};

pub fn hist_of(values: &[u64]) -> Hist {
    let mut h = Hist::new();
    for v in values {
        h.record(*v);
    }
    h
}

/// A small deterministic pseudo-random sample set (xorshift), values in µs.
pub fn samples(seed: u64, n: usize, max_us: u64) -> Vec<u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + x % max_us
        })
        .collect()
}

/// A report of one generator whose audio latencies are `lat` (µs) and join times `join`.
pub fn report_with(lat: &[u64], join: &[u64], sent: u64, run_id: &str) -> Report {
    let counts = KindCounts {
        frames_sent: sent,
        bytes_sent: sent * 150,
        datagrams_sent: sent,
        frames_received: lat.len() as u64,
        bytes_received: lat.len() as u64 * 150,
        datagrams_received: lat.len() as u64,
        out_of_order: 0,
        misrouted: 0,
    };
    let audio = kind_report(counts, &hist_of(lat), &hist_of(&lat[1..])).unwrap();
    let empty = kind_report(KindCounts::default(), &Hist::new(), &Hist::new()).unwrap();
    let mut r = Report {
        schema_version: SCHEMA_VERSION,
        tool: "duet-loadtest test".into(),
        generators: 1,
        started_unix_ms: 1_700_000_000_000,
        elapsed_s: 12.5,
        partial: false,
        stop_reason: StopReason::Completed,
        config: RunConfig {
            profile: "audio".into(),
            calls: 10,
            duration_s: 10.0,
            ramp_per_s: 50.0,
            seed: 1,
            run_id: run_id.into(),
            e2ee: true,
            e2ee_active: false,
            transport: "quic-datagram".into(),
            embedded_relay: false,
            relays: vec!["n1=127.0.0.1:4433".into()],
            grace_s: 10.0,
        },
        calls: CallsReport {
            planned: 10,
            attempted: 10,
            established: 9,
            failed: 1,
            migrated: 0,
            failed_by_reason: BTreeMap::from([("session_full".to_owned(), 1)]),
            dropped_by_reason: BTreeMap::new(),
            peak_concurrent: 9,
            per_node: BTreeMap::from([("n1".to_owned(), 9)]),
            by_transport: BTreeMap::from([("quic".to_owned(), 9)]),
        },
        join: hist_of(join).summary().unwrap(),
        media_gap: hist_of(&[20_000, 25_000, 900_000]).summary().unwrap(),
        chaos: Vec::new(),
        media: MediaReport {
            audio,
            video: empty.clone(),
            screen: empty,
            all: Default::default(),
        },
        transport: TransportReport {
            datagrams_sent: sent,
            datagrams_received: lat.len() as u64,
            max_datagram_bytes: 1162,
            ..Default::default()
        },
        generator: GeneratorReport {
            cpu_seconds: Some(1.5),
            client_threads: 2,
            quic_endpoints: 2,
            tls_resumption: false,
            send_lag: hist_of(&[10, 20, 30]).summary().unwrap(),
        },
        relays: vec![RelayReport {
            name: "pid:1".into(),
            source: "proc".into(),
            cpu_seconds: Some(2.0),
            rss_start_bytes: Some(10 << 20),
            rss_peak_bytes: Some(20 << 20),
            memory_scope: Some("relay_process".into()),
            sessions_peak: Some(9),
            forwarded_packets: Some(1000),
            forwarded_bytes: Some(150_000),
            media_dropped: BTreeMap::from([("rate_limited".to_owned(), 2)]),
            refusals: BTreeMap::from([("session_full".to_owned(), 1)]),
            note: "test".into(),
            ..Default::default()
        }],
        warnings: vec!["a warning".into()],
        slo: None,
    };
    r.finalize().unwrap();
    r
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_duet-loadtest"))
}

pub fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    (dir, p)
}

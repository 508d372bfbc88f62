//! `duet-loadtest merge`: one report from the reports of several generators. Sans-IO.
//!
//! Owns the rule that counters add and histograms merge exactly (the stored HdrHistograms
//! are added, then percentiles recomputed), so the merged p99 is the p99 of every sample of
//! every generator. Relay observations are kept side by side (each generator saw its own
//! relays; their figures do not add). The per-field rules of call reports live in
//! [`Report::absorb`]; those of udp reports (`duet-loadtest udp`, several generator
//! processes run at once against one forwarder) in [`merge_udp`]. This module owns the
//! entry points and their errors. It does not read files (the binary does).

use crate::hist::{Hist, HistError};
use crate::report::{Report, ReportError};
use crate::udpbench::{LatencyUs, RelayUdp, UdpReport, UDP_SCHEMA};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge: give at least one report")]
    Empty,
    #[error("report {index}: {source}")]
    Report { index: usize, source: ReportError },
    #[error("udp report {index}: {field} differs from the first report's: they measured different things")]
    UdpMismatch { index: usize, field: &'static str },
    #[error("udp report {index}: latency histogram: {source}")]
    UdpHistogram { index: usize, source: HistError },
}

/// Merges `reports` in order. The result is finalized; its `slo` is cleared (re-check it).
pub fn merge(reports: &[Report]) -> Result<Report, MergeError> {
    let (first, rest) = reports.split_first().ok_or(MergeError::Empty)?;
    let mut out = first.clone();
    out.slo = None;
    out.finalize()
        .map_err(|source| MergeError::Report { index: 0, source })?;
    for (i, r) in rest.iter().enumerate() {
        out.absorb(r).map_err(|source| MergeError::Report {
            index: i + 1,
            source,
        })?;
    }
    Ok(out)
}

/// Merges udp reports of generators run at the same time against the same forwarder
/// (`target`, its address, `--size` and `--idle` must agree). Counters, pairs and rates add
/// (`offered_pps` is the sum of each generator's rate); loss is recomputed from the sums;
/// the latency histograms add exactly and the percentiles are read from the sum. The
/// forwarder's CPU is not added: each generator read the same process over its own,
/// overlapping window, so the merge keeps the largest reading and divides it by all the
/// packets received (start the generators together). Reports of different forwarder
/// processes keep no relay figures (a warning says so).
pub fn merge_udp(reports: &[UdpReport]) -> Result<UdpReport, MergeError> {
    let (first, rest) = reports.split_first().ok_or(MergeError::Empty)?;
    let mut out = first.clone();
    let mut hist = Hist::from_base64(&first.latency_us.histogram)
        .map_err(|source| MergeError::UdpHistogram { index: 0, source })?;
    out.warnings = tagged(0, &first.warnings);
    for (i, r) in rest.iter().enumerate() {
        let index = i + 1;
        for (field, same) in [
            ("schema", r.schema == first.schema),
            ("target", r.target == first.target),
            ("target_addr", r.target_addr == first.target_addr),
            ("size_bytes", r.size_bytes == first.size_bytes),
            ("idle", r.idle == first.idle),
        ] {
            if !same {
                return Err(MergeError::UdpMismatch { index, field });
            }
        }
        let h = Hist::from_base64(&r.latency_us.histogram)
            .map_err(|source| MergeError::UdpHistogram { index, source })?;
        hist.add(&h)
            .map_err(|source| MergeError::UdpHistogram { index, source })?;
        absorb_udp(&mut out, r, index);
    }
    out.loss_pct = if out.sent > 0 {
        100.0 * (out.sent as f64 - out.received as f64) / out.sent as f64
    } else {
        0.0
    };
    out.latency_us = LatencyUs {
        p50: hist.quantile_us(0.5),
        p99: hist.quantile_us(0.99),
        p999: hist.quantile_us(0.999),
        max: hist.max_us(),
        mean: hist.mean_us(),
        histogram: hist.to_base64().unwrap_or_default(),
    };
    if let Some(rel) = out.relay.as_mut() {
        rel.cpu_us_per_packet = rel
            .cpu_s
            .filter(|_| out.received > 0)
            .map(|c| c * 1e6 / out.received as f64);
        rel.rss_per_session_bytes = rel
            .rss_before_bytes
            .zip(rel.rss_after_bytes)
            .filter(|_| out.idle)
            .map(|(b, a)| (a as f64 - b as f64) / f64::from(out.setup.pairs_ready.max(1)));
    }
    Ok(out)
}

fn tagged(index: usize, warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| format!("generator {index}: {w}"))
        .collect()
}

/// Both values combined with `f`, or whichever is present.
fn combine<T>(a: Option<T>, b: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

/// Adds report `r` (input `index`) into `out`, except latency and the derived ratios.
fn absorb_udp(out: &mut UdpReport, r: &UdpReport, index: usize) {
    if r.stop_reason != "completed" {
        out.stop_reason.clone_from(&r.stop_reason);
    }
    out.fast_path_addr = out.fast_path_addr.take().or(r.fast_path_addr.clone());
    out.pairs += r.pairs;
    out.endpoints += r.endpoints;
    out.target_pps += r.target_pps;
    out.duration_s = out.duration_s.max(r.duration_s);
    let (s, o) = (&mut out.setup, &r.setup);
    s.pairs_ready += o.pairs_ready;
    s.pairs_failed += o.pairs_failed;
    for (k, v) in &o.failures {
        *s.failures.entry(k.clone()).or_default() += v;
    }
    s.hellos_back = combine(s.hellos_back, o.hellos_back, std::ops::Add::add);
    s.binds_confirmed = combine(s.binds_confirmed, o.binds_confirmed, std::ops::Add::add);
    s.channels_bound = combine(s.channels_bound, o.channels_bound, std::ops::Add::add);
    s.setup_s = s.setup_s.max(o.setup_s);
    out.sent += r.sent;
    out.send_failed += r.send_failed;
    out.skipped += r.skipped;
    out.received += r.received;
    out.received_bytes += r.received_bytes;
    out.bad += r.bad;
    out.elapsed_s = out.elapsed_s.max(r.elapsed_s);
    out.offered_pps += r.offered_pps;
    out.received_pps += r.received_pps;
    out.relay = match (out.relay.take(), &r.relay) {
        (Some(a), Some(b)) if a.pid == b.pid => Some(RelayUdp {
            pid: a.pid,
            cpu_s: combine(a.cpu_s, b.cpu_s, f64::max),
            cpu_us_per_packet: None,
            rss_before_bytes: combine(a.rss_before_bytes, b.rss_before_bytes, u64::min),
            rss_after_bytes: combine(a.rss_after_bytes, b.rss_after_bytes, u64::max),
            rss_per_session_bytes: None,
        }),
        (None, None) => None,
        _ => {
            out.warnings.push(format!(
                "generator {index} measured another forwarder process (or none): relay figures dropped"
            ));
            None
        }
    };
    out.generator_cpu_s += r.generator_cpu_s;
    out.generator_window_cpu_s = combine(
        out.generator_window_cpu_s,
        r.generator_window_cpu_s,
        std::ops::Add::add,
    );
    out.threads += r.threads;
    if out.addressing != r.addressing {
        out.addressing = "mixed".into();
    }
    out.generator_kept_up &= r.generator_kept_up;
    out.warnings.extend(tagged(index, &r.warnings));
}

/// Whether a report's JSON is a udp report (its `schema`), so `merge` picks the rules.
pub fn is_udp_report(json: &serde_json::Value) -> bool {
    json.get("schema").and_then(|s| s.as_str()) == Some(UDP_SCHEMA)
}

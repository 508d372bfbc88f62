//! The udp report: its schema (`REPORT.md`, "udp report"), the one-line `RESULT` summary,
//! and how both are derived from what a target's run measured. No I/O.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::Measured;
use crate::cli::UdpArgs;
use crate::udp::STOP;

/// `schema` of a udp report.
pub const UDP_SCHEMA: &str = "duet-loadtest-udp/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpReport {
    pub schema: String,
    pub tool: String,
    pub stop_reason: String,
    pub target: String,
    pub target_addr: String,
    pub fast_path_addr: Option<String>,
    pub pairs: u32,
    pub endpoints: u32,
    pub size_bytes: u32,
    pub target_pps: f64,
    pub duration_s: f64,
    pub idle: bool,
    pub setup: SetupReport,
    pub sent: u64,
    pub send_failed: u64,
    pub skipped: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub bad: u64,
    pub elapsed_s: f64,
    pub offered_pps: f64,
    pub received_pps: f64,
    pub loss_pct: f64,
    pub latency_us: LatencyUs,
    pub relay: Option<RelayUdp>,
    pub generator_cpu_s: f64,
    /// Added with `--threads`: workers that ran the window (0: no media sent).
    #[serde(default)]
    pub threads: u32,
    /// `--addressing`: `ports` or `ips`.
    #[serde(default)]
    pub addressing: String,
    /// This process's CPU over the send window and drain only (set-up excluded).
    #[serde(default)]
    pub generator_window_cpu_s: Option<f64>,
    /// At least 97 % of `target_pps` offered (skipped packets count against it).
    #[serde(default)]
    pub generator_kept_up: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupReport {
    pub pairs_ready: u32,
    pub pairs_failed: u32,
    pub failures: BTreeMap<String, u64>,
    pub hellos_back: Option<u64>,
    pub binds_confirmed: Option<u64>,
    /// `turn`: endpoints whose allocation, permission and channel binding all succeeded.
    #[serde(default)]
    pub channels_bound: Option<u64>,
    pub setup_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub histogram: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayUdp {
    pub pid: u32,
    pub cpu_s: Option<f64>,
    pub cpu_us_per_packet: Option<f64>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub rss_per_session_bytes: Option<f64>,
}

impl UdpReport {
    /// The `RESULT key=value ...` line (loadgen's fields, plus relay CPU and the target).
    pub fn result_line(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("nan".to_string(), |v| format!("{v:.d$}"));
        let r = self.relay.as_ref();
        format!(
            "RESULT target={} K={} size={} target_pps={:.0} sent={} recv={} offered_pps={:.0} \
             recv_pps={:.0} loss_pct={:.4} p50_us={} p99_us={} p999_us={} max_us={} \
             relay_cpu_s={} relay_cpu_us_per_pkt={} loadgen_cpu_s={:.3} sendfail={} bad={} \
             skipped={} elapsed_s={:.3} ready_pairs={} stop={} threads={} addressing={} \
             gen_window_cpu_s={} gen_kept_up={}",
            self.target,
            self.pairs,
            self.size_bytes,
            self.target_pps,
            self.sent,
            self.received,
            self.offered_pps,
            self.received_pps,
            self.loss_pct,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            f(r.and_then(|r| r.cpu_s), 3),
            f(r.and_then(|r| r.cpu_us_per_packet), 3),
            self.generator_cpu_s,
            self.send_failed,
            self.bad,
            self.skipped,
            self.elapsed_s,
            self.setup.pairs_ready,
            self.stop_reason,
            self.threads,
            self.addressing,
            f(self.generator_window_cpu_s, 3),
            self.generator_kept_up,
        )
    }
}

/// The report of a run: `m` as measured, `gen_cpu` this process's CPU for the whole run,
/// `warnings` found before the run.
pub(super) fn build(
    a: &UdpArgs,
    m: Measured,
    gen_cpu: f64,
    mut warnings: Vec<String>,
) -> UdpReport {
    let Measured {
        setup,
        fast_path_addr,
        send,
        recv,
        cpu,
        gen_window_cpu,
        threads,
        rss,
        warnings: w,
    } = m;
    warnings.extend(w);
    let el = send.elapsed_s;
    let rate = |n: u64| if el > 0.0 { n as f64 / el } else { 0.0 };
    let loss_pct = if send.sent > 0 {
        100.0 * (send.sent as f64 - recv.received as f64) / send.sent as f64
    } else {
        0.0
    };
    if send.skipped > 0 {
        warnings.push(format!(
            "the generator fell behind and skipped {} packets: offered rate below target",
            send.skipped
        ));
    }
    // Skipped packets lower the offered rate, so a pacer that fell behind shows here too.
    let kept_up = !a.idle && rate(send.sent) >= 0.97 * a.pps;
    let h = &recv.latency;
    let relay = a.relay_pid.map(|pid| {
        let cpu_s = cpu.map(|(c0, c1)| c1 - c0);
        let sessions = f64::from(setup.pairs_ready.max(1));
        RelayUdp {
            pid,
            cpu_s,
            cpu_us_per_packet: cpu_s
                .filter(|_| recv.received > 0)
                .map(|c| c * 1e6 / recv.received as f64),
            rss_before_bytes: rss.0,
            rss_after_bytes: rss.1,
            rss_per_session_bytes: rss
                .0
                .zip(rss.1)
                .filter(|_| a.idle)
                .map(|(b, c)| (c as f64 - b as f64) / sessions),
        }
    });
    UdpReport {
        schema: UDP_SCHEMA.into(),
        tool: format!("duet-loadtest {}", env!("CARGO_PKG_VERSION")),
        stop_reason: if send.interrupted || STOP.load(Relaxed) {
            "interrupted".into()
        } else {
            "completed".into()
        },
        target: a.target.kind.as_str().into(),
        target_addr: a.target.addr.to_string(),
        fast_path_addr: fast_path_addr.map(|x| x.to_string()),
        pairs: a.pairs,
        endpoints: 2 * a.pairs,
        size_bytes: u32::from(a.size),
        target_pps: a.pps,
        duration_s: a.duration.as_secs_f64(),
        idle: a.idle,
        setup,
        sent: send.sent,
        send_failed: send.send_failed,
        skipped: send.skipped,
        received: recv.received,
        received_bytes: recv.received_bytes,
        bad: recv.bad,
        elapsed_s: el,
        offered_pps: rate(send.sent),
        received_pps: rate(recv.received),
        loss_pct,
        latency_us: LatencyUs {
            p50: h.quantile_us(0.5),
            p99: h.quantile_us(0.99),
            p999: h.quantile_us(0.999),
            max: h.max_us(),
            mean: h.mean_us(),
            histogram: h.to_base64().unwrap_or_default(),
        },
        relay,
        generator_cpu_s: gen_cpu,
        threads: threads as u32,
        addressing: a.addressing.as_str().into(),
        generator_window_cpu_s: gen_window_cpu,
        generator_kept_up: kept_up,
        warnings,
    }
}

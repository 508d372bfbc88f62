//! What one load run knows of each relay's resources: CPU, RSS and sessions, sampled once a
//! second from the embedded relay's handle, from `/proc/<pid>`, from its `/metrics`, or from
//! both for the same relay; and the `relays` part of the report built from them.
//!
//! It does not own the run's timeline (`runner`) or the parsing of `/proc` and metrics text
//! (`resources`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duet_relay::RelayHandle;

use crate::report::RelayReport;
use crate::resources::{self, RelayMetricsView, RELAY_THREAD_PREFIX};
use crate::runner::{RunOptions, RunTarget};

/// What is known about one relay's resources, sampled once a second.
pub(crate) struct RelayWatch {
    name: String,
    source: Source,
    cpu_start: Option<f64>,
    cpu_last: Option<f64>,
    rss_start: Option<u64>,
    rss_peak: Option<u64>,
    sessions_peak: Option<u64>,
    view: RelayMetricsView,
    note: String,
}

enum Source {
    Embedded(Arc<RelayHandle>),
    Pid(u32),
    Metrics(SocketAddr),
    /// The same relay seen both ways: CPU and RSS from /proc, the rest from /metrics.
    PidMetrics(u32, SocketAddr),
}

impl RelayWatch {
    fn new(name: String, source: Source, note: &str) -> Self {
        Self {
            name,
            source,
            cpu_start: None,
            cpu_last: None,
            rss_start: None,
            rss_peak: None,
            sessions_peak: None,
            view: RelayMetricsView::default(),
            note: note.to_owned(),
        }
    }

    pub(crate) async fn sample(&mut self, live_sessions: u64) {
        let (cpu, rss, sessions) = match &self.source {
            Source::Embedded(h) => {
                self.view = RelayMetricsView::from_text(&h.metrics_text());
                (
                    resources::threads_cpu_seconds(None, RELAY_THREAD_PREFIX),
                    resources::process_rss_bytes(None),
                    Some(h.session_count() as u64),
                )
            }
            Source::Pid(pid) => (
                resources::process_cpu_seconds(Some(*pid)),
                resources::process_rss_bytes(Some(*pid)),
                // The relay's own count is not visible here; the calls this generator holds
                // open are (exact when it is the relay's only load).
                Some(live_sessions),
            ),
            Source::Metrics(addr) => {
                self.scrape(*addr).await;
                (
                    self.view.process_cpu_seconds,
                    self.view.process_rss_bytes,
                    self.view.sessions,
                )
            }
            Source::PidMetrics(pid, addr) => {
                let addr = *addr;
                let pid = *pid;
                self.scrape(addr).await;
                (
                    resources::process_cpu_seconds(Some(pid)),
                    resources::process_rss_bytes(Some(pid)),
                    self.view.sessions.or(Some(live_sessions)),
                )
            }
        };
        if let Some(c) = cpu {
            self.cpu_start.get_or_insert(c);
            self.cpu_last = Some(c);
        }
        if let Some(r) = rss {
            self.rss_start.get_or_insert(r);
            self.rss_peak = Some(self.rss_peak.map_or(r, |p| p.max(r)));
        }
        if let Some(s) = sessions {
            self.sessions_peak = Some(self.sessions_peak.map_or(s, |p| p.max(s)));
        }
    }

    async fn scrape(&mut self, addr: SocketAddr) {
        match resources::fetch_metrics(addr, Duration::from_millis(500)).await {
            Ok(text) => self.view = RelayMetricsView::from_text(&text),
            Err(e) => {
                if !self.note.contains("unreachable") {
                    self.note.push_str(&format!(" /metrics unreachable: {e}."));
                }
            }
        }
    }

    pub(crate) fn report(&self) -> RelayReport {
        let (source, scope) = match &self.source {
            Source::Embedded(_) => ("embedded", "generator_process"),
            Source::Pid(_) => ("proc", "relay_process"),
            Source::Metrics(_) => ("metrics", "relay_process"),
            Source::PidMetrics(..) => ("proc+metrics", "relay_process"),
        };
        let mut r = RelayReport {
            name: self.name.clone(),
            source: source.into(),
            cpu_seconds: match (self.cpu_start, self.cpu_last) {
                (Some(a), Some(b)) => Some(crate::hist::round3(b - a)),
                _ => None,
            },
            rss_start_bytes: self.rss_start,
            rss_peak_bytes: self.rss_peak,
            memory_scope: self.rss_start.map(|_| scope.to_owned()),
            sessions_peak: self.sessions_peak,
            forwarded_packets: self.view.forwarded_packets,
            forwarded_bytes: self.view.forwarded_bytes,
            media_dropped: self.view.media_dropped.clone(),
            refusals: self.view.refusals.clone(),
            note: self.note.trim().to_owned(),
            ..RelayReport::default()
        };
        r.derive();
        r
    }
}

pub(crate) fn relay_watches(opts: &RunOptions, target: &RunTarget) -> Vec<RelayWatch> {
    let mut w = Vec::new();
    if let Some(h) = &target.embedded {
        w.push(RelayWatch::new(
            "embedded".into(),
            Source::Embedded(h.clone()),
            "Embedded relay: cpu_seconds counts only the relay runtime's threads (named \
             duet-relay*), exact. RSS cannot be split by thread, so rss_* and \
             memory_per_session_bytes cover the whole generator process (relay and both \
             clients of every call); for the relay's own memory run it as a separate process \
             and pass --relay-pid.",
        ));
    }
    // As many pids as metrics addresses: paired by position (the same relay seen both
    // ways), which gives CPU per forwarded packet.
    if !opts.relay_pids.is_empty() && opts.relay_pids.len() == opts.relay_metrics.len() {
        for (pid, addr) in opts.relay_pids.iter().zip(&opts.relay_metrics) {
            w.push(RelayWatch::new(
                format!("pid:{pid}"),
                Source::PidMetrics(*pid, *addr),
                "CPU and RSS of the relay process alone from /proc/<pid>; sessions, forwarded \
                 packets and drops from its /metrics.",
            ));
        }
        return w;
    }
    for pid in &opts.relay_pids {
        w.push(RelayWatch::new(
            format!("pid:{pid}"),
            Source::Pid(*pid),
            "From /proc/<pid>: CPU and RSS of the relay process alone; sessions_peak is the \
             calls this generator held open at once.",
        ));
    }
    for addr in &opts.relay_metrics {
        w.push(RelayWatch::new(
            format!("metrics:{addr}"),
            Source::Metrics(*addr),
            "From the relay's /metrics. cpu and rss are present only if the relay exports \
             process_cpu_seconds_total / process_resident_memory_bytes.",
        ));
    }
    w
}

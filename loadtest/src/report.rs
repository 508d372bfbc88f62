//! The JSON report: its schema (documented field by field in `loadtest/REPORT.md`), the
//! derived numbers, reading and writing. Sans-IO.
//!
//! Owns the report's shape and every number derived from stored ones (`all` from the
//! per-kind sections, loss ratios, histogram summaries), so a freshly run report and a
//! merged one are finished the same way ([`Report::finalize`]). It does not measure
//! (`stats`, `resources`), check SLOs (`slo`) or combine reports (`merge`).
//!
//! Compatibility: `schema_version` rises when a field changes meaning or is removed; new
//! fields may be added without raising it, so readers must ignore unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::{round3, Hist, HistError, HistSummary};

/// Version of the report's schema (see `REPORT.md`).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report is not valid JSON for schema {SCHEMA_VERSION}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("report has schema_version {0}; this build reads up to {SCHEMA_VERSION}")]
    NewerSchema(u32),
    #[error(transparent)]
    Hist(#[from] HistError),
}

/// Why the run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Ran its full duration and every call finished.
    Completed,
    /// Ctrl-C (SIGINT) or SIGTERM: stopped early, report is partial.
    Interrupted,
    /// The hard deadline passed with calls still running; they were aborted.
    Deadline,
}

impl StopReason {
    /// For merging: the worst of two reasons.
    fn worst(self, other: Self) -> Self {
        let rank = |r: Self| match r {
            Self::Completed => 0,
            Self::Interrupted => 1,
            Self::Deadline => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub profile: String,
    pub calls: u64,
    pub duration_s: f64,
    pub ramp_per_s: f64,
    pub seed: u64,
    pub run_id: String,
    /// End-to-end encryption requested (`--no-e2ee` turns it off).
    pub e2ee: bool,
    /// Whether the SDK actually encrypted the media (false until `Call` wires in SFrame).
    pub e2ee_active: bool,
    pub transport: String,
    pub embedded_relay: bool,
    /// The relay nodes calls were spread over (`node=addr` or `addr`).
    pub relays: Vec<String>,
    pub grace_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallsReport {
    pub planned: u64,
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    /// Established calls that moved to another relay node (failover or drain) and went on.
    #[serde(default)]
    pub migrated: u64,
    /// Failed calls by the first error of either endpoint: a refusal code (`session_full`,
    /// `node_full`, ...) or an error kind (`timeout`, `connection`, `tls`, ...).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Established calls that ended before the run did, by reason.
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Most calls established at once.
    pub peak_concurrent: u64,
    /// Established calls per relay node (placement by rendezvous hashing).
    pub per_node: BTreeMap<String, u64>,
    /// Established calls by the media transport their endpoints ended on: `quic` (both on
    /// QUIC datagrams), `fast_path` (both on the raw UDP fast path) or `mixed`.
    #[serde(default)]
    pub by_transport: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub datagrams_received: u64,
    /// `frames_sent - frames_received` (never negative).
    pub frames_lost: u64,
    /// `frames_lost / frames_sent`, 0 when nothing was sent.
    pub loss_ratio: f64,
    pub out_of_order: u64,
    /// Frames that arrived at an endpoint of another call: must be 0.
    pub misrouted: u64,
    /// One-way latency of whole frames: sender timestamp to reassembled at the receiver.
    pub latency: HistSummary,
    /// |difference of consecutive frames' transit times| per stream (RFC 3550 D); the mean
    /// is what RFC 3550's jitter estimates.
    pub jitter: HistSummary,
}

impl Default for KindReport {
    fn default() -> Self {
        Self {
            frames_sent: 0,
            bytes_sent: 0,
            datagrams_sent: 0,
            frames_received: 0,
            bytes_received: 0,
            datagrams_received: 0,
            frames_lost: 0,
            loss_ratio: 0.0,
            out_of_order: 0,
            misrouted: 0,
            latency: HistSummary::empty(),
            jitter: HistSummary::empty(),
        }
    }
}

impl KindReport {
    fn add_counts(&mut self, o: &KindReport) {
        self.frames_sent += o.frames_sent;
        self.bytes_sent += o.bytes_sent;
        self.datagrams_sent += o.datagrams_sent;
        self.frames_received += o.frames_received;
        self.bytes_received += o.bytes_received;
        self.datagrams_received += o.datagrams_received;
        self.out_of_order += o.out_of_order;
        self.misrouted += o.misrouted;
    }

    fn derive(&mut self) {
        self.frames_lost = self.frames_sent.saturating_sub(self.frames_received);
        self.loss_ratio = if self.frames_sent == 0 {
            0.0
        } else {
            (self.frames_lost as f64 / self.frames_sent as f64 * 1e6).round() / 1e6
        };
    }

    /// Adds `o`'s counters and histograms into `self` (summaries refreshed).
    pub fn merge(&mut self, o: &KindReport) -> Result<(), HistError> {
        self.add_counts(o);
        self.latency = merge_summaries(&self.latency, &o.latency)?;
        self.jitter = merge_summaries(&self.jitter, &o.jitter)?;
        self.derive();
        Ok(())
    }
}

/// The summary of the union of two histograms' samples.
pub fn merge_summaries(a: &HistSummary, b: &HistSummary) -> Result<HistSummary, HistError> {
    let mut h = a.hist()?;
    h.add(&b.hist()?)?;
    h.summary()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaReport {
    pub audio: KindReport,
    pub video: KindReport,
    pub screen: KindReport,
    /// The three kinds together (derived).
    pub all: KindReport,
}

impl MediaReport {
    pub fn kinds(&self) -> [(&'static str, &KindReport); 3] {
        [
            ("audio", &self.audio),
            ("video", &self.video),
            ("screen", &self.screen),
        ]
    }

    pub fn kinds_mut(&mut self) -> [&mut KindReport; 3] {
        [&mut self.audio, &mut self.video, &mut self.screen]
    }

    pub fn kind(&self, name: &str) -> Option<&KindReport> {
        match name {
            "audio" => Some(&self.audio),
            "video" => Some(&self.video),
            "screen" => Some(&self.screen),
            "all" => Some(&self.all),
            _ => None,
        }
    }
}

/// The SDK transport's own counters, summed over every endpoint (all kinds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportReport {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Frames the SDK dropped because a piece did not arrive in time.
    pub incomplete_frames_dropped: u64,
    pub malformed_datagrams: u64,
    /// Frames that arrived but did not carry a valid probe.
    pub bad_probes: u64,
    /// Largest datagram payload the path allowed (smallest seen over all connections).
    pub max_datagram_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorReport {
    /// CPU seconds of the generator's own threads (clients, not the embedded relay).
    pub cpu_seconds: Option<f64>,
    pub client_threads: u64,
    /// Shared QUIC endpoints (UDP sockets) the clients connected through (`--endpoints`);
    /// 0: a socket of its own per client, as on separate devices.
    #[serde(default)]
    pub quic_endpoints: u64,
    /// Whether clients on a shared endpoint could resume earlier TLS sessions
    /// (`--tls-resumption`); false: every join made a full TLS handshake.
    #[serde(default)]
    pub tls_resumption: bool,
    /// How late frames left versus their schedule: a high p99 means the generator was
    /// saturated and the numbers measure it, not the relay.
    pub send_lag: HistSummary,
}

impl Default for GeneratorReport {
    fn default() -> Self {
        Self {
            cpu_seconds: None,
            client_threads: 0,
            quic_endpoints: 0,
            tls_resumption: false,
            send_lag: HistSummary::empty(),
        }
    }
}

/// Resource figures of one relay, from whatever source was available.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayReport {
    pub name: String,
    /// `embedded` (threads of the in-process relay), `proc` (/proc/<pid> of `--relay-pid`),
    /// `metrics` (the relay's /metrics) or `proc+metrics` (a pid and a metrics address paired).
    pub source: String,
    pub cpu_seconds: Option<f64>,
    pub rss_start_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    /// What the RSS figures cover: `relay_process`, or `generator_process` for an embedded
    /// relay (relay + every client in one process; see `note`).
    pub memory_scope: Option<String>,
    pub sessions_peak: Option<u64>,
    /// `(rss_peak - rss_start) / sessions_peak`.
    pub memory_per_session_bytes: Option<f64>,
    pub forwarded_packets: Option<u64>,
    pub forwarded_bytes: Option<u64>,
    /// `cpu_seconds * 1e6 / forwarded_packets`.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    pub media_dropped: BTreeMap<String, u64>,
    pub refusals: BTreeMap<String, u64>,
    pub note: String,
}

impl RelayReport {
    pub fn derive(&mut self) {
        self.memory_per_session_bytes = match (self.rss_start_bytes, self.rss_peak_bytes) {
            (Some(a), Some(b)) => self
                .sessions_peak
                .filter(|s| *s > 0)
                .map(|s| round3(b.saturating_sub(a) as f64 / s as f64)),
            _ => None,
        };
        self.cpu_us_per_forwarded_packet = match (self.cpu_seconds, self.forwarded_packets) {
            (Some(c), Some(p)) if p > 0 => Some(round3(c * 1e6 / p as f64)),
            _ => None,
        };
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloViolationReport {
    pub clause: String,
    pub actual: Option<f64>,
    pub threshold: f64,
    pub unit: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloReport {
    pub spec: String,
    pub passed: bool,
    pub violations: Vec<SloViolationReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    /// Generators whose results are in this report (1, or the number merged).
    pub generators: u32,
    pub started_unix_ms: u64,
    pub elapsed_s: f64,
    /// True when the run did not finish its planned duration (any generator, if merged).
    pub partial: bool,
    pub stop_reason: StopReason,
    pub config: RunConfig,
    pub calls: CallsReport,
    /// Join time per endpoint: QUIC + TLS handshake and Join → Joined.
    pub join: HistSummary,
    /// Per receiving endpoint, its longest silence between two frames while its peer was
    /// sending: what a relay failure, a drain or a stall cost each call.
    #[serde(default = "HistSummary::empty")]
    pub media_gap: HistSummary,
    /// The `--chaos` actions done during the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chaos: Vec<crate::chaos::ChaosEvent>,
    pub media: MediaReport,
    pub transport: TransportReport,
    pub generator: GeneratorReport,
    pub relays: Vec<RelayReport>,
    pub warnings: Vec<String>,
    pub slo: Option<SloReport>,
}

impl Report {
    /// Recomputes every derived field (loss, `media.all`, relay ratios) from the stored ones.
    pub fn finalize(&mut self) -> Result<(), ReportError> {
        let mut all = KindReport::default();
        for k in self.media.kinds_mut() {
            k.derive();
            all.merge(k)?;
        }
        self.media.all = all;
        for r in &mut self.relays {
            r.derive();
        }
        Ok(())
    }

    pub fn to_json(&self) -> Result<String, ReportError> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    pub fn from_json(text: &str) -> Result<Self, ReportError> {
        // Check the version first, so a newer report fails with a clear message rather than
        // a missing-field error.
        let v: serde_json::Value = serde_json::from_str(text)?;
        if let Some(n) = v.get("schema_version").and_then(|n| n.as_u64()) {
            if n > u64::from(SCHEMA_VERSION) {
                return Err(ReportError::NewerSchema(n as u32));
            }
        }
        Ok(serde_json::from_value(v)?)
    }

    /// Merges `other` into `self`: counters add, histograms merge exactly.
    pub fn absorb(&mut self, other: &Report) -> Result<(), ReportError> {
        self.generators += other.generators;
        self.started_unix_ms = self.started_unix_ms.min(other.started_unix_ms);
        self.elapsed_s = self.elapsed_s.max(other.elapsed_s);
        self.partial |= other.partial;
        self.stop_reason = self.stop_reason.worst(other.stop_reason);
        self.merge_config(&other.config);
        let (a, b) = (&mut self.calls, &other.calls);
        a.planned += b.planned;
        a.attempted += b.attempted;
        a.established += b.established;
        a.failed += b.failed;
        a.migrated += b.migrated;
        // Generators ran side by side, so concurrency adds up (an upper bound if they did not
        // overlap in time).
        a.peak_concurrent += b.peak_concurrent;
        add_maps(&mut a.failed_by_reason, &b.failed_by_reason);
        add_maps(&mut a.dropped_by_reason, &b.dropped_by_reason);
        add_maps(&mut a.per_node, &b.per_node);
        add_maps(&mut a.by_transport, &b.by_transport);
        self.join = merge_summaries(&self.join, &other.join)?;
        self.media_gap = merge_summaries(&self.media_gap, &other.media_gap)?;
        self.chaos.extend(other.chaos.iter().cloned());
        let theirs = [&other.media.audio, &other.media.video, &other.media.screen];
        for (mine, theirs) in self.media.kinds_mut().into_iter().zip(theirs) {
            mine.merge(theirs)?;
        }
        let (t, o) = (&mut self.transport, &other.transport);
        t.datagrams_sent += o.datagrams_sent;
        t.datagrams_received += o.datagrams_received;
        t.incomplete_frames_dropped += o.incomplete_frames_dropped;
        t.malformed_datagrams += o.malformed_datagrams;
        t.bad_probes += o.bad_probes;
        t.max_datagram_bytes = match (t.max_datagram_bytes, o.max_datagram_bytes) {
            (0, x) | (x, 0) => x,
            (x, y) => x.min(y),
        };
        let g = &mut self.generator;
        g.cpu_seconds = match (g.cpu_seconds, other.generator.cpu_seconds) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        g.client_threads += other.generator.client_threads;
        g.quic_endpoints += other.generator.quic_endpoints;
        g.tls_resumption |= other.generator.tls_resumption;
        g.send_lag = merge_summaries(&g.send_lag, &other.generator.send_lag)?;
        // Each generator observed its relays on its own; keep every observation.
        self.relays.extend(other.relays.iter().cloned());
        for w in &other.warnings {
            if !self.warnings.contains(w) {
                self.warnings.push(w.clone());
            }
        }
        // An SLO verdict of the parts says nothing about the whole; re-check the merge.
        self.slo = None;
        self.finalize()
    }

    fn merge_config(&mut self, o: &RunConfig) {
        let c = &mut self.config;
        if c.profile != o.profile {
            let w = format!(
                "merged generators ran different profiles ({} and {})",
                c.profile, o.profile
            );
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
            c.profile = "various".into();
        }
        c.calls += o.calls;
        c.ramp_per_s += o.ramp_per_s;
        c.duration_s = c.duration_s.max(o.duration_s);
        c.grace_s = c.grace_s.max(o.grace_s);
        c.e2ee &= o.e2ee;
        c.e2ee_active &= o.e2ee_active;
        c.embedded_relay |= o.embedded_relay;
        if c.transport != o.transport {
            c.transport = "various".into();
        }
        if c.run_id != o.run_id {
            c.run_id = format!("{}+{}", c.run_id, o.run_id);
        }
        for r in &o.relays {
            if !c.relays.contains(r) {
                c.relays.push(r.clone());
            }
        }
    }
}

fn add_maps(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// Builds a `KindReport` from counters and histograms (summaries computed here).
pub fn kind_report(
    counts: KindCounts,
    latency: &Hist,
    jitter: &Hist,
) -> Result<KindReport, HistError> {
    let mut k = KindReport {
        frames_sent: counts.frames_sent,
        bytes_sent: counts.bytes_sent,
        datagrams_sent: counts.datagrams_sent,
        frames_received: counts.frames_received,
        bytes_received: counts.bytes_received,
        datagrams_received: counts.datagrams_received,
        out_of_order: counts.out_of_order,
        misrouted: counts.misrouted,
        latency: latency.summary()?,
        jitter: jitter.summary()?,
        ..KindReport::default()
    };
    k.derive();
    Ok(k)
}

/// Plain counters of one media kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub datagrams_received: u64,
    pub out_of_order: u64,
    pub misrouted: u64,
}

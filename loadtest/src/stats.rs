//! Live measurement: per-stream receive tracking (sans-IO) and the run-wide collector that
//! every call task records into.
//!
//! Owns what is counted and how it is aggregated cheaply under load: counters are relaxed
//! atomics (the progress line reads them every second), histograms live in a few
//! mutex-guarded shards picked by call index, so two cores rarely contend and memory stays
//! fixed whatever the number of calls (one histogram is ~140 KB; one per stream would not
//! scale to 10,000 calls). It does not do I/O or decide the report's layout (`report`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use duet_proto::MediaKind;

use crate::hist::{Hist, HistError};
use crate::report::{kind_report, CallsReport, KindCounts, MediaReport, TransportReport};

/// What one received frame tells about its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub latency_us: u64,
    /// `|transit - previous transit|`, from the stream's second frame on.
    pub jitter_us: Option<u64>,
    /// Arrived with a lower sequence number than one already seen.
    pub out_of_order: bool,
}

/// Receive-side state of one (call, direction, kind) stream.
#[derive(Debug, Clone, Default)]
pub struct StreamTracker {
    highest: Option<u64>,
    last_transit: Option<u64>,
}

impl StreamTracker {
    pub fn observe(&mut self, seq: u64, sent_us: u64, recv_us: u64) -> Observed {
        let transit = recv_us.saturating_sub(sent_us);
        let jitter_us = self.last_transit.map(|t| t.abs_diff(transit));
        self.last_transit = Some(transit);
        let out_of_order = self.highest.is_some_and(|h| seq < h);
        if !out_of_order {
            self.highest = Some(seq);
        }
        Observed {
            latency_us: transit,
            jitter_us,
            out_of_order,
        }
    }
}

#[derive(Default)]
struct KindCounters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    datagrams_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    datagrams_received: AtomicU64,
    out_of_order: AtomicU64,
    misrouted: AtomicU64,
}

impl KindCounters {
    fn load(&self) -> KindCounts {
        KindCounts {
            frames_sent: self.frames_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            datagrams_sent: self.datagrams_sent.load(Relaxed),
            frames_received: self.frames_received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            datagrams_received: self.datagrams_received.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            misrouted: self.misrouted.load(Relaxed),
        }
    }
}

#[derive(Default)]
struct Shard {
    latency: [Hist; 3],
    jitter: [Hist; 3],
    join: Hist,
    send_lag: Hist,
    gap: Hist,
}

/// Histogram shards: enough to keep two to eight cores from queueing on one lock.
const SHARDS: usize = 8;

/// Everything the calls of one run record into.
pub struct Collector {
    kinds: [KindCounters; 3],
    shards: Vec<Mutex<Shard>>,
    pub attempted: AtomicU64,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub active: AtomicU64,
    pub peak_active: AtomicU64,
    pub finished: AtomicU64,
    migrated: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    dropped: Mutex<BTreeMap<String, u64>>,
    per_node: Mutex<BTreeMap<String, u64>>,
    by_transport: Mutex<BTreeMap<String, u64>>,
    datagrams_sent: AtomicU64,
    datagrams_received: AtomicU64,
    incomplete: AtomicU64,
    malformed: AtomicU64,
    bad_probes: AtomicU64,
    min_datagram: AtomicU64,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key.to_owned()).or_default() += 1;
    }
}

/// Live totals for the progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub active: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub datagrams_sent: u64,
}

impl Collector {
    pub fn new() -> Self {
        Self {
            kinds: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            attempted: AtomicU64::new(0),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            active: AtomicU64::new(0),
            peak_active: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            migrated: AtomicU64::new(0),
            failures: Mutex::default(),
            dropped: Mutex::default(),
            per_node: Mutex::default(),
            by_transport: Mutex::default(),
            datagrams_sent: AtomicU64::new(0),
            datagrams_received: AtomicU64::new(0),
            incomplete: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            bad_probes: AtomicU64::new(0),
            min_datagram: AtomicU64::new(u64::MAX),
        }
    }

    fn shard(&self, call: u64) -> std::sync::MutexGuard<'_, Shard> {
        // A poisoned shard only means another task panicked mid-record; the counts stay usable.
        let m = &self.shards[call as usize % SHARDS];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One receiving endpoint's longest silence between two frames while media was sent.
    pub fn record_gap(&self, call: u64, us: u64) {
        self.shard(call).gap.record(us);
    }

    pub fn record_join(&self, call: u64, us: u64) {
        self.shard(call).join.record(us);
    }

    pub fn call_established(&self, node: &str) {
        self.established.fetch_add(1, Relaxed);
        let now = self.active.fetch_add(1, Relaxed) + 1;
        self.peak_active.fetch_max(now, Relaxed);
        bump(&self.per_node, node);
    }

    pub fn call_failed(&self, reason: &str) {
        self.failed.fetch_add(1, Relaxed);
        bump(&self.failures, reason);
    }

    pub fn call_dropped(&self, reason: &str) {
        bump(&self.dropped, reason);
    }

    /// A call that moved to another relay node (its endpoints saw `Event::Migrated`).
    pub fn call_migrated(&self) {
        self.migrated.fetch_add(1, Relaxed);
    }

    pub fn call_ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    pub fn sent(&self, call: u64, kind: MediaKind, bytes: usize, datagrams: u64, lag_us: u64) {
        let k = &self.kinds[kind.index()];
        k.frames_sent.fetch_add(1, Relaxed);
        k.bytes_sent.fetch_add(bytes as u64, Relaxed);
        k.datagrams_sent.fetch_add(datagrams, Relaxed);
        self.shard(call).send_lag.record(lag_us);
    }

    pub fn received(&self, call: u64, kind: MediaKind, bytes: usize, datagrams: u64, o: Observed) {
        let k = &self.kinds[kind.index()];
        k.frames_received.fetch_add(1, Relaxed);
        k.bytes_received.fetch_add(bytes as u64, Relaxed);
        k.datagrams_received.fetch_add(datagrams, Relaxed);
        if o.out_of_order {
            k.out_of_order.fetch_add(1, Relaxed);
        }
        let mut s = self.shard(call);
        s.latency[kind.index()].record(o.latency_us);
        if let Some(j) = o.jitter_us {
            s.jitter[kind.index()].record(j);
        }
    }

    pub fn misrouted(&self, kind: MediaKind) {
        self.kinds[kind.index()].misrouted.fetch_add(1, Relaxed);
    }

    /// Counts one established call under the transport its endpoints ended on
    /// (`quic`, `fast_path` or `mixed`).
    pub fn call_transport(&self, label: &str) {
        bump(&self.by_transport, label);
    }

    pub fn bad_probe(&self) {
        self.bad_probes.fetch_add(1, Relaxed);
    }

    /// Adds one endpoint's SDK transport counters at the end of its call.
    pub fn transport(&self, s: &duet_sdk::CallStats, max_datagram: Option<usize>) {
        self.datagrams_sent.fetch_add(s.datagrams_sent, Relaxed);
        self.datagrams_received
            .fetch_add(s.datagrams_received, Relaxed);
        self.incomplete
            .fetch_add(s.incomplete_frames_dropped, Relaxed);
        self.malformed.fetch_add(s.malformed_datagrams, Relaxed);
        if let Some(m) = max_datagram {
            self.min_datagram.fetch_min(m as u64, Relaxed);
        }
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            attempted: self.attempted.load(Relaxed),
            established: self.established.load(Relaxed),
            failed: self.failed.load(Relaxed),
            active: self.active.load(Relaxed),
            ..Totals::default()
        };
        for k in &self.kinds {
            let c = k.load();
            t.frames_sent += c.frames_sent;
            t.frames_received += c.frames_received;
            t.bytes_sent += c.bytes_sent;
            t.bytes_received += c.bytes_received;
            t.datagrams_sent += c.datagrams_sent;
        }
        t
    }

    /// Merged histograms: (latency per kind, jitter per kind, join, send lag, media gap).
    #[allow(clippy::type_complexity)]
    fn merged(&self) -> Result<([Hist; 3], [Hist; 3], Hist, Hist, Hist), HistError> {
        let mut lat: [Hist; 3] = Default::default();
        let mut jit: [Hist; 3] = Default::default();
        let mut join = Hist::new();
        let mut lag = Hist::new();
        let mut gap = Hist::new();
        for m in &self.shards {
            let s = m.lock().unwrap_or_else(|p| p.into_inner());
            for i in 0..3 {
                lat[i].add(&s.latency[i])?;
                jit[i].add(&s.jitter[i])?;
            }
            join.add(&s.join)?;
            lag.add(&s.send_lag)?;
            gap.add(&s.gap)?;
        }
        Ok((lat, jit, join, lag, gap))
    }

    /// Everything measured so far, in report form.
    pub fn snapshot(&self, planned: u64) -> Result<Snapshot, HistError> {
        let (lat, jit, join, lag, gap) = self.merged()?;
        let k = |kind: MediaKind| {
            let i = kind.index();
            kind_report(self.kinds[i].load(), &lat[i], &jit[i])
        };
        let media = MediaReport {
            audio: k(MediaKind::Audio)?,
            video: k(MediaKind::Video)?,
            screen: k(MediaKind::Screen)?,
            all: Default::default(),
        };
        let map =
            |m: &Mutex<BTreeMap<String, u64>>| m.lock().map(|g| g.clone()).unwrap_or_default();
        let calls = CallsReport {
            planned,
            attempted: self.attempted.load(Relaxed),
            established: self.established.load(Relaxed),
            failed: self.failed.load(Relaxed),
            migrated: self.migrated.load(Relaxed),
            failed_by_reason: map(&self.failures),
            dropped_by_reason: map(&self.dropped),
            peak_concurrent: self.peak_active.load(Relaxed),
            per_node: map(&self.per_node),
            by_transport: map(&self.by_transport),
        };
        let min_dg = self.min_datagram.load(Relaxed);
        let transport = TransportReport {
            datagrams_sent: self.datagrams_sent.load(Relaxed),
            datagrams_received: self.datagrams_received.load(Relaxed),
            incomplete_frames_dropped: self.incomplete.load(Relaxed),
            malformed_datagrams: self.malformed.load(Relaxed),
            bad_probes: self.bad_probes.load(Relaxed),
            max_datagram_bytes: if min_dg == u64::MAX { 0 } else { min_dg },
        };
        Ok(Snapshot {
            calls,
            media,
            transport,
            join: join.summary()?,
            send_lag: lag.summary()?,
            media_gap: gap.summary()?,
        })
    }
}

/// The collector's content in report form.
pub struct Snapshot {
    pub calls: CallsReport,
    pub media: MediaReport,
    pub transport: TransportReport,
    pub join: crate::hist::HistSummary,
    pub send_lag: crate::hist::HistSummary,
    pub media_gap: crate::hist::HistSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_measures_latency_jitter_and_order() {
        let mut t = StreamTracker::default();
        let a = t.observe(0, 1000, 1500);
        assert_eq!(a.latency_us, 500);
        assert_eq!(a.jitter_us, None);
        let b = t.observe(1, 2000, 2700);
        assert_eq!(b.jitter_us, Some(200));
        assert!(!b.out_of_order);
        let c = t.observe(3, 4000, 4400);
        assert_eq!(c.jitter_us, Some(300));
        let d = t.observe(2, 3000, 4500);
        assert!(d.out_of_order);
        // Clock oddities never underflow.
        assert_eq!(t.observe(4, 10, 5).latency_us, 0);
    }

    #[test]
    fn collector_snapshots_counts_and_histograms() {
        let c = Collector::new();
        c.attempted.fetch_add(2, Relaxed);
        c.call_established("n1");
        c.call_failed("session_full");
        c.record_join(0, 3000);
        for call in 0..20u64 {
            c.sent(call, MediaKind::Audio, 150, 1, 10);
            if call != 7 {
                let o = Observed {
                    latency_us: 1000 + call,
                    jitter_us: Some(5),
                    out_of_order: false,
                };
                c.received(call, MediaKind::Audio, 150, 1, o);
            }
        }
        let mut s = c.snapshot(2).unwrap();
        assert_eq!(s.calls.established, 1);
        assert_eq!(s.calls.failed_by_reason.get("session_full"), Some(&1));
        assert_eq!(s.calls.per_node.get("n1"), Some(&1));
        assert_eq!(s.media.audio.frames_sent, 20);
        assert_eq!(s.media.audio.frames_lost, 1);
        assert!((s.media.audio.loss_ratio - 0.05).abs() < 1e-9);
        assert_eq!(s.media.audio.latency.count, 19);
        assert_eq!(s.join.count, 1);
        assert_eq!(s.media.video.frames_sent, 0);
        s.media.all = Default::default();
        assert_eq!(c.totals().frames_received, 19);
    }
}

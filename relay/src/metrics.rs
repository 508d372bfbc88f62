//! The relay's metrics: names, labels, and pre-registered handles.
//!
//! Owns the one Prometheus recorder of a `Relay` (not installed globally, so several relays
//! in one process — tests, the load test — keep their own numbers) and handles registered
//! once, so the hot path increments an atomic and never looks a name up. It does not serve
//! HTTP (see `ops`).

use std::sync::Arc;

use duet_proto::{Feature, MediaKind, RefusalReason};
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::fastpath::{BindOutcome, FastPathTotals};
use crate::forward::DropReason;

pub const JOIN_LATENCY: &str = "duet_join_latency_seconds";

/// Kinds of control-plane error, counted in `duet_control_errors_total{kind}`.
pub const CONTROL_ERRORS: &[&str] = &[
    "frame_too_large",
    "empty_frame",
    "unknown_type",
    "malformed",
    "never_joined",
    "not_joined",
    "stream_error",
    "second_stream",
    "before_join_limit",
];

/// Why a `Signal` was not forwarded, counted in `duet_signals_dropped_total{reason}`.
pub const SIGNAL_DROPS: &[&str] = &["too_large", "rate_limited", "no_peer", "peer_backlog"];

pub struct RelayMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub sessions: Gauge,
    pub endpoints: Gauge,
    pub connections: Gauge,
    /// `limits.max_sessions`, so alerts can compare `duet_sessions` with the cap.
    pub max_sessions: Gauge,
    /// 1 while draining (new joins refused, readiness false), 0 otherwise.
    pub draining: Gauge,
    pub forwarded_packets: [Counter; 3],
    pub forwarded_bytes: [Counter; 3],
    /// By [`DropReason::index`]; reasons QUIC media cannot have are no-op counters.
    media_drops: [Counter; DropReason::COUNT],
    pub signals_forwarded: Counter,
    pub signal_bytes_forwarded: Counter,
    pub joins: Counter,
    pub resumes: Counter,
    pub join_latency: Histogram,
    pub quic_refused_handshakes: Gauge,
    pub quic_ignored_handshakes: Gauge,
    pub quic_accepted_handshakes: Gauge,
    /// A QUIC connection's peer address changed and the relay followed it (connection
    /// migration: a NAT rebinding, or a client that moved its socket). Noticed from its
    /// media (the address is read at most every 250 ms of datagrams) or from its next
    /// control message.
    pub quic_migrations: Counter,
    pub fast_path: FastPathMetrics,
}

/// The fast path's series. Workers count in their own atomics; these are set from the sums
/// when `/metrics` is read, except `bridged_to_fastpath`, which the QUIC path counts.
pub struct FastPathMetrics {
    received: Counter,
    forwarded_packets: Counter,
    forwarded_bytes: Counter,
    bridged_to_quic: Counter,
    pub bridged_to_fastpath: Counter,
    binds: [Counter; BindOutcome::COUNT],
    /// By [`DropReason::index`]; reasons the fast path cannot have are no-op counters.
    drops: [Counter; DropReason::COUNT],
}

impl FastPathMetrics {
    /// Sets the worker-counted series to the workers' sums.
    pub fn sync(&self, t: &FastPathTotals) {
        self.received.absolute(t.received);
        self.forwarded_packets.absolute(t.forwarded);
        self.forwarded_bytes.absolute(t.forwarded_bytes);
        self.bridged_to_quic.absolute(t.bridged_to_quic);
        for (c, v) in self.binds.iter().zip(t.binds) {
            c.absolute(v);
        }
        for (c, v) in self.drops.iter().zip(t.drops) {
            c.absolute(v);
        }
    }
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayMetrics")
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl RelayMetrics {
    pub fn new() -> Arc<Self> {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(JOIN_LATENCY.to_owned()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let c = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let g =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        let by_kind = |name: &'static str| {
            MediaKind::ALL.map(|k| c(name, vec![Label::from_static_parts("kind", k.as_str())]))
        };
        // One drop-reason label scheme for both transports; each family carries the reasons
        // its transport can have.
        let by_reason = |name: &'static str, on: &[DropReason]| {
            DropReason::ALL.map(|r| {
                if on.contains(&r) {
                    c(name, vec![Label::from_static_parts("reason", r.as_str())])
                } else {
                    Counter::noop()
                }
            })
        };
        let m = Self {
            sessions: g("duet_sessions"),
            endpoints: g("duet_endpoints"),
            connections: g("duet_connections"),
            max_sessions: g("duet_max_sessions"),
            draining: g("duet_draining"),
            forwarded_packets: by_kind("duet_forwarded_packets_total"),
            forwarded_bytes: by_kind("duet_forwarded_bytes_total"),
            media_drops: by_reason("duet_media_dropped_total", DropReason::QUIC),
            signals_forwarded: c("duet_signals_forwarded_total", vec![]),
            signal_bytes_forwarded: c("duet_signal_bytes_forwarded_total", vec![]),
            joins: c("duet_joins_total", vec![]),
            resumes: c("duet_resumes_total", vec![]),
            join_latency: recorder
                .register_histogram(&Key::from_static_name(JOIN_LATENCY), &METADATA),
            quic_refused_handshakes: g("duet_quic_refused_handshakes"),
            quic_ignored_handshakes: g("duet_quic_ignored_handshakes"),
            quic_accepted_handshakes: g("duet_quic_accepted_handshakes"),
            quic_migrations: c("duet_quic_migrations_total", vec![]),
            fast_path: FastPathMetrics {
                received: c("duet_fastpath_received_packets_total", vec![]),
                forwarded_packets: c("duet_fastpath_forwarded_packets_total", vec![]),
                forwarded_bytes: c("duet_fastpath_forwarded_bytes_total", vec![]),
                bridged_to_quic: c(
                    "duet_fastpath_bridged_packets_total",
                    vec![Label::from_static_parts("direction", "to_quic")],
                ),
                bridged_to_fastpath: c(
                    "duet_fastpath_bridged_packets_total",
                    vec![Label::from_static_parts("direction", "to_fastpath")],
                ),
                binds: BindOutcome::LABELS.map(|o| {
                    c(
                        "duet_fastpath_binds_total",
                        vec![Label::from_static_parts("outcome", o)],
                    )
                }),
                drops: by_reason("duet_fastpath_dropped_total", DropReason::FAST_PATH),
            },
            recorder,
            handle,
        };
        // Register every labelled series up front, so dashboards see zeros, not gaps.
        for r in RefusalReason::ALL {
            m.refusal(*r).increment(0);
        }
        for f in Feature::ALL {
            m.feature_refused(*f).increment(0);
        }
        for k in CONTROL_ERRORS {
            m.control_error(k).increment(0);
        }
        for r in SIGNAL_DROPS {
            m.signal_dropped(r).increment(0);
        }
        for r in duet_proto::EndReason::ALL {
            m.session_ended(r.as_str()).increment(0);
        }
        for r in duet_proto::PeerLeftReason::ALL {
            m.session_ended(r.as_str()).increment(0);
        }
        m.draining.set(0.0);
        Arc::new(m)
    }

    fn labelled(&self, name: &'static str, label: &'static str, value: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(name, vec![Label::from_static_parts(label, value)]),
            &METADATA,
        )
    }

    /// Any counter of this relay, by name and labels (for modules with their own series).
    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Any gauge of this relay, by name (for modules with their own series).
    pub fn gauge(&self, name: &'static str) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
    }

    pub fn refusal(&self, r: RefusalReason) -> Counter {
        self.labelled("duet_refusals_total", "reason", r.as_str())
    }

    pub fn feature_refused(&self, f: Feature) -> Counter {
        self.labelled("duet_feature_requests_refused_total", "feature", f.as_str())
    }

    pub fn control_error(&self, kind: &'static str) -> Counter {
        self.labelled("duet_control_errors_total", "kind", kind)
    }

    pub fn signal_dropped(&self, reason: &'static str) -> Counter {
        self.labelled("duet_signals_dropped_total", "reason", reason)
    }

    pub fn session_ended(&self, reason: &'static str) -> Counter {
        self.labelled("duet_sessions_ended_total", "reason", reason)
    }

    /// Pre-registered: an index on the per-packet path, no lookup.
    #[inline]
    pub fn media_dropped(&self, r: DropReason) -> &Counter {
        &self.media_drops[r.index()]
    }

    /// Prometheus text exposition of this relay's metrics, then the process's own
    /// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...).
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str(&crate::process_metrics::render());
        text
    }

    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

//! Service-level objectives: `--slo "loss<0.5%,p99<20ms,join_p99<50ms"`. Sans-IO.
//!
//! Owns the SLO syntax, its error messages and the verdict against a [`Report`]. It does not
//! decide exit codes (the binary maps a miss to [`crate::exit::SLO_MISSED`]).
//!
//! Grammar: clauses separated by commas, each `METRIC OP VALUE[UNIT]`, spaces allowed.
//! OP is `<`, `<=`, `>` or `>=`. Media metrics take an optional kind prefix (`video.p99`);
//! without one they cover all kinds together.
//!
//! | metric | unit | meaning |
//! |---|---|---|
//! | `loss` | `%` | frames lost / frames sent |
//! | `p50` `p90` `p99` `p999` `max` `mean` | `us` `ms` `s` | one-way frame latency |
//! | `jitter`, `jitter_p99` | `us` `ms` `s` | mean / p99 of the transit-time difference (RFC 3550 D) |
//! | `misrouted` | none | frames delivered to another call's endpoint |
//! | `join_p50` `join_p99` `join_max` | `us` `ms` `s` | endpoint join time |
//! | `gap_p50` `gap_p99` `gap_max` | `us` `ms` `s` | per receiver, its longest media silence (e.g. across a `--chaos` kill) |
//! | `fail_rate` | `%` | failed calls / attempted calls |
//! | `failed` `established` `dropped` | none | call counts |
//! | `mem_per_session` | `B` `KiB` `MiB` `KB` `MB` | largest memory per session over the relays measured |
//! | `send_lag_p99` | `us` `ms` `s` | generator health: frames leaving late |

use std::fmt;
use std::str::FromStr;

use crate::hist::HistSummary;
use crate::report::{KindReport, Report, SloReport, SloViolationReport};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SloError {
    #[error("the SLO is empty; expected e.g. \"loss<0.5%,p99<20ms\"")]
    Empty,
    #[error("SLO clause {clause:?}: no comparison; expected METRIC<VALUE, e.g. \"p99<20ms\" (operators: < <= > >=)")]
    NoOperator { clause: String },
    #[error("SLO clause {clause:?}: unknown metric {metric:?}; known: {known}")]
    UnknownMetric {
        clause: String,
        metric: String,
        known: &'static str,
    },
    #[error("SLO clause {clause:?}: unknown media kind {kind:?}; expected audio, video or screen")]
    UnknownKind { clause: String, kind: String },
    #[error("SLO clause {clause:?}: {metric} has no per-kind value")]
    NotPerKind { clause: String, metric: String },
    #[error("SLO clause {clause:?}: {value:?} is not a number")]
    BadNumber { clause: String, value: String },
    #[error("SLO clause {clause:?}: {metric} needs {expected}, got {got}")]
    BadUnit {
        clause: String,
        metric: String,
        expected: &'static str,
        got: String,
    },
}

const KNOWN: &str = "loss, p50, p90, p99, p999, max, mean, jitter, jitter_p99, misrouted, \
join_p50, join_p99, join_max, gap_p50, gap_p99, gap_max, fail_rate, failed, established, dropped, mem_per_session, send_lag_p99";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, actual: f64, threshold: f64) -> bool {
        match self {
            Self::Lt => actual < threshold,
            Self::Le => actual <= threshold,
            Self::Gt => actual > threshold,
            Self::Ge => actual >= threshold,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// The dimension of a metric, which fixes the units it accepts. Values are kept in the
/// canonical unit: ratio as a fraction, time in ms, bytes, counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Ratio,
    TimeMs,
    Bytes,
    Count,
}

impl Dim {
    fn expected(self) -> &'static str {
        match self {
            Dim::Ratio => "a percentage (e.g. 0.5%)",
            Dim::TimeMs => "a time unit: us, ms or s (e.g. 20ms)",
            Dim::Bytes => "a size unit: B, KiB, MiB, KB or MB (e.g. 50KiB)",
            Dim::Count => "a plain count (e.g. 0)",
        }
    }
    /// Factor from `unit` to the canonical unit, if `unit` fits this dimension.
    fn factor(self, unit: &str) -> Option<f64> {
        match (self, unit) {
            (Dim::Ratio, "%") => Some(0.01),
            (Dim::TimeMs, "us" | "µs") => Some(0.001),
            (Dim::TimeMs, "ms") => Some(1.0),
            (Dim::TimeMs, "s") => Some(1000.0),
            (Dim::Bytes, "B" | "b") => Some(1.0),
            (Dim::Bytes, "KiB") => Some(1024.0),
            (Dim::Bytes, "MiB") => Some(1024.0 * 1024.0),
            (Dim::Bytes, "KB" | "kB") => Some(1000.0),
            (Dim::Bytes, "MB") => Some(1e6),
            (Dim::Count, "") => Some(1.0),
            _ => None,
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Dim::Ratio => "ratio",
            Dim::TimeMs => "ms",
            Dim::Bytes => "bytes",
            Dim::Count => "count",
        }
    }
}

fn metric_dim(name: &str) -> Option<(Dim, bool)> {
    // (dimension, may take a media-kind prefix)
    Some(match name {
        "loss" => (Dim::Ratio, true),
        "p50" | "p90" | "p99" | "p999" | "max" | "mean" | "jitter" | "jitter_p99" => {
            (Dim::TimeMs, true)
        }
        "misrouted" => (Dim::Count, true),
        "join_p50" | "join_p99" | "join_max" | "send_lag_p99" => (Dim::TimeMs, false),
        "gap_p50" | "gap_p99" | "gap_max" => (Dim::TimeMs, false),
        "fail_rate" => (Dim::Ratio, false),
        "failed" | "established" | "dropped" => (Dim::Count, false),
        "mem_per_session" => (Dim::Bytes, false),
        _ => return None,
    })
}

/// One parsed clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub text: String,
    /// `None` = all kinds.
    pub kind: Option<String>,
    pub metric: String,
    pub op: Op,
    /// In the metric's canonical unit.
    pub threshold: f64,
    dim: Dim,
}

/// A parsed `--slo` value.
#[derive(Debug, Clone, PartialEq)]
pub struct SloSpec {
    pub text: String,
    pub clauses: Vec<Clause>,
}

impl fmt::Display for SloSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_clause(raw: &str) -> Result<Clause, SloError> {
    let text: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    let no_op = || SloError::NoOperator {
        clause: text.clone(),
    };
    let pos = text.find(['<', '>']).ok_or_else(no_op)?;
    let (lhs, rest) = text.split_at(pos);
    let (op, rhs) = if let Some(r) = rest.strip_prefix("<=") {
        (Op::Le, r)
    } else if let Some(r) = rest.strip_prefix(">=") {
        (Op::Ge, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (Op::Lt, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (Op::Gt, r)
    } else {
        return Err(no_op());
    };
    if lhs.is_empty() || rhs.is_empty() {
        return Err(no_op());
    }
    let (kind, metric) = match lhs.split_once('.') {
        Some((k, m)) => (Some(k.to_owned()), m.to_owned()),
        None => (None, lhs.to_owned()),
    };
    let (dim, per_kind) = metric_dim(&metric).ok_or_else(|| SloError::UnknownMetric {
        clause: text.clone(),
        metric: metric.clone(),
        known: KNOWN,
    })?;
    if let Some(k) = &kind {
        if !per_kind {
            return Err(SloError::NotPerKind {
                clause: text.clone(),
                metric,
            });
        }
        if !matches!(k.as_str(), "audio" | "video" | "screen") {
            return Err(SloError::UnknownKind {
                clause: text.clone(),
                kind: k.clone(),
            });
        }
    }
    let split = rhs
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(rhs.len());
    let (num, unit) = rhs.split_at(split);
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| SloError::BadNumber {
            clause: text.clone(),
            value: num.to_owned(),
        })?;
    let factor = dim.factor(unit).ok_or_else(|| SloError::BadUnit {
        clause: text.clone(),
        metric: metric.clone(),
        expected: dim.expected(),
        got: if unit.is_empty() {
            "no unit".to_owned()
        } else {
            format!("{unit:?}")
        },
    })?;
    Ok(Clause {
        text,
        kind,
        metric,
        op,
        threshold: value * factor,
        dim,
    })
}

impl FromStr for SloSpec {
    type Err = SloError;
    fn from_str(s: &str) -> Result<Self, SloError> {
        let clauses = s
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(parse_clause)
            .collect::<Result<Vec<_>, _>>()?;
        if clauses.is_empty() {
            return Err(SloError::Empty);
        }
        Ok(Self {
            text: s.trim().to_owned(),
            clauses,
        })
    }
}

fn time(h: &HistSummary, metric: &str) -> Option<f64> {
    if h.count == 0 {
        return None;
    }
    Some(match metric {
        "p50" | "join_p50" | "gap_p50" => h.p50_ms,
        "p90" => h.p90_ms,
        "p99" | "join_p99" | "jitter_p99" | "send_lag_p99" | "gap_p99" => h.p99_ms,
        "p999" => h.p999_ms,
        "max" | "join_max" | "gap_max" => h.max_ms,
        _ => h.mean_ms,
    })
}

fn media_value(k: &KindReport, metric: &str) -> Option<f64> {
    match metric {
        "loss" => (k.frames_sent > 0).then_some(k.loss_ratio),
        "misrouted" => Some(k.misrouted as f64),
        "jitter" | "jitter_p99" => time(&k.jitter, metric),
        _ => time(&k.latency, metric),
    }
}

impl Clause {
    /// The report's value for this clause's metric, canonical unit; `None` when the report
    /// has no data for it (which fails the clause: an SLO cannot pass on no evidence).
    pub fn actual(&self, r: &Report) -> Option<f64> {
        let c = &r.calls;
        match self.metric.as_str() {
            "join_p50" | "join_p99" | "join_max" => time(&r.join, &self.metric),
            "gap_p50" | "gap_p99" | "gap_max" => time(&r.media_gap, &self.metric),
            "send_lag_p99" => time(&r.generator.send_lag, &self.metric),
            "fail_rate" => {
                (c.attempted > 0).then(|| (c.attempted - c.established) as f64 / c.attempted as f64)
            }
            "failed" => Some(c.failed as f64),
            "established" => Some(c.established as f64),
            "dropped" => Some(c.dropped_by_reason.values().sum::<u64>() as f64),
            "mem_per_session" => r
                .relays
                .iter()
                .filter_map(|x| x.memory_per_session_bytes)
                .reduce(f64::max),
            m => media_value(r.media.kind(self.kind.as_deref().unwrap_or("all"))?, m),
        }
    }

    fn show(&self, v: f64) -> String {
        match self.dim {
            Dim::Ratio => format!("{:.3}%", v * 100.0),
            Dim::TimeMs => format!("{v:.3}ms"),
            Dim::Bytes => format!("{:.1}KiB", v / 1024.0),
            Dim::Count => format!("{v}"),
        }
    }
}

impl SloSpec {
    /// Checks every clause against `r`.
    pub fn evaluate(&self, r: &Report) -> SloReport {
        let violations: Vec<_> = self
            .clauses
            .iter()
            .filter_map(|c| {
                let actual = c.actual(r);
                let ok = actual.is_some_and(|a| c.op.holds(a, c.threshold));
                (!ok).then(|| SloViolationReport {
                    clause: c.text.clone(),
                    actual,
                    threshold: c.threshold,
                    unit: c.dim.unit().to_owned(),
                    message: match actual {
                        Some(a) => format!(
                            "{} is {}, wanted {} {}",
                            c.kind
                                .as_ref()
                                .map(|k| format!("{k}.{}", c.metric))
                                .unwrap_or_else(|| c.metric.clone()),
                            c.show(a),
                            c.op.as_str(),
                            c.show(c.threshold)
                        ),
                        None => format!("{}: no data to check it against", c.text),
                    },
                })
            })
            .collect();
        SloReport {
            spec: self.text.clone(),
            passed: violations.is_empty(),
            violations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let s: SloSpec = "loss<0.5%, p99<20ms ,join_p99<=50ms,video.p999<0.1s,failed<=0"
            .parse()
            .unwrap();
        assert_eq!(s.clauses.len(), 5);
        assert_eq!(s.clauses[0].metric, "loss");
        assert!((s.clauses[0].threshold - 0.005).abs() < 1e-12);
        assert_eq!(s.clauses[1].threshold, 20.0);
        assert_eq!(s.clauses[2].op, Op::Le);
        assert_eq!(s.clauses[3].kind.as_deref(), Some("video"));
        assert_eq!(s.clauses[3].threshold, 100.0);
        assert_eq!(s.clauses[4].threshold, 0.0);
        let m: SloSpec = "mem_per_session<50KiB,p50<500us".parse().unwrap();
        assert_eq!(m.clauses[0].threshold, 51200.0);
        assert_eq!(m.clauses[1].threshold, 0.5);
    }

    #[test]
    fn bad_syntax_has_a_clear_error() {
        let e = |s: &str| s.parse::<SloSpec>().unwrap_err();
        assert_eq!(e(""), SloError::Empty);
        assert!(matches!(e("p99=20ms"), SloError::NoOperator { .. }));
        assert!(matches!(e("<20ms"), SloError::NoOperator { .. }));
        assert!(matches!(e("p98<20ms"), SloError::UnknownMetric { .. }));
        assert!(matches!(e("voice.p99<20ms"), SloError::UnknownKind { .. }));
        assert!(matches!(
            e("video.join_p99<20ms"),
            SloError::NotPerKind { .. }
        ));
        assert!(matches!(e("p99<fast"), SloError::BadNumber { .. }));
        assert!(matches!(e("p99<20"), SloError::BadUnit { .. }));
        assert!(matches!(e("loss<0.5"), SloError::BadUnit { .. }));
        assert!(matches!(e("failed<1%"), SloError::BadUnit { .. }));
        let msg = e("loss<0.5").to_string();
        assert!(msg.contains("percentage"), "{msg}");
    }
}

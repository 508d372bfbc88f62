//! Latency histograms (HdrHistogram, microseconds) and their form in the report. Sans-IO.
//!
//! Owns the histogram bounds, precision and serialization: a report stores every histogram
//! whole, as HdrHistogram's V2 "deflate" encoding in base64 (the format the Java and Rust
//! HdrHistogram log tools read), so reports from several generators merge exactly and their
//! percentiles are those of all samples together, never averages of percentiles. The summary
//! numbers beside it (`p50_ms`, ...) are derived from it for humans and SLO checks. It does
//! not decide what is measured (see `stats`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Lowest trackable value: 1 µs.
pub const LOW_US: u64 = 1;
/// Highest trackable value: 60 s. Larger samples are clamped (recorded as 60 s): nothing a
/// relay forwards should take that long, and the clamp keeps every histogram the same shape.
pub const HIGH_US: u64 = 60_000_000;
/// Three significant digits: p999 of a 20 ms latency is exact to 20 µs.
pub const SIGFIG: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum HistError {
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram does not decode: {0}")]
    Decode(String),
    #[error("histograms cannot be added: {0}")]
    Add(String),
    #[error("histogram does not encode: {0}")]
    Encode(String),
}

/// A histogram of microsecond values.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Hist {
    pub fn new() -> Self {
        // The bounds are constants that satisfy HdrHistogram's rules; this cannot fail.
        let mut h = Histogram::new_with_bounds(LOW_US, HIGH_US, SIGFIG)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        // A merged-in histogram from a build with other bounds must not make `add` fail.
        h.auto(true);
        Self(h)
    }

    /// Records one value in µs (clamped into the trackable range).
    #[inline]
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(LOW_US, HIGH_US));
    }

    pub fn add(&mut self, other: &Hist) -> Result<(), HistError> {
        self.0
            .add(&other.0)
            .map_err(|e| HistError::Add(format!("{e:?}")))
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Value at quantile `q` in µs (0 when empty).
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    pub fn mean_us(&self) -> f64 {
        if self.0.is_empty() {
            0.0
        } else {
            self.0.mean()
        }
    }

    pub fn max_us(&self) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.max()
        }
    }

    pub fn to_base64(&self) -> Result<String, HistError> {
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| HistError::Encode(format!("{e:?}")))?;
        Ok(B64.encode(buf))
    }

    pub fn from_base64(s: &str) -> Result<Self, HistError> {
        let bytes = B64.decode(s.trim())?;
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| HistError::Decode(e.to_string()))?;
        // Re-home into our standard shape so every merged histogram keeps the same bounds.
        let mut h = Hist::new();
        h.0.add(&decoded)
            .map_err(|e| HistError::Add(format!("{e:?}")))?;
        Ok(h)
    }

    /// The report's form of this histogram.
    pub fn summary(&self) -> Result<HistSummary, HistError> {
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Ok(HistSummary {
            count: self.count(),
            mean_ms: round3(self.mean_us() / 1000.0),
            p50_ms: ms(self.quantile_us(0.50)),
            p90_ms: ms(self.quantile_us(0.90)),
            p99_ms: ms(self.quantile_us(0.99)),
            p999_ms: ms(self.quantile_us(0.999)),
            max_ms: ms(self.max_us()),
            hdr: self.to_base64()?,
        })
    }
}

/// Rounds to 3 decimals (µs resolution when in ms) so reports diff cleanly.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A histogram in the report: its samples' count and percentiles in milliseconds, and the
/// whole histogram in `hdr` (base64 of HdrHistogram V2 deflate, values in µs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub hdr: String,
}

impl HistSummary {
    /// The histogram this summary carries.
    pub fn hist(&self) -> Result<Hist, HistError> {
        Hist::from_base64(&self.hdr)
    }

    pub fn empty() -> Self {
        // An empty histogram always serializes; fall back to an empty string only in theory.
        Hist::new().summary().unwrap_or(Self {
            count: 0,
            mean_ms: 0.0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            hdr: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialization_roundtrips_exactly() {
        let mut h = Hist::new();
        for v in [1, 5, 999, 20_000, 20_001, 59_999_999, 1_000_000_000] {
            h.record(v);
        }
        let back = Hist::from_base64(&h.to_base64().unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.max_us(), h.max_us());
        assert_eq!(h.count(), 7);
        assert!(h.max_us() <= HIGH_US + HIGH_US / 1000, "clamped");
    }

    #[test]
    fn summary_reads_in_ms() {
        let mut h = Hist::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0);
        assert!((s.p99_ms - 990.0).abs() < 1.0);
        assert_eq!(s.hist().unwrap(), h);
        let e = HistSummary::empty();
        assert_eq!(e.count, 0);
        assert_eq!(e.p99_ms, 0.0);
        assert!(Hist::from_base64("not base64!").is_err());
    }
}

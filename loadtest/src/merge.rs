//! `duet-loadtest merge`: one report from the reports of several generators. Sans-IO.
//!
//! Owns the rule that counters add and histograms merge exactly (the stored HdrHistograms
//! are added, then percentiles recomputed), so the merged p99 is the p99 of every sample of
//! every generator. Relay observations are kept side by side (each generator saw its own
//! relays; their figures do not add). The per-field rules live in [`Report::absorb`]; this
//! module owns the entry point and its errors. It does not read files (the binary does).

use crate::report::{Report, ReportError};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge: give at least one report")]
    Empty,
    #[error("report {index}: {source}")]
    Report { index: usize, source: ReportError },
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

//! The `[admission]` table: how the relay admits new QUIC handshakes under load: when it
//! asks for address validation (QUIC Retry), how many handshakes may be in flight at once,
//! in all and per source prefix. What the limits do at run time is `quic::admission`.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Admission of new QUIC connections (`[admission]` in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Ask a client whose address is not validated yet to prove it (a QUIC Retry, one more
    /// round trip) once this many handshakes are in flight; 0 = always [default: 0]
    #[arg(
        id = "retry_above_handshakes",
        long = "retry-above-handshakes",
        required = false,
        value_name = "N"
    )]
    pub retry_above_handshakes: u32,
    /// Handshakes in flight at most; beyond, new connections are refused [default: 1024]
    #[arg(
        id = "max_handshakes",
        long = "max-handshakes",
        required = false,
        value_name = "N"
    )]
    pub max_handshakes: u32,
    /// Handshakes in flight at most from one source prefix [default: 64]
    #[arg(
        id = "max_handshakes_per_source",
        long = "max-handshakes-per-source",
        required = false,
        value_name = "N"
    )]
    pub max_handshakes_per_source: u32,
    /// IPv4 prefix length a source is counted by [default: 32]
    #[arg(
        id = "source_prefix_v4",
        long = "source-prefix-v4",
        required = false,
        value_name = "BITS"
    )]
    pub source_prefix_v4: u8,
    /// IPv6 prefix length a source is counted by [default: 64]
    #[arg(
        id = "source_prefix_v6",
        long = "source-prefix-v6",
        required = false,
        value_name = "BITS"
    )]
    pub source_prefix_v6: u8,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            retry_above_handshakes: 0,
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
        }
    }
}

impl AdmissionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_handshakes == 0 {
            return Err(invalid(
                "admission.max_handshakes",
                "must be greater than 0",
            ));
        }
        if self.max_handshakes_per_source == 0 {
            return Err(invalid(
                "admission.max_handshakes_per_source",
                "must be greater than 0",
            ));
        }
        if self.retry_above_handshakes > self.max_handshakes {
            return Err(invalid(
                "admission.retry_above_handshakes",
                format!(
                    "must be at most admission.max_handshakes ({}), got {}",
                    self.max_handshakes, self.retry_above_handshakes
                ),
            ));
        }
        if !(8..=32).contains(&self.source_prefix_v4) {
            return Err(invalid(
                "admission.source_prefix_v4",
                format!("must be 8..=32, got {}", self.source_prefix_v4),
            ));
        }
        if !(16..=128).contains(&self.source_prefix_v6) {
            return Err(invalid(
                "admission.source_prefix_v6",
                format!("must be 16..=128, got {}", self.source_prefix_v6),
            ));
        }
        Ok(())
    }
}

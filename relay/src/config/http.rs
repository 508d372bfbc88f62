//! The `[http]` table: the bounds of the relay's HTTP listeners (ops, admin): how many
//! connections each holds, how long a client may take to send its request head and its
//! whole request, and the largest body. What they do at run time is `http`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Bounds of each HTTP listener (`[http]` in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections each HTTP listener holds at most; a new one past the cap replaces the
    /// oldest that is not in a request [default: 256]
    #[arg(
        id = "http_max_connections",
        long = "http-max-connections",
        required = false,
        value_name = "N"
    )]
    pub max_connections: u32,
    /// A client must send its request head within this long, ms [default: 5000]
    #[arg(
        id = "http_header_timeout_ms",
        long = "http-header-timeout-ms",
        required = false,
        value_name = "MS"
    )]
    pub header_timeout_ms: u64,
    /// A request (its body and the answer) must be done within this long, ms [default: 10000]
    #[arg(
        id = "http_request_timeout_ms",
        long = "http-request-timeout-ms",
        required = false,
        value_name = "MS"
    )]
    pub request_timeout_ms: u64,
    /// Largest request body, bytes [default: 65536]
    #[arg(
        id = "http_max_body_bytes",
        long = "http-max-body-bytes",
        required = false,
        value_name = "BYTES"
    )]
    pub max_body_bytes: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl HttpConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(invalid(
                "http.max_connections",
                format!("must be 1..=65536, got {}", self.max_connections),
            ));
        }
        for (field, v) in [
            ("http.header_timeout_ms", self.header_timeout_ms),
            ("http.request_timeout_ms", self.request_timeout_ms),
        ] {
            if !(100..=600_000).contains(&v) {
                return Err(invalid(field, format!("must be 100..=600000, got {v}")));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        Ok(())
    }
}

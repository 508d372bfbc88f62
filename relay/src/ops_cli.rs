//! `duet-relay drain | undrain | status --ops ADDR --token-file FILE`: the operator's drain
//! control of a running relay, through its ops listener's `/admin/` endpoints (see `ops`).
//!
//! Owns the subcommands and one blocking HTTP/1.0 request with a bounded time and size;
//! what a drain does is the relay's. Prints the relay's JSON answer; exits 0 on 2xx.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{parse_duration, read_credential, ConfigError};

/// Largest answer read.
const MAX_ANSWER: u64 = 64 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct OpsTarget {
    /// The relay's ops HTTP address (its `ops_listen`)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub ops: SocketAddr,
    /// File holding the credential (the relay's `ops_token_file`)
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Give up after this long, e.g. 5s
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The drain subcommands (flattened into the binary's command list).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OpsCommand {
    /// Start draining a running relay: readiness false, new joins refused, live calls told
    /// to move; what is left ends at the deadline
    Drain {
        #[command(flatten)]
        target: OpsTarget,
        /// Live sessions end this long after the drain starts [default: the relay's drain_deadline_ms]
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
        /// End the sessions left at once when no more than this many remain
        #[arg(long, default_value_t = 0)]
        min_sessions: usize,
    },
    /// Undo a drain: the relay takes joins again and reads ready
    Undrain {
        #[command(flatten)]
        target: OpsTarget,
    },
    /// Print a relay's drain state, sessions and endpoints (JSON)
    Status {
        #[command(flatten)]
        target: OpsTarget,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpsCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} sent no HTTP answer")]
    BadResponse { addr: SocketAddr },
    #[error("{addr}{path} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: &'static str,
        status: u16,
        body: String,
    },
}

/// Runs one drain subcommand; the relay's JSON answer goes to stdout.
pub fn run(cmd: OpsCommand) -> Result<(), OpsCliError> {
    let (target, method, path, body) = match cmd {
        OpsCommand::Drain {
            target,
            deadline,
            min_sessions,
        } => {
            let mut body = serde_json::json!({ "min_sessions": min_sessions });
            if let Some(d) = deadline {
                body["deadline_ms"] = (d.as_millis() as u64).into();
            }
            (target, "POST", "/admin/drain", body.to_string())
        }
        OpsCommand::Undrain { target } => (target, "POST", "/admin/undrain", String::new()),
        OpsCommand::Status { target } => (target, "GET", "/admin/status", String::new()),
    };
    let token = read_credential("--token-file", Some(&target.token_file))?.unwrap_or_default();
    let (status, answer) = request(&target, method, path, &token, &body)?;
    if !(200..300).contains(&status) {
        return Err(OpsCliError::Status {
            addr: target.ops,
            path,
            status,
            body: answer.trim().to_owned(),
        });
    }
    println!("{}", answer.trim());
    Ok(())
}

fn request(
    t: &OpsTarget,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String), OpsCliError> {
    let addr = t.ops;
    let io = |source| OpsCliError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, t.timeout).map_err(io)?;
    s.set_read_timeout(Some(t.timeout)).map_err(io)?;
    s.set_write_timeout(Some(t.timeout)).map_err(io)?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(OpsCliError::BadResponse { addr })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(OpsCliError::BadResponse { addr })?;
    Ok((status, body.to_owned()))
}

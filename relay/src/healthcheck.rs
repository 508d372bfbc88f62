//! The client side of the ops endpoint's `/healthz`, for `duet-relay healthcheck`: a
//! container `HEALTHCHECK` in an image that has no curl.
//!
//! Owns one blocking HTTP/1.0 `GET` with a bounded total time and the reading of its status
//! line. It does not define what healthy means (that is `ops`), and it follows no redirect,
//! keeps no connection and reads no more than the status line needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest response head we read: the status line is all we need.
const MAX_HEAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} sent no HTTP status line")]
    BadResponse { addr: SocketAddr },
    #[error("{addr}{path} answered {status}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
    },
}

/// `GET http://{addr}{path}`: `Ok` on a 2xx status, within `timeout` in all.
pub fn check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    let until = Instant::now() + timeout;
    let left = || {
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(HealthcheckError::Timeout { addr, timeout })
    };
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| HealthcheckError::Connect { addr, source })?;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            HealthcheckError::Timeout { addr, timeout }
        }
        _ => HealthcheckError::Io { addr, source },
    };
    conn.set_write_timeout(Some(left()?)).map_err(io)?;
    conn.write_all(request(path).as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(MAX_HEAD);
    let mut buf = [0u8; 256];
    let status = loop {
        if let Some(status) = parse_status_line(&head) {
            break status;
        }
        if head.len() >= MAX_HEAD {
            return Err(HealthcheckError::BadResponse { addr });
        }
        conn.set_read_timeout(Some(left()?)).map_err(io)?;
        let n = conn.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Err(HealthcheckError::BadResponse { addr });
        }
        head.extend_from_slice(&buf[..n]);
    };
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(HealthcheckError::Status {
            addr,
            path: path.to_owned(),
            status,
        })
    }
}

/// HTTP/1.0: the server closes after answering, so no keep-alive handling is needed.
fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nUser-Agent: duet-relay-healthcheck\r\n\r\n")
}

/// The status code of a complete status line (`HTTP/1.x NNN ...\r\n`), or `None` while the
/// line is incomplete or when it is not one.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).ok()?.trim_end();
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK"),
            None,
            "incomplete line"
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(parse_status_line(b"\xff\xfe\n"), None);
    }

    #[test]
    fn the_request_is_http_1_0() {
        assert!(request("/healthz").starts_with("GET /healthz HTTP/1.0\r\n"));
        assert!(request("/healthz").ends_with("\r\n\r\n"));
    }
}

//! A relay's ops endpoints over real HTTP: [`http_get`] any path, [`http_post`] to the admin API, [`scrape`] `/metrics`, and
//! read series from Prometheus text ([`metric`] one series exactly, [`metric_sum`] every
//! series of a name whose labels match).
//!
//! What the relay exports and under which names is the relay's; this only reads.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::STEP;

/// GET `path` on `addr` (HTTP/1.1, connection closed after): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// POST a JSON `body` to `path` on `addr` with a bearer credential: (status, body).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    body: &str,
) -> Result<(u16, String)> {
    request(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

async fn request(addr: SocketAddr, req: String) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}

/// `/metrics` of the relay whose ops address is `ops`; panics unless it answers 200.
pub async fn scrape(ops: SocketAddr) -> String {
    let (status, body) = http_get(ops, "/metrics").await.expect("scrape /metrics");
    assert_eq!(status, 200, "/metrics answered {status}");
    body
}

/// The value of one series (`name{labels}` exactly as rendered, or a bare name); 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if k == series {
                return v.parse().unwrap_or(0.0);
            }
        }
    }
    0.0
}

/// The sum of every sample of `name` whose label text contains each of `labels`
/// (e.g. `&["moved"]`); 0 if none.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `series` reaches at least `at_least` (counters are updated asynchronously)
/// or [`STEP`] passes; returns the last value read.
pub async fn wait_metric(ops: SocketAddr, series: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let v = metric(&scrape(ops).await, series);
        if v >= at_least || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

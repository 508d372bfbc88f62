//! Relay and generator resource figures: CPU seconds, RSS, sessions, forwarded packets.
//!
//! Owns where those numbers come from and how they are parsed: `/proc/<pid>/stat`,
//! `/proc/<pid>/status` and `/proc/<pid>/task/*/stat` (per-thread CPU, which is how an
//! embedded relay's CPU is told apart from the clients': it runs on its own runtime whose
//! threads are named [`RELAY_THREAD_PREFIX`]), and the relay's Prometheus `/metrics`. The
//! parsers are pure and unit-tested; the readers do the I/O. It does not decide what goes in
//! the report (see `runner`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Thread-name prefix of the embedded relay's runtime (Linux keeps 15 bytes of a name).
pub const RELAY_THREAD_PREFIX: &str = "duet-relay";
/// Thread-name prefix of the generator's client runtime.
pub const CLIENT_THREAD_PREFIX: &str = "lt-client";

/// CPU ticks per second for `/proc` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(comm, utime + stime in ticks)` from a `/proc/.../stat` line.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    // comm may hold spaces and parentheses: it spans from the first '(' to the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After comm: state(3) ppid(4) ... utime(14) stime(15) in proc(5) numbering.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A `kB` field of `/proc/.../status` (`VmRSS`, `VmHWM`), in bytes.
pub fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

fn proc_dir(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}")),
        None => PathBuf::from("/proc/self"),
    }
}

/// CPU seconds of a whole process (live and exited threads).
pub fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let text = std::fs::read_to_string(proc_dir(pid).join("stat")).ok()?;
    parse_stat(&text).map(|(_, t)| t as f64 / clock_ticks())
}

/// Resident set size of a process, bytes.
pub fn process_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    parse_status_kb(&text, "VmRSS")
}

/// CPU seconds of the live threads of a process whose name starts with `prefix`.
pub fn threads_cpu_seconds(pid: Option<u32>, prefix: &str) -> Option<f64> {
    let dir = proc_dir(pid).join("task");
    let ticks: u64 = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(Path::new(&e.path()).join("stat")).ok())
        .filter_map(|t| parse_stat(&t))
        .filter(|(comm, _)| comm.starts_with(prefix))
        .map(|(_, t)| t)
        .sum();
    Some(ticks as f64 / clock_ticks())
}

/// One sample of Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text format (comments skipped, timestamps ignored).
pub fn parse_prometheus(text: &str) -> Vec<PromSample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_prom_line)
        .collect()
}

fn parse_prom_line(line: &str) -> Option<PromSample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let labels = parse_labels(line.get(open + 1..close)?)?;
            (&line[..open], labels, &line[close + 1..])
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(PromSample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.insert(key.trim().to_owned(), val);
    }
}

/// What the load test reads from a relay's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayMetricsView {
    pub sessions: Option<u64>,
    pub forwarded_packets: Option<u64>,
    pub forwarded_bytes: Option<u64>,
    pub media_dropped: BTreeMap<String, u64>,
    pub refusals: BTreeMap<String, u64>,
    /// `process_cpu_seconds_total`, if the relay exports process metrics.
    pub process_cpu_seconds: Option<f64>,
    /// `process_resident_memory_bytes`, likewise.
    pub process_rss_bytes: Option<u64>,
}

impl RelayMetricsView {
    pub fn from_text(text: &str) -> Self {
        let mut v = Self::default();
        for s in parse_prometheus(text) {
            let n = s.value.max(0.0) as u64;
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            match s.name.as_str() {
                "duet_sessions" => v.sessions = Some(n),
                "duet_forwarded_packets_total" => {
                    *v.forwarded_packets.get_or_insert(0) += n;
                }
                "duet_forwarded_bytes_total" => *v.forwarded_bytes.get_or_insert(0) += n,
                "duet_media_dropped_total" if n > 0 => {
                    *v.media_dropped.entry(label("reason")).or_default() += n;
                }
                "duet_refusals_total" if n > 0 => {
                    *v.refusals.entry(label("reason")).or_default() += n;
                }
                "process_cpu_seconds_total" => v.process_cpu_seconds = Some(s.value),
                "process_resident_memory_bytes" => v.process_rss_bytes = Some(n),
                _ => {}
            }
        }
        v
    }
}

/// GETs `http://addr/metrics` (plain HTTP/1.0: the ops endpoint is Prometheus text).
pub async fn fetch_metrics(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        // Bounded: a relay's metrics are a few tens of KB.
        s.take(16 << 20).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200")
        {
            return Err(std::io::Error::other(format!(
                "GET /metrics: {}",
                head.lines().next().unwrap_or("no answer")
            )));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "GET /metrics timed out"))?
}

/// Raises the soft open-file limit to the hard one: every simulated endpoint holds a UDP
/// socket, and thousands of calls exceed the usual soft limit of 1024.
pub fn raise_fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    // rlim_t is u64 on Linux but not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    Some(r.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line = "1234 (duet-relay (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("duet-relay (x)".into(), 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(process_cpu_seconds(None).is_some());
        assert!(process_rss_bytes(None).unwrap() > 0);
        assert!(threads_cpu_seconds(None, "").is_some());
    }

    #[test]
    fn parses_relay_metrics() {
        let text = r#"# TYPE duet_sessions gauge
duet_sessions 12
duet_forwarded_packets_total{kind="audio"} 100
duet_forwarded_packets_total{kind="video"} 50
duet_forwarded_bytes_total{kind="audio"} 1000
duet_media_dropped_total{reason="rate_limited"} 3
duet_media_dropped_total{reason="no_peer"} 0
duet_refusals_total{reason="session_full"} 2
weird{a="x\"y,z",b="2"} 1.5e3 1700000000
"#;
        let v = RelayMetricsView::from_text(text);
        assert_eq!(v.sessions, Some(12));
        assert_eq!(v.forwarded_packets, Some(150));
        assert_eq!(v.forwarded_bytes, Some(1000));
        assert_eq!(v.media_dropped.get("rate_limited"), Some(&3));
        assert!(!v.media_dropped.contains_key("no_peer"));
        assert_eq!(v.refusals.get("session_full"), Some(&2));
        assert_eq!(v.process_rss_bytes, None);
        let w = parse_prometheus(text).pop().unwrap();
        assert_eq!(w.labels.get("a").map(String::as_str), Some("x\"y,z"));
        assert_eq!(w.value, 1500.0);
    }
}

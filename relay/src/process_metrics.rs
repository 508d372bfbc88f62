//! The standard Prometheus `process_*` series (CPU seconds, resident and virtual memory,
//! open and maximum file descriptors, threads, start time), read from `/proc/self` when
//! `/metrics` is scraped, so dashboards can divide CPU and memory by `duet_sessions`.
//!
//! Owns the reading and the text; nothing is sampled between scrapes. The figures are the
//! whole process's: several relays in one process (tests, the embedded load test) report the
//! same numbers. Linux only; elsewhere nothing is rendered.

use std::fmt::Write;

/// What `/proc/self/stat` tells, in its own units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
    start_ticks_after_boot: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field n is rest[n - 3].
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: num(14)?,
        stime_ticks: num(15)?,
        threads: num(20)?,
        start_ticks_after_boot: num(22)?,
        vsize_bytes: num(23)?,
        rss_pages: num(24)?,
    })
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The sampled values, in Prometheus units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

fn write_series(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

fn render_sample(s: &Sample) -> String {
    let mut out = String::with_capacity(1024);
    let cpu_help = "Total user and system CPU time spent in seconds.";
    write_series(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        cpu_help,
        s.cpu_seconds,
    );
    let rss_help = "Resident memory size in bytes.";
    write_series(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        rss_help,
        s.resident_bytes,
    );
    let vm_help = "Virtual memory size in bytes.";
    write_series(
        &mut out,
        "process_virtual_memory_bytes",
        "gauge",
        vm_help,
        s.virtual_bytes,
    );
    write_series(
        &mut out,
        "process_threads",
        "gauge",
        "Number of OS threads.",
        s.threads,
    );
    if let Some(t) = s.start_time_seconds {
        let help = "Start time of the process since unix epoch in seconds.";
        write_series(&mut out, "process_start_time_seconds", "gauge", help, t);
    }
    if let Some(n) = s.open_fds {
        write_series(
            &mut out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            n,
        );
    }
    if let Some(n) = s.max_fds {
        let help = "Maximum number of open file descriptors.";
        write_series(&mut out, "process_max_fds", "gauge", help, n);
    }
    out
}

/// The `process_*` series as Prometheus text; empty where `/proc` cannot be read.
#[cfg(target_os = "linux")]
pub fn render() -> String {
    sample().map(|s| render_sample(&s)).unwrap_or_default()
}

#[cfg(not(target_os = "linux"))]
pub fn render() -> String {
    String::new()
}

#[cfg(target_os = "linux")]
fn sample() -> Option<Sample> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    // SAFETY: sysconf and getrlimit only read process-wide values into plain integers.
    let (ticks, page, max_fds) = unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        let max = (libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0).then_some(lim.rlim_cur);
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
            max,
        )
    };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    let page = u64::try_from(page).ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));
    Some(Sample {
        cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks as f64,
        resident_bytes: stat.rss_pages.saturating_mul(page),
        virtual_bytes: stat.vsize_bytes,
        threads: stat.threads,
        start_time_seconds: boot
            .map(|b| b as f64 + stat.start_ticks_after_boot as f64 / ticks as f64),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        // rlim_t is u64 here but not on every target.
        #[allow(clippy::unnecessary_cast)]
        max_fds: max_fds.map(|m| m as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line's shape, with a command name holding both a space and a parenthesis.
    const STAT: &str = "4242 (duet (relay) x) S 1 4242 4242 0 -1 4194560 1520 0 0 0 \
        250 75 0 0 20 0 9 0 123456 987654321 3000 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17664 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                threads: 9,
                start_ticks_after_boot: 123456,
                vsize_bytes: 987654321,
                rss_pages: 3000,
            }
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None, "truncated");
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn boot_time_from_proc_stat() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(parse_boot_time(text), Some(1_700_000_000));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn rendered_text_names_type_and_value() {
        let text = render_sample(&Sample {
            cpu_seconds: 3.25,
            resident_bytes: 12_288_000,
            virtual_bytes: 1,
            threads: 9,
            start_time_seconds: Some(1_700_001_234.5),
            open_fds: Some(12),
            max_fds: None,
        });
        assert!(text.contains(
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.25\n"
        ));
        assert!(text.contains("process_resident_memory_bytes 12288000\n"));
        assert!(text.contains("process_start_time_seconds 1700001234.5\n"));
        assert!(text.contains("process_open_fds 12\n"));
        assert!(!text.contains("process_max_fds"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_cpu_and_memory() {
        let s = sample().unwrap();
        assert!(s.resident_bytes > 0);
        assert!(s.threads >= 1);
        assert!(s.open_fds.unwrap() >= 3);
    }
}

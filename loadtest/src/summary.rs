//! The human-readable end-of-run summary printed on stdout. Sans-IO.
//!
//! Owns only presentation: every number comes from the [`Report`], so what a person reads
//! and what the JSON says never disagree.

use std::fmt::Write as _;

use crate::report::Report;

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "duet-loadtest: {} calls, profile {}, {}s + ramp {}/s, {}, e2ee {}{}, {} generator(s){}",
        c.calls,
        c.profile,
        c.duration_s,
        c.ramp_per_s,
        if c.embedded_relay {
            "embedded relay".to_owned()
        } else {
            format!("{} relay node(s)", c.relays.len())
        },
        if c.e2ee { "on" } else { "off" },
        if c.e2ee && !c.e2ee_active {
            " (requested, not active)"
        } else {
            ""
        },
        r.generators,
        if r.partial {
            format!(" — PARTIAL ({:?})", r.stop_reason).to_lowercase()
        } else {
            String::new()
        }
    );
    let k = &r.calls;
    let _ = write!(
        s,
        "calls: {} established / {} attempted / {} planned, {} failed",
        k.established, k.attempted, k.planned, k.failed
    );
    if !k.failed_by_reason.is_empty() {
        let reasons: Vec<String> = k
            .failed_by_reason
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = write!(s, " ({})", reasons.join(", "));
    }
    if !k.dropped_by_reason.is_empty() {
        let reasons: Vec<String> = k
            .dropped_by_reason
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = write!(s, "; dropped mid-call: {}", reasons.join(", "));
    }
    let _ = writeln!(s, "; peak concurrent {}", k.peak_concurrent);
    if !k.by_transport.is_empty() {
        let parts: Vec<String> = k
            .by_transport
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        let _ = writeln!(s, "calls by transport: {}", parts.join(", "));
    }
    let _ = writeln!(
        s,
        "join: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} endpoints)",
        r.join.p50_ms, r.join.p99_ms, r.join.max_ms, r.join.count
    );
    let _ = writeln!(
        s,
        "{:<7} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10}",
        "kind",
        "frames tx",
        "frames rx",
        "dgrams tx",
        "MiB tx",
        "loss %",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "jitter ms"
    );
    let rows = r
        .media
        .kinds()
        .into_iter()
        .filter(|(_, k)| k.frames_sent > 0)
        .chain([("all", &r.media.all)]);
    for (name, m) in rows {
        let _ = writeln!(
            s,
            "{:<7} {:>9} {:>9} {:>10} {:>10.2} {:>8.3} {:>9.3} {:>9.3} {:>9.3} {:>10.3}",
            name,
            m.frames_sent,
            m.frames_received,
            m.datagrams_sent,
            mib(m.bytes_sent),
            m.loss_ratio * 100.0,
            m.latency.p50_ms,
            m.latency.p99_ms,
            m.latency.p999_ms,
            m.jitter.mean_ms
        );
    }
    let t = &r.transport;
    let _ = writeln!(
        s,
        "transport: {} datagrams sent, {} received, {} incomplete frames dropped, max datagram {} B",
        t.datagrams_sent, t.datagrams_received, t.incomplete_frames_dropped, t.max_datagram_bytes
    );
    if let Some(cpu) = r.generator.cpu_seconds {
        let _ = writeln!(
            s,
            "generator: {cpu:.2} CPU s, send lag p99 {:.2} ms",
            r.generator.send_lag.p99_ms
        );
    }
    for x in &r.relays {
        let _ = write!(s, "relay {} ({}):", x.name, x.source);
        if let Some(c) = x.cpu_seconds {
            let _ = write!(s, " {c:.2} CPU s");
        }
        if let Some(p) = x.cpu_us_per_forwarded_packet {
            let _ = write!(s, ", {p:.2} CPU µs/forwarded packet");
        }
        if let (Some(a), Some(b)) = (x.rss_start_bytes, x.rss_peak_bytes) {
            let _ = write!(s, ", RSS {:.1} → {:.1} MiB", mib(a), mib(b));
        }
        if let Some(m) = x.memory_per_session_bytes {
            let _ = write!(
                s,
                ", {:.1} KiB/session ({})",
                m / 1024.0,
                x.memory_scope.as_deref().unwrap_or("?")
            );
        }
        if !x.media_dropped.is_empty() {
            let d: Vec<String> = x
                .media_dropped
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            let _ = write!(s, ", dropped {}", d.join(" "));
        }
        let _ = writeln!(s);
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    if let Some(slo) = &r.slo {
        if slo.passed {
            let _ = writeln!(s, "SLO met: {}", slo.spec);
        } else {
            let _ = writeln!(s, "SLO MISSED: {}", slo.spec);
            for v in &slo.violations {
                let _ = writeln!(s, "  - {}", v.message);
            }
        }
    }
    s
}

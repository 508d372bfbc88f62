//! Figures for `benches/RESULTS.md` ("Handshake floods"), not a CI test (`#[ignore]`): a
//! relay process under a flood of QUIC Initials from a socket that never answers, while a
//! call runs. Run with `benches/handshake-flood.sh`.
//!
//! Per configuration: attempts/s reached, Retries and handshakes the relay counted, bytes
//! drawn per byte sent, relay RSS before / peak during / after, the live call's loss and
//! one-way latency (p50/p99/max), a join during the flood, and handshakes/s served to real
//! clients (each answering the Retry) when nothing floods.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use duet_proto::{MediaHeader, MediaKind};
use duet_testkit::flood::{flood_initials, Flood};
use duet_testkit::{client_endpoint, metric, scrape, Raw, RelayProcess, RelayUnderTest};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

async fn run(label: &str, extra: &[&str], attempts: u64, per_sec: u64) -> Result<()> {
    let relay = RelayProcess::builder()
        .args(extra.iter().copied())
        .start()?;
    let pid = relay.pid();
    let (a, _) = Raw::join(&relay, "live", "alice", "phone").await?;
    let (b, _) = Raw::join(&relay, "live", "bob", "laptop").await?;
    duet_testkit::raw::assert_datagrams_flow(&a, &b).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);
    let t0 = Instant::now();

    // The call: 50 packets/s each way (20 ms audio), stamped with their send time.
    let stop = Instant::now() + Duration::from_secs(6);
    let sender = |c: quinn::Connection| {
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while Instant::now() < stop {
                tick.tick().await;
                let mut d = MediaHeader::new(MediaKind::Audio).to_bytes().to_vec();
                d.extend_from_slice(&(t0.elapsed().as_nanos() as u64).to_be_bytes());
                d.resize(160, 0);
                if c.send_datagram(Bytes::from(d)).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let receiver = |c: quinn::Connection| {
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Ok(Ok(d)) =
                tokio::time::timeout(Duration::from_secs(2), c.read_datagram()).await
            {
                if let Some(ns) = d.get(2..10).and_then(|s| s.try_into().ok()) {
                    let sent = Duration::from_nanos(u64::from_be_bytes(ns));
                    lat.push(t0.elapsed().saturating_sub(sent));
                }
            }
            lat
        })
    };
    let (sa, sb) = (sender(a.conn.clone()), sender(b.conn.clone()));
    let (ra, rb) = (receiver(a.conn.clone()), receiver(b.conn.clone()));
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < stop {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let m0 = scrape(relay.ops_addr()).await;
    let cert = relay.cert_pem();
    let flood = flood_initials(
        relay.quic_addr(),
        &cert,
        Flood {
            attempts,
            per_sec,
            linger: Duration::from_millis(200),
            // One 1200-byte Initial per attempt (X25519 only): the cheapest attempt to
            // make, so the flooder on the same 2 cores gets closest to the asked rate.
            small_hello: true,
        },
    );
    let join = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let r = Raw::join(&relay, "during", "carol", "phone").await;
        (r.is_ok(), t.elapsed())
    };
    let (flood, (joined, join_took)) = tokio::join!(flood, join);
    let flood = flood?;
    let m1 = scrape(relay.ops_addr()).await;
    let peak = sampler.await?;
    let (sent_a, sent_b) = (sa.await?, sb.await?);
    let (mut la, mut lb) = (ra.await?, rb.await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(pid);

    let d = |k: &str| metric(&m1, k) - metric(&m0, k);
    let retried = d(r#"duet_quic_handshakes_total{outcome="retried"}"#);
    let accepted = d(r#"duet_quic_handshakes_total{outcome="accepted"}"#);
    let refused = d(r#"duet_quic_handshakes_refused_total{reason="too_many_handshakes"}"#)
        + d(r#"duet_quic_handshakes_refused_total{reason="per_source"}"#);
    let secs = flood.elapsed.as_secs_f64().max(1e-3);
    let loss = |sent: u64, got: usize| 100.0 * (1.0 - got as f64 / sent.max(1) as f64);
    let mut all: Vec<Duration> = la.iter().chain(lb.iter()).copied().collect();
    println!(
        "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} / {} / {} | {:.2} % / {:.2} % | {:.2} / {:.2} / {:.2} | {} in {:.0} ms |",
        flood.attempts as f64 / secs,
        retried / secs,
        accepted,
        refused,
        flood.amplification(),
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024,
        loss(sent_a, lb.len()),
        loss(sent_b, la.len()),
        pct(&mut all, 0.5).as_secs_f64() * 1e3,
        pct(&mut all, 0.99).as_secs_f64() * 1e3,
        pct(&mut all, 1.0).as_secs_f64() * 1e3,
        if joined { "joined" } else { "FAILED" },
        join_took.as_secs_f64() * 1e3,
    );
    la.clear();
    lb.clear();
    Ok(())
}

/// Handshakes per second a relay serves to real clients that answer its Retry (full TLS
/// 1.3 with X25519MLKEM768), 4 at a time, for `for_secs`.
async fn served(extra: &[&str], for_secs: u64) -> Result<f64> {
    let relay = RelayProcess::builder()
        .args(extra.iter().copied())
        .start()?;
    let ep = client_endpoint(&relay.cert_pem())?;
    let until = Instant::now() + Duration::from_secs(for_secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (ep, addr) = (ep.clone(), relay.quic_addr());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                if let Ok(c) = ep.connect(addr, "localhost") {
                    if let Ok(conn) = c.await {
                        conn.close(0u32.into(), b"");
                        n += 1;
                    }
                }
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: benches/handshake-flood.sh"]
async fn handshake_flood_figures() -> Result<()> {
    let attempts: u64 = std::env::var("FLOOD_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let per_sec: u64 = std::env::var("FLOOD_PER_SEC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("flood: {attempts} attempts at {per_sec}/s asked");
    println!("| config | attempts/s | Retries/s | handshakes started | refused | bytes drawn / sent | RSS MiB before / peak / after | call loss a->b / b->a | one-way ms p50 / p99 / max | join during flood |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    run("no flood (baseline)", &[], 0, per_sec).await?;
    run("default (Retry always)", &[], attempts, per_sec).await?;
    run(
        "no Retry below the cap (--retry-above-handshakes 1024)",
        &["--retry-above-handshakes", "1024"],
        attempts,
        per_sec,
    )
    .await?;
    let with_retry = served(&[], 3).await?;
    let without = served(&["--retry-above-handshakes", "1024"], 3).await?;
    println!("served handshakes/s (4 clients at a time, nothing flooding): {with_retry:.0} with Retry, {without:.0} without");
    Ok(())
}

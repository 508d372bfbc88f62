//! `duet-loadtest udp`: the same paced load against the C baseline forwarder, the relay's
//! raw UDP fast path and its QUIC datagram path, so their costs compare side by side.
//!
//! Owns each target's set-up (baseline: hellos from both members, like `loadgen.c`;
//! fastpath: a control connection per endpoint for the offer, then BIND from the endpoint's
//! raw socket until the relay confirms; quic: SDK clients joined without E2EE), the
//! measurement window (forwarder CPU from /proc around the send window and drain), the
//! report ([`UdpReport`], documented in `REPORT.md`) and the one-line `RESULT` summary.
//! Pacing and receiving are in [`crate::udp`].

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use duet_proto::fastpath::{FastPathHeader, PacketType};
use duet_proto::{DeviceId, MediaKind, SessionId, SigningKey, UserId};
use serde::{Deserialize, Serialize};

use crate::cli::{UdpArgs, UdpTargetKind};
use crate::fpctl::{self, Control};
use crate::udp::{self, RecvStats, SendStats, STOP};
use crate::{resources, rng, target};

/// `schema` of a udp report.
pub const UDP_SCHEMA: &str = "duet-loadtest-udp/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpReport {
    pub schema: String,
    pub tool: String,
    pub stop_reason: String,
    pub target: String,
    pub target_addr: String,
    pub fast_path_addr: Option<String>,
    pub pairs: u32,
    pub endpoints: u32,
    pub size_bytes: u32,
    pub target_pps: f64,
    pub duration_s: f64,
    pub idle: bool,
    pub setup: SetupReport,
    pub sent: u64,
    pub send_failed: u64,
    pub skipped: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub bad: u64,
    pub elapsed_s: f64,
    pub offered_pps: f64,
    pub received_pps: f64,
    pub loss_pct: f64,
    pub latency_us: LatencyUs,
    pub relay: Option<RelayUdp>,
    pub generator_cpu_s: f64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupReport {
    pub pairs_ready: u32,
    pub pairs_failed: u32,
    pub failures: BTreeMap<String, u64>,
    pub hellos_back: Option<u64>,
    pub binds_confirmed: Option<u64>,
    pub setup_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub histogram: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayUdp {
    pub pid: u32,
    pub cpu_s: Option<f64>,
    pub cpu_us_per_packet: Option<f64>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub rss_per_session_bytes: Option<f64>,
}

impl UdpReport {
    /// The `RESULT key=value ...` line (loadgen's fields, plus relay CPU and the target).
    pub fn result_line(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("nan".to_string(), |v| format!("{v:.d$}"));
        let r = self.relay.as_ref();
        format!(
            "RESULT target={} K={} size={} target_pps={:.0} sent={} recv={} offered_pps={:.0} \
             recv_pps={:.0} loss_pct={:.4} p50_us={} p99_us={} p999_us={} max_us={} \
             relay_cpu_s={} relay_cpu_us_per_pkt={} loadgen_cpu_s={:.3} sendfail={} bad={} \
             skipped={} elapsed_s={:.3} ready_pairs={} stop={}",
            self.target,
            self.pairs,
            self.size_bytes,
            self.target_pps,
            self.sent,
            self.received,
            self.offered_pps,
            self.received_pps,
            self.loss_pct,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            f(r.and_then(|r| r.cpu_s), 3),
            f(r.and_then(|r| r.cpu_us_per_packet), 3),
            self.generator_cpu_s,
            self.send_failed,
            self.bad,
            self.skipped,
            self.elapsed_s,
            self.setup.pairs_ready,
            self.stop_reason,
        )
    }
}

/// What the target-specific part hands back.
struct Measured {
    setup: SetupReport,
    fast_path_addr: Option<SocketAddr>,
    send: SendStats,
    recv: RecvStats,
    cpu: CpuWindow,
    rss: (Option<u64>, Option<u64>),
    warnings: Vec<String>,
}

fn kind_for(size: usize) -> MediaKind {
    if size <= 200 {
        MediaKind::Audio
    } else {
        MediaKind::Video
    }
}

fn random_base() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    rng::mix64(nanos ^ (u64::from(std::process::id()) << 40)) & !0xF_FFFF
}

/// Forwarder CPU seconds and RSS now.
fn relay_sample(pid: Option<u32>) -> (Option<f64>, Option<u64>) {
    match pid {
        Some(p) => (
            resources::process_cpu_seconds(Some(p)),
            resources::process_rss_bytes(Some(p)),
        ),
        None => (None, None),
    }
}

/// Forwarder CPU seconds at the start and end of the measured window.
type CpuWindow = Option<(f64, f64)>;

/// The measured window shared by the raw targets: receiver on, pace, drain, receiver off.
fn raw_window(
    socks: Arc<Vec<UdpSocket>>,
    prefixes: &[Vec<u8>],
    expect: Vec<Vec<u8>>,
    dests: &[SocketAddrV4],
    a: &UdpArgs,
) -> anyhow::Result<(SendStats, RecvStats, CpuWindow)> {
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicU64::new(0));
    let rx = udp::spawn_receiver(socks.clone(), expect, stop.clone(), live)?;
    let (c0, _) = relay_sample(a.relay_pid);
    let send = udp::pace(prefixes, a.pps, a.duration, a.size as usize, |ep, bufs| {
        udp::send_batch(&socks[ep], &dests[ep], bufs)
    });
    if !send.interrupted {
        std::thread::sleep(udp::DRAIN);
    }
    let (c1, _) = relay_sample(a.relay_pid);
    stop.store(true, Relaxed);
    let recv = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    Ok((send, recv, c0.zip(c1)))
}

fn hello(prefix: &[u8], size: usize) -> Vec<u8> {
    let mut b = vec![0x5a; size];
    b[..prefix.len()].copy_from_slice(prefix);
    udp::write_probe(&mut b, prefix.len(), udp::now_ns(), udp::HELLO_SEQ);
    b
}

fn hold(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !STOP.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_baseline(a: &UdpArgs) -> anyhow::Result<Measured> {
    let nep = 2 * a.pairs as usize;
    let size = a.size as usize;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let socks = Arc::new(udp::bind_sockets(nep).context("binding the endpoint sockets")?);
    let base = random_base();
    let prefixes: Vec<Vec<u8>> = (0..nep)
        .map(|e| (base + (e / 2) as u64).to_be_bytes().to_vec())
        .collect();
    let dest = udp::v4(a.target.addr)?;
    let dests = vec![dest; nep];
    // Hellos: every A, then every B, so the relay pairs them (B's hello reaches A).
    let mut hello_fail = 0u64;
    for pass in 0..2 {
        for e in (pass..nep).step_by(2) {
            if socks[e]
                .send_to(&hello(&prefixes[e], size), SocketAddr::V4(dest))
                .is_err()
            {
                hello_fail += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Count the hellos that came back (they sit in the A sockets' buffers).
    let mut hellos = RecvStats::default();
    let mut buf = [0u8; udp::MAX_PACKET];
    for (e, s) in socks.iter().enumerate() {
        while let Ok(n) = s.recv(&mut buf) {
            hellos.on_packet(&buf[..n], &prefixes[e], udp::now_ns());
        }
    }
    let mut setup = SetupReport {
        pairs_ready: hellos.hellos.min(u64::from(a.pairs)) as u32,
        pairs_failed: 0,
        failures: BTreeMap::new(),
        hellos_back: Some(hellos.hellos),
        binds_confirmed: None,
        setup_s: t.elapsed().as_secs_f64(),
    };
    setup.pairs_failed = a.pairs - setup.pairs_ready;
    if hello_fail > 0 {
        setup.failures.insert("hello_send".into(), hello_fail);
    }
    let mut warnings = Vec::new();
    if hellos.hellos < u64::from(a.pairs) {
        warnings.push(format!(
            "only {} of {} hellos came back: is the forwarder running at {}?",
            hellos.hellos, a.pairs, a.target.addr
        ));
    }
    let expect = prefixes.clone();
    finish_raw(
        a, socks, &prefixes, expect, &dests, setup, None, rss0, warnings,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish_raw(
    a: &UdpArgs,
    socks: Arc<Vec<UdpSocket>>,
    prefixes: &[Vec<u8>],
    expect: Vec<Vec<u8>>,
    dests: &[SocketAddrV4],
    setup: SetupReport,
    fast_path_addr: Option<SocketAddr>,
    rss0: Option<u64>,
    warnings: Vec<String>,
) -> anyhow::Result<Measured> {
    if a.idle {
        hold(a.duration);
        let (_, rss1) = relay_sample(a.relay_pid);
        return Ok(Measured {
            setup,
            fast_path_addr,
            send: SendStats {
                interrupted: STOP.load(Relaxed),
                ..SendStats::default()
            },
            recv: RecvStats::default(),
            cpu: None,
            rss: (rss0, rss1),
            warnings,
        });
    }
    let (send, recv, cpu) = raw_window(socks, prefixes, expect, dests, a)?;
    let (_, rss1) = relay_sample(a.relay_pid);
    Ok(Measured {
        setup,
        fast_path_addr,
        send,
        recv,
        cpu,
        rss: (rss0, rss1),
        warnings,
    })
}

/// Relay access for the fastpath and quic targets.
struct RelayAccess {
    cert_pem: Vec<u8>,
    key: SigningKey,
}

fn relay_access(a: &UdpArgs) -> anyhow::Result<RelayAccess> {
    let (Some(cert), Some(key_file)) = (&a.cert, &a.token_key_file) else {
        anyhow::bail!("--cert and --token-key-file are required for this target");
    };
    Ok(RelayAccess {
        cert_pem: target::read_cert(cert)?,
        key: target::read_token_key(&a.token_key_id, key_file)?,
    })
}

fn ids(run_id: &str, pair: u32, side: &str) -> anyhow::Result<(SessionId, UserId, DeviceId)> {
    Ok((
        SessionId::new(format!("udp-{run_id}-{pair}"))?,
        UserId::new(format!("udp-{run_id}-{pair}-{side}"))?,
        DeviceId::new(format!("udp-dev-{side}"))?,
    ))
}

fn token_ttl(a: &UdpArgs) -> Duration {
    a.duration + Duration::from_secs(600)
}

/// Joins every pair with `join(pair, side)`, at most 64 joins in flight; returns the joined
/// pairs (both sides) and failure counts by reason.
async fn join_all<T, F, Fut>(pairs: u32, join: F) -> (Vec<(T, T)>, BTreeMap<String, u64>)
where
    T: Send + 'static,
    F: Fn(u32, &'static str) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for p in 0..pairs {
        let (fa, fb) = (join(p, "a"), join(p, "b"));
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let (ra, rb) = tokio::join!(fa, fb);
            (p, ra, rb)
        });
    }
    let mut ok = Vec::new();
    let mut fails: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((p, Ok(x), Ok(y))) => ok.push((p, x, y)),
            Ok((_, ra, rb)) => {
                let e = ra.err().or(rb.err()).map(|e| format!("{e:#}"));
                let label = e.unwrap_or_default();
                let label = label.split(':').next().unwrap_or("join").trim().to_owned();
                *fails.entry(label).or_default() += 1;
            }
            Err(_) => *fails.entry("task".into()).or_default() += 1,
        }
        if STOP.load(Relaxed) {
            set.abort_all();
        }
    }
    ok.sort_by_key(|(p, _, _)| *p);
    (ok.into_iter().map(|(_, x, y)| (x, y)).collect(), fails)
}

/// This run's id in session and user names: given, or random.
fn run_id(a: &UdpArgs) -> String {
    a.run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", random_base() >> 32))
}

/// The runtime the control clients live on, its threads named so their CPU is told apart.
fn client_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(resources::CLIENT_THREAD_PREFIX)
        .enable_all()
        .build()
}

fn run_fastpath(a: &UdpArgs) -> anyhow::Result<Measured> {
    let access = relay_access(a)?;
    let run_id = run_id(a);
    let rt = client_runtime(1)?;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let relay = a.target.addr;
    let ttl = token_ttl(a);
    let (pairs, failures) = rt.block_on(async {
        let ep = fpctl::endpoint(&access.cert_pem)?;
        let key = access.key.clone();
        let server_name = a.server_name.clone();
        let run_id = run_id.clone();
        anyhow::Ok(
            join_all(a.pairs, move |p, side| {
                let (ep, key, server_name) = (ep.clone(), key.clone(), server_name.clone());
                let id = ids(&run_id, p, side);
                async move {
                    let (session, user, device) = id?;
                    let token = target::mint(&key, &session, &user, &device, None, ttl);
                    Control::join(
                        &ep,
                        relay,
                        &server_name,
                        token,
                        session,
                        Duration::from_secs(10),
                    )
                    .await
                }
            })
            .await,
        )
    })?;
    let mut warnings = Vec::new();
    // Flatten: endpoint 2i = pair i side a, 2i+1 = side b; keep pairs where both got offers.
    let mut ctls: Vec<Control> = Vec::new();
    let mut no_offer = 0u64;
    for (x, y) in pairs {
        if x.offer.is_some() && y.offer.is_some() {
            ctls.push(x);
            ctls.push(y);
        } else {
            no_offer += 1;
            rt.block_on(async {
                x.leave().await;
                y.leave().await;
            });
        }
    }
    let mut failures = failures;
    if no_offer > 0 {
        failures.insert("no_fast_path_offer".into(), no_offer);
        warnings.push(format!(
            "{no_offer} pairs joined without a fast-path offer: is the relay started with --fast-path-listen?"
        ));
    }
    let nep = ctls.len();
    let kind = kind_for(a.size as usize);
    let socks = Arc::new(udp::bind_sockets(nep).context("binding the endpoint sockets")?);
    let offers: Vec<_> = ctls.iter().filter_map(|c| c.offer.clone()).collect();
    let dests: Vec<SocketAddrV4> = offers
        .iter()
        .map(|o| udp::v4(o.target(relay)))
        .collect::<Result<_, _>>()?;
    let prefixes: Vec<Vec<u8>> = offers
        .iter()
        .map(|o| {
            FastPathHeader::new(PacketType::Media(kind), o.channel)
                .to_bytes()
                .to_vec()
        })
        .collect();
    // The receiver sees the sender's header: the peer's channel.
    let expect: Vec<Vec<u8>> = (0..nep).map(|e| prefixes[e ^ 1].clone()).collect();
    // BIND from each endpoint's own socket until the relay confirms (3 tries, 1 s each).
    for _ in 0..3 {
        for (e, c) in ctls.iter().enumerate() {
            if c.bound.load(Relaxed) {
                continue;
            }
            if let Some(pkt) = offers[e].bind_packet() {
                let _ = socks[e].send_to(&pkt, SocketAddr::V4(dests[e]));
            }
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !ctls.iter().all(|c| c.bound.load(Relaxed)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if ctls.iter().all(|c| c.bound.load(Relaxed)) || STOP.load(Relaxed) {
            break;
        }
    }
    let confirmed = ctls.iter().filter(|c| c.bound.load(Relaxed)).count() as u64;
    let ready = (0..nep / 2)
        .filter(|p| ctls[2 * p].bound.load(Relaxed) && ctls[2 * p + 1].bound.load(Relaxed))
        .count() as u32;
    if confirmed < nep as u64 {
        warnings.push(format!(
            "{} of {nep} endpoints never got FastPathBound; their media will be lost",
            nep as u64 - confirmed
        ));
    }
    let setup = SetupReport {
        pairs_ready: ready,
        pairs_failed: a.pairs - ready,
        failures,
        hellos_back: None,
        binds_confirmed: Some(confirmed),
        setup_s: t.elapsed().as_secs_f64(),
    };
    let fp_addr = dests.first().map(|d| SocketAddr::V4(*d));
    let m = if nep == 0 {
        Measured {
            setup,
            fast_path_addr: None,
            send: SendStats::default(),
            recv: RecvStats::default(),
            cpu: None,
            rss: (rss0, None),
            warnings,
        }
    } else {
        finish_raw(
            a, socks, &prefixes, expect, &dests, setup, fp_addr, rss0, warnings,
        )?
    };
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for c in ctls {
            set.spawn(c.leave());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while set.join_next().await.is_some() {}
        })
        .await;
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(m)
}

fn run_quic(a: &UdpArgs) -> anyhow::Result<Measured> {
    use duet_sdk::{Call, Client, ConnectOptions};
    let access = relay_access(a)?;
    let run_id = run_id(a);
    let rt = client_runtime(2)?;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let relay = a.target.addr;
    let ttl = token_ttl(a);
    let size = a.size as usize;
    let opts = ConnectOptions {
        server_name: a.server_name.clone(),
        join_timeout: Duration::from_secs(10),
        ..ConnectOptions::trusting(access.cert_pem.clone())
    };
    let key = access.key.clone();
    let (pairs, failures) = rt.block_on(join_all(a.pairs, move |p, side| {
        let (key, opts) = (key.clone(), opts.clone());
        let id = ids(&run_id, p, side);
        async move {
            let (session, user, device) = id?;
            let token = target::mint(&key, &session, &user, &device, None, ttl);
            let c = Client::connect(relay, token, opts).await?;
            Ok(c.join(session).await?)
        }
    }));
    let calls: Arc<Vec<Call>> = Arc::new(pairs.into_iter().flat_map(|(x, y)| [x, y]).collect());
    let nep = calls.len();
    let mut warnings = Vec::new();
    // Wait (bounded) until every connection's path carries a datagram of --size.
    let mtu_deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < mtu_deadline
        && !calls
            .iter()
            .all(|c| c.connection().max_datagram_size().unwrap_or(0) >= size)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let small = calls
        .iter()
        .filter(|c| c.connection().max_datagram_size().unwrap_or(0) < size)
        .count();
    if small > 0 {
        warnings.push(format!(
            "{small} QUIC connections cannot carry {size}-byte datagrams; those sends fail"
        ));
    }
    let setup = SetupReport {
        pairs_ready: (nep / 2) as u32,
        pairs_failed: a.pairs - (nep / 2) as u32,
        failures,
        hellos_back: None,
        binds_confirmed: None,
        setup_s: t.elapsed().as_secs_f64(),
    };
    let kind = kind_for(size);
    let prefix = duet_proto::MediaHeader::new(kind).to_bytes().to_vec();
    let m = if a.idle || nep == 0 {
        hold(if nep == 0 { Duration::ZERO } else { a.duration });
        let (_, rss1) = relay_sample(a.relay_pid);
        Measured {
            setup,
            fast_path_addr: None,
            send: SendStats {
                interrupted: STOP.load(Relaxed),
                ..SendStats::default()
            },
            recv: RecvStats::default(),
            cpu: None,
            rss: (rss0, rss1),
            warnings,
        }
    } else {
        let stop = Arc::new(AtomicBool::new(false));
        let mut rxs = Vec::new();
        for c in calls.iter() {
            let mut tap = c.tap_raw();
            let (stop, expect) = (stop.clone(), prefix.clone());
            rxs.push(rt.spawn(async move {
                let mut st = RecvStats::default();
                loop {
                    match tokio::time::timeout(Duration::from_millis(50), tap.recv()).await {
                        Ok(Some(d)) => st.on_packet(&d, &expect, udp::now_ns()),
                        Ok(None) => break,
                        Err(_) if stop.load(Relaxed) => break,
                        Err(_) => {}
                    }
                }
                st
            }));
        }
        let prefixes = vec![prefix.clone(); nep];
        let (c0, _) = relay_sample(a.relay_pid);
        let cs = calls.clone();
        let send = udp::pace(&prefixes, a.pps, a.duration, size, |ep, bufs| {
            bufs.iter()
                .filter(|b| cs[ep].send_raw_datagram(Bytes::copy_from_slice(b)).is_ok())
                .count()
        });
        if !send.interrupted {
            std::thread::sleep(udp::DRAIN);
        }
        let (c1, _) = relay_sample(a.relay_pid);
        stop.store(true, Relaxed);
        let mut recv = RecvStats::default();
        rt.block_on(async {
            for h in rxs {
                if let Ok(st) = h.await {
                    recv.merge(&st);
                }
            }
        });
        let (_, rss1) = relay_sample(a.relay_pid);
        Measured {
            setup,
            fast_path_addr: None,
            send,
            recv,
            cpu: c0.zip(c1),
            rss: (rss0, rss1),
            warnings,
        }
    };
    if let Ok(calls) = Arc::try_unwrap(calls) {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for c in calls {
                set.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), c.leave()).await;
                });
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while set.join_next().await.is_some() {}
            })
            .await;
        });
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(m)
}

/// Checks the arguments that clap cannot (exit 2 on failure): the size floor per target
/// and the relay access files.
pub fn validate(a: &UdpArgs) -> Result<(), String> {
    let k = a.target.kind;
    if (a.size as usize) < k.min_size() {
        return Err(format!(
            "--size {}: the {} target needs at least {} bytes ({}-byte header + 16-byte probe)",
            a.size,
            k.as_str(),
            k.min_size(),
            k.prefix_len()
        ));
    }
    if a.duration.is_zero() || a.duration > Duration::from_secs(600) {
        return Err("--duration must be above 0 and at most 10m".into());
    }
    match k {
        UdpTargetKind::Baseline if a.cert.is_some() || a.token_key_file.is_some() => Err(
            "--cert and --token-key-file apply to the fastpath and quic targets only".into(),
        ),
        UdpTargetKind::FastPath | UdpTargetKind::Quic
            if a.cert.is_none() || a.token_key_file.is_none() =>
        {
            Err(format!(
                "--target {}: --cert and --token-key-file are required (to trust the relay and mint tokens)",
                k.as_str()
            ))
        }
        _ => Ok(()),
    }
}

/// Runs the bench described by `a` and builds its report.
pub fn run(a: &UdpArgs) -> anyhow::Result<UdpReport> {
    udp::install_stop_handler();
    let nep = 2 * u64::from(a.pairs);
    let limit = udp::raise_nofile(2 * nep + 256);
    let mut pre_warn = Vec::new();
    if limit < 2 * nep + 64 {
        pre_warn.push(format!(
            "open-file limit {limit} is low for {nep} endpoints (raise it with ulimit -n)"
        ));
    }
    let cpu0 = udp::self_cpu_seconds();
    let m = match a.target.kind {
        UdpTargetKind::Baseline => run_baseline(a)?,
        UdpTargetKind::FastPath => run_fastpath(a)?,
        UdpTargetKind::Quic => run_quic(a)?,
    };
    let gen_cpu = udp::self_cpu_seconds() - cpu0;
    Ok(build_report(a, m, gen_cpu, pre_warn))
}

fn build_report(a: &UdpArgs, m: Measured, gen_cpu: f64, mut warnings: Vec<String>) -> UdpReport {
    let Measured {
        setup,
        fast_path_addr,
        send,
        recv,
        cpu,
        rss,
        warnings: w,
    } = m;
    warnings.extend(w);
    let el = send.elapsed_s;
    let rate = |n: u64| if el > 0.0 { n as f64 / el } else { 0.0 };
    let loss_pct = if send.sent > 0 {
        100.0 * (send.sent as f64 - recv.received as f64) / send.sent as f64
    } else {
        0.0
    };
    if send.skipped > 0 {
        warnings.push(format!(
            "the generator fell behind and skipped {} packets: offered rate below target",
            send.skipped
        ));
    }
    let h = &recv.latency;
    let relay = a.relay_pid.map(|pid| {
        let cpu_s = cpu.map(|(c0, c1)| c1 - c0);
        let sessions = f64::from(setup.pairs_ready.max(1));
        RelayUdp {
            pid,
            cpu_s,
            cpu_us_per_packet: cpu_s
                .filter(|_| recv.received > 0)
                .map(|c| c * 1e6 / recv.received as f64),
            rss_before_bytes: rss.0,
            rss_after_bytes: rss.1,
            rss_per_session_bytes: rss
                .0
                .zip(rss.1)
                .filter(|_| a.idle)
                .map(|(b, c)| (c as f64 - b as f64) / sessions),
        }
    });
    UdpReport {
        schema: UDP_SCHEMA.into(),
        tool: format!("duet-loadtest {}", env!("CARGO_PKG_VERSION")),
        stop_reason: if send.interrupted || STOP.load(Relaxed) {
            "interrupted".into()
        } else {
            "completed".into()
        },
        target: a.target.kind.as_str().into(),
        target_addr: a.target.addr.to_string(),
        fast_path_addr: fast_path_addr.map(|x| x.to_string()),
        pairs: a.pairs,
        endpoints: 2 * a.pairs,
        size_bytes: u32::from(a.size),
        target_pps: a.pps,
        duration_s: a.duration.as_secs_f64(),
        idle: a.idle,
        setup,
        sent: send.sent,
        send_failed: send.send_failed,
        skipped: send.skipped,
        received: recv.received,
        received_bytes: recv.received_bytes,
        bad: recv.bad,
        elapsed_s: el,
        offered_pps: rate(send.sent),
        received_pps: rate(recv.received),
        loss_pct,
        latency_us: LatencyUs {
            p50: h.quantile_us(0.5),
            p99: h.quantile_us(0.99),
            p999: h.quantile_us(0.999),
            max: h.max_us(),
            mean: h.mean_us(),
            histogram: h.to_base64().unwrap_or_default(),
        },
        relay,
        generator_cpu_s: gen_cpu,
        warnings,
    }
}

//! `duet-loadtest udp`: the same paced load against the C baseline forwarder, the relay's
//! raw UDP fast path, its QUIC datagram path and a TURN server (coturn), so their costs
//! compare side by side.
//!
//! Owns the run of one bench: argument checks clap cannot do, the dispatch to each target's
//! set-up (one submodule per target), the measured window around the raw targets
//! (forwarder and generator CPU from /proc and getrusage around the send window and drain;
//! the workers themselves are [`crate::udpgen`]), and the report ([`UdpReport`], in
//! [`report`], documented in `REPORT.md`). Pacing and receiving are in [`crate::udp`].
//!
//! | module | target | set-up |
//! |---|---|---|
//! | [`baseline`] | C `fwd` | hellos from both members, like `loadgen.c` |
//! | [`fastpath`] | duet-relay raw UDP | a control connection per endpoint for the offer, then BIND until confirmed |
//! | [`quic`] | duet-relay QUIC datagrams | SDK clients joined without E2EE |
//! | [`turn`] | a TURN server | Allocate, CreatePermission, ChannelBind per endpoint ([`crate::turnctl`]) |
//! | [`joins`] | fastpath, quic | tokens and bounded concurrent joins |

mod baseline;
mod fastpath;
mod joins;
mod quic;
pub mod report;
mod turn;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use duet_proto::MediaKind;

pub use report::{LatencyUs, RelayUdp, SetupReport, UdpReport, UDP_SCHEMA};

use crate::cli::{UdpArgs, UdpTargetKind};
use crate::udp::{self, RecvStats, SendStats, STOP};
use crate::udpgen::{self, Endpoints};
use crate::udpnet::{Addressing, Net};
use crate::{resources, rng};

/// What the target-specific part hands back.
struct Measured {
    setup: SetupReport,
    fast_path_addr: Option<SocketAddr>,
    send: SendStats,
    recv: RecvStats,
    cpu: CpuWindow,
    /// This process's CPU seconds over the same window.
    gen_window_cpu: Option<f64>,
    /// Generator workers that ran the window.
    threads: usize,
    rss: (Option<u64>, Option<u64>),
    warnings: Vec<String>,
}

impl Measured {
    /// A run that sent no media: idle, or nothing set up.
    fn without_media(
        setup: SetupReport,
        fast_path_addr: Option<SocketAddr>,
        rss: (Option<u64>, Option<u64>),
        warnings: Vec<String>,
    ) -> Self {
        Self {
            setup,
            fast_path_addr,
            send: SendStats {
                interrupted: STOP.load(Relaxed),
                ..SendStats::default()
            },
            recv: RecvStats::default(),
            cpu: None,
            gen_window_cpu: None,
            threads: 0,
            rss,
            warnings,
        }
    }
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

fn hold(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !STOP.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The endpoints of a raw target: `--addressing`, shared sockets laid out as the
/// `--threads` workers will split the pairs.
fn bind_net(a: &UdpArgs, endpoints: usize) -> anyhow::Result<Arc<Net>> {
    let groups = udpgen::split(endpoints, a.threads as usize);
    let net =
        Net::bind(endpoints, &groups, a.addressing).context("binding the endpoint sockets")?;
    Ok(Arc::new(net))
}

/// The end shared by the raw targets: hold the sessions (`--idle`), or run the measured
/// window over `eps` with `--threads` workers, forwarder and generator CPU read around it.
fn finish_raw(
    a: &UdpArgs,
    eps: Endpoints,
    setup: SetupReport,
    fast_path_addr: Option<SocketAddr>,
    rss0: Option<u64>,
    warnings: Vec<String>,
) -> anyhow::Result<Measured> {
    if a.idle || eps.active.is_empty() {
        hold(if eps.active.is_empty() {
            Duration::ZERO
        } else {
            a.duration
        });
        let (_, rss1) = relay_sample(a.relay_pid);
        return Ok(Measured::without_media(
            setup,
            fast_path_addr,
            (rss0, rss1),
            warnings,
        ));
    }
    let load = udpgen::Load {
        pps: a.pps,
        duration: a.duration,
        size: a.size as usize,
        threads: a.threads as usize,
    };
    let (mut c0, mut c1) = ((None, 0.0), (None, 0.0));
    let st = udpgen::run(
        &eps,
        &load,
        || c0 = (relay_sample(a.relay_pid).0, udp::self_cpu_seconds()),
        || c1 = (relay_sample(a.relay_pid).0, udp::self_cpu_seconds()),
    )?;
    let (_, rss1) = relay_sample(a.relay_pid);
    Ok(Measured {
        setup,
        fast_path_addr,
        send: st.send,
        recv: st.recv,
        cpu: c0.0.zip(c1.0),
        gen_window_cpu: Some(c1.1 - c0.1),
        threads: st.threads,
        rss: (rss0, rss1),
        warnings,
    })
}

/// Checks the arguments that clap cannot (exit 2 on failure): the size floor per target,
/// the relay access files, the TURN credentials and the bounds of each target.
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
    let relay_access = a.access.any();
    match k {
        UdpTargetKind::Baseline | UdpTargetKind::Turn if relay_access => {
            Err("--cert and --token-key-file apply to the fastpath and quic targets only".into())
        }
        UdpTargetKind::FastPath | UdpTargetKind::Quic
            if !a.access.complete() =>
        {
            Err(format!(
                "--target {}: --cert and --token-key-file are required (to trust the relay and mint tokens)",
                k.as_str()
            ))
        }
        UdpTargetKind::Quic if a.threads > 1 || a.addressing != Addressing::Ports => Err(
            "--threads and --addressing apply to the raw targets (baseline, fastpath, turn); quic is paced by one thread through the SDK"
                .into(),
        ),
        UdpTargetKind::Turn => turn::validate(a),
        _ if a.turn_user.is_some() => Err("--turn-user applies to the turn target only".into()),
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
        UdpTargetKind::Baseline => baseline::run(a)?,
        UdpTargetKind::FastPath => fastpath::run(a)?,
        UdpTargetKind::Quic => quic::run(a)?,
        UdpTargetKind::Turn => turn::run(a)?,
    };
    let gen_cpu = udp::self_cpu_seconds() - cpu0;
    Ok(report::build(a, m, gen_cpu, pre_warn))
}

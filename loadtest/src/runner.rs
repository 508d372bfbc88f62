//! One load run: ramp up calls, drive their media, watch resources, stop on time or on a
//! signal, and build the report.
//!
//! Owns the run's timeline and its bounds. Calls start at `--ramp` per second; each is two
//! real SDK endpoints (QUIC + TLS, Join) on the node rendezvous hashing picks, sending their
//! profile's frames with a probe inside until `stop_at = start + ramp time + duration`. Then
//! receivers drain for `--drain` (or until every frame sent has arrived), both endpoints
//! `Leave`, and the run ends. Nothing outlives `hard_deadline = stop_at + grace`: past it the
//! remaining call tasks are aborted and the report is marked partial. The first Ctrl-C or
//! SIGTERM stops sending at once and winds down the same way (partial report); a second one
//! aborts. Every loop here is bounded by time and by count.
//!
//! It does not own traffic shapes (`profile`), aggregation (`stats`), the report's shape
//! (`report`) or where the relays are (`target`).
//!
//! Size: ~700 lines because the run's timeline (ramp, media, drain, abort) reads best in
//! one place; resources are `relay_watch`'s, chaos is `chaos`'s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duet_proto::{DeviceId, MediaKind, NodeId, SessionId, SigningKey, UserId};
use duet_relay::RelayHandle;
use duet_sdk::{
    Call, Client, ConnectOptions, E2eeConfig, Event, IdentityKey, SdkError, SharedEndpoint,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::chaos::{self, ChaosSpec};
use crate::hist::HistError;
use crate::probe::{now_us, Probe};
use crate::profile::{CallShape, FrameGen, Profile};
use crate::progress::{rates, Progress, ProgressMode};
use crate::relay_watch::{relay_watches, RelayWatch};
use crate::report::{
    GeneratorReport, RelayReport, Report, ReportError, RunConfig, StopReason, SCHEMA_VERSION,
};
use crate::resources;
use crate::stats::{Collector, StreamTracker, Totals};
use crate::target::{mint, Node};
use duet_proto::placement;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no relay node to send calls to")]
    NoNodes,
    #[error("--ramp must be a positive rate")]
    BadRamp,
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Hist(#[from] HistError),
    #[error("cannot set up a shared QUIC endpoint: {0}")]
    Endpoint(SdkError),
}

/// Everything `run` needs besides the target.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub calls: u64,
    pub profile: Profile,
    pub duration: Duration,
    pub ramp_per_s: f64,
    pub seed: u64,
    pub run_id: String,
    pub e2ee: bool,
    pub grace: Duration,
    pub drain: Duration,
    pub join_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub keep_alive: Option<Duration>,
    /// `--profile idle`: one frame per endpoint this often.
    pub idle_interval: Duration,
    pub dead_silence: Option<Duration>,
    pub dead_probe_after: Option<Duration>,
    pub progress: ProgressMode,
    pub client_threads: usize,
    /// Shared QUIC endpoints the clients connect through, round robin (`--endpoints`);
    /// 0: a socket and a TLS config of its own per client.
    pub endpoints: usize,
    /// Let clients on a shared endpoint resume TLS sessions (`--tls-resumption`).
    pub tls_resumption: bool,
    pub transport: String,
    pub relay_pids: Vec<u32>,
    pub relay_metrics: Vec<SocketAddr>,
    pub chaos: Vec<ChaosSpec>,
    /// Bearer token for `drain:` chaos actions.
    pub ops_token: Option<String>,
}

/// Where the calls go.
pub struct RunTarget {
    pub nodes: Vec<Node>,
    pub cert_pem: Vec<u8>,
    pub key: SigningKey,
    pub server_name: String,
    /// The in-process relay, when there is one (for its CPU, RSS and metrics).
    pub embedded: Option<Arc<RelayHandle>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    StopSending,
    Abort,
}

struct Ctx {
    opts: RunOptions,
    nodes: Vec<Node>,
    node_names: Vec<String>,
    /// Nodes with an id, for the SDK's failover (empty: no node ids, no failover).
    address_book: Vec<(NodeId, SocketAddr)>,
    cert_pem: Vec<u8>,
    /// `--endpoints` of them (empty: each client binds its own).
    shared: Vec<SharedEndpoint>,
    key: SigningKey,
    server_name: String,
    col: Arc<Collector>,
    phase: watch::Receiver<Phase>,
    stop_at: Instant,
    token_ttl: Duration,
}

impl Ctx {
    /// The options of client number `n` (two per call): through shared endpoint
    /// `n % endpoints` when there are shared endpoints.
    fn connect_options(&self, n: u64) -> ConnectOptions {
        let sdk = ConnectOptions::default();
        let base = match self.shared.len() {
            0 => ConnectOptions::trusting(self.cert_pem.clone()),
            len => ConnectOptions {
                endpoint: self.shared.get((n % len as u64) as usize).cloned(),
                ..sdk.clone()
            },
        };
        ConnectOptions {
            idle_timeout: self.opts.idle_timeout.unwrap_or(sdk.idle_timeout),
            keep_alive: self.opts.keep_alive.unwrap_or(sdk.keep_alive),
            server_name: self.server_name.clone(),
            join_timeout: self.opts.join_timeout,
            fast_path: if self.opts.transport == "fast-path" {
                duet_sdk::FastPathMode::Prefer
            } else {
                duet_sdk::FastPathMode::Off
            },
            nodes: self.address_book.clone(),
            dead_relay: duet_sdk::DeadRelay {
                silence: self.opts.dead_silence.unwrap_or(sdk.dead_relay.silence),
                probe_after: self
                    .opts
                    .dead_probe_after
                    .unwrap_or(sdk.dead_relay.probe_after),
                ..sdk.dead_relay
            },
            ..base
        }
    }
}

/// A stable label for why a connect or join failed.
pub fn failure_reason(e: &SdkError) -> String {
    match e {
        SdkError::Refused(r) => r.to_string(),
        // Which wait ran out (the QUIC handshake, `Joined`, the key agreement...) is what
        // tells a slow relay from a lost packet or a slow peer.
        SdkError::Timeout(what) => timeout_label(what),
        SdkError::Connect(_) => "connect".into(),
        SdkError::Connection(_) => "connection".into(),
        SdkError::Certificate(_) | SdkError::Tls(_) => "tls".into(),
        SdkError::Closed => "closed".into(),
        SdkError::Protocol(_) | SdkError::Codec(_) => "protocol".into(),
        SdkError::Io(_) => "io".into(),
        SdkError::E2eeUnavailable(u) => format!("e2ee_unavailable_{}", u.reason.as_str()),
        SdkError::Handshake(_) => "e2ee_handshake".into(),
        _ => "other".into(),
    }
}

/// `timeout_` and the SDK's name for what did not come, as a metric-label-safe slug
/// (`timeout_joined`, `timeout_the_quic_handshake`, ...).
fn timeout_label(what: &str) -> String {
    let mut label = String::from("timeout");
    for word in what
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        label.push('_');
        label.push_str(&word.to_ascii_lowercase());
    }
    label
}

/// Waits until the phase satisfies `f` (or the sender is gone). Returns nothing, so no
/// `watch::Ref` (which is not `Send`) is held across an await by callers' `select!`.
async fn until(phase: &mut watch::Receiver<Phase>, f: impl FnMut(&Phase) -> bool) {
    let _ = phase.wait_for(f).await;
}

/// One side's sending state, read by the other side's receiver.
#[derive(Default)]
struct SideState {
    sent: AtomicU64,
    done: AtomicBool,
    /// Wakes the other side's receiver when `done` is set, so it needs no polling timer.
    done_notify: Notify,
}

async fn endpoint(
    ctx: &Ctx,
    (node, candidates): (&Node, &[NodeId]),
    session: &SessionId,
    side: &str,
    call_no: u64,
) -> Result<(Call, u64), SdkError> {
    let user = UserId::new(format!("lt-{}-{call_no}-{side}", ctx.opts.run_id));
    let device = DeviceId::new(format!("lt-dev-{side}"));
    let (Ok(user), Ok(device)) = (user, device) else {
        return Err(SdkError::Protocol("run id makes an invalid user id".into()));
    };
    let token = mint(&ctx.key, session, &user, &device, candidates, ctx.token_ttl);
    let t = Instant::now();
    let n = call_no * 2 + u64::from(side == "b");
    let client = Client::connect(node.addr, token, ctx.connect_options(n)).await?;
    // With E2EE the join time includes the key agreement with the peer (both endpoints
    // join concurrently), which is what a user waits for before media flows.
    let call = if ctx.opts.e2ee {
        let identity = IdentityKey::generate()
            .map_err(|_| SdkError::Protocol("could not generate an identity key".into()))?;
        client
            .join_e2ee(
                session.clone(),
                E2eeConfig::new(
                    Arc::new(identity),
                    duet_proto::TokenKeyring::new(vec![ctx.key.verifying_key()]),
                ),
            )
            .await?
    } else {
        client.join(session.clone()).await?
    };
    Ok((call, t.elapsed().as_micros() as u64))
}

async fn leave(call: Call) {
    let _ = tokio::time::timeout(Duration::from_secs(3), call.leave()).await;
}

async fn call_task(i: u64, ctx: Arc<Ctx>) {
    let col = &ctx.col;
    let Ok(session) = SessionId::new(format!("lt-{}-{i}", ctx.opts.run_id)) else {
        col.call_failed("bad_session_id");
        return;
    };
    // The token lists the nodes in rendezvous order (primary first, then where both
    // endpoints move if it fails), as the fleet's minter does.
    let ranked = placement::rank(session.as_str(), &ctx.node_names);
    let node = &ctx.nodes[ranked.first().copied().unwrap_or(0)];
    let candidates: Vec<NodeId> = ranked
        .iter()
        .filter_map(|&n| ctx.nodes[n].claim.clone())
        .take(duet_proto::token::MAX_NODES)
        .collect();
    let (a, b) = tokio::join!(
        endpoint(&ctx, (node, &candidates), &session, "a", i),
        endpoint(&ctx, (node, &candidates), &session, "b", i)
    );
    for (_, us) in [&a, &b].into_iter().flatten() {
        col.record_join(i, *us);
    }
    let (a, b) = match (a, b) {
        (Ok((a, _)), Ok((b, _))) => (a, b),
        (Err(e), other) | (other, Err(e)) => {
            col.call_failed(&failure_reason(&e));
            if let Ok((c, _)) = other {
                leave(c).await;
            }
            return;
        }
    };
    col.call_established(&node.name);
    let dropped: Mutex<Option<String>> = Mutex::new(None);
    let migrated = AtomicBool::new(false);
    let sides = [SideState::default(), SideState::default()];
    let calls = [&a, &b];
    let shape = ctx.opts.profile.shape(ctx.opts.seed, i);
    let kinds = shape.kinds();
    let start = Instant::now();
    let side = |s: usize| {
        let (ctx, dropped, sides, calls, migrated) = (&ctx, &dropped, &sides, &calls, &migrated);
        async move {
            let call = calls[s];
            let senders = async {
                tokio::join!(
                    sender(
                        ctx,
                        call,
                        i,
                        s,
                        (shape, kinds[0]),
                        start,
                        &sides[s],
                        dropped
                    ),
                    async {
                        if let Some(k) = kinds.get(1) {
                            sender(ctx, call, i, s, (shape, *k), start, &sides[s], dropped).await;
                        }
                    }
                );
                sides[s].done.store(true, Relaxed);
                sides[s].done_notify.notify_waiters();
            };
            tokio::join!(
                senders,
                receiver(ctx, call, i, &sides[1 - s]),
                events(ctx, call, dropped, migrated)
            );
        }
    };
    tokio::join!(side(0), side(1));
    for c in [&a, &b] {
        col.transport(&c.stats(), c.connection().max_datagram_size());
    }
    col.call_transport(transport_label(&a, &b));
    let reason = dropped.lock().ok().and_then(|mut d| d.take());
    if let Some(r) = reason {
        col.call_dropped(&r);
    }
    if migrated.load(Relaxed) {
        col.call_migrated();
    }
    tokio::join!(leave(a), leave(b));
    col.call_ended();
}

/// Which transport a call's endpoints ended on (`Call::transport()` at the end of the call).
fn transport_label(a: &Call, b: &Call) -> &'static str {
    use duet_sdk::Transport::{FastPath, Quic};
    match (a.transport(), b.transport()) {
        (Quic, Quic) => "quic",
        (FastPath, FastPath) => "fast_path",
        _ => "mixed",
    }
}

fn note_drop(dropped: &Mutex<Option<String>>, reason: String) {
    if let Ok(mut d) = dropped.lock() {
        d.get_or_insert(reason);
    }
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    ctx: &Ctx,
    call: &Call,
    i: u64,
    side: usize,
    (shape, kind): (CallShape, MediaKind),
    start: Instant,
    me: &SideState,
    dropped: &Mutex<Option<String>>,
) {
    let mut gen = FrameGen::for_call(shape, kind, ctx.opts.seed, &[i, side as u64])
        .with_idle_interval(ctx.opts.idle_interval);
    let mut phase = ctx.phase.clone();
    let mut buf = Vec::new();
    // Count bound on top of the time bound: no stream sends more than 100 frames a second.
    let max_frames = (ctx.stop_at.saturating_duration_since(start).as_secs() + 1) * 100;
    for seq in 0..max_frames {
        let f = gen.next_frame();
        let due = start + f.at;
        if due >= ctx.stop_at {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = until(&mut phase, |p| *p != Phase::Running) => break,
        }
        let lag_us = due.elapsed().as_micros() as u64;
        let max_dg = call.connection().max_datagram_size().unwrap_or(1200);
        let chunk = max_dg.saturating_sub(duet_sdk::fragment::OVERHEAD).max(1);
        let pieces = f.size.div_ceil(chunk).max(1);
        let probe = Probe {
            kind,
            call: i as u32,
            seq,
            sent_us: now_us(),
            pieces: pieces.min(u16::MAX as usize) as u16,
            key: f.key,
        };
        probe.encode_into(f.size, &mut buf);
        let sent = tokio::select! {
            r = call.send_media(kind, &buf) => r,
            _ = until(&mut phase, |p| *p == Phase::Abort) => break,
        };
        match sent {
            Ok(()) => {
                me.sent.fetch_add(1, Relaxed);
                ctx.col.sent(i, kind, buf.len(), pieces as u64, lag_us);
            }
            Err(e) => {
                note_drop(dropped, format!("send_{}", failure_reason(&e)));
                break;
            }
        }
    }
}

async fn receiver(ctx: &Ctx, call: &Call, i: u64, peer: &SideState) {
    let mut trackers: [StreamTracker; 3] = Default::default();
    let mut received = 0u64;
    // The longest silence between two frames while the peer was still sending.
    let (mut last_at, mut max_gap): (Option<Instant>, Option<Duration>) = (None, None);
    let mut drain_until: Option<Instant> = None;
    let hard_stop = ctx.stop_at + ctx.opts.drain;
    let mut phase = ctx.phase.clone();
    loop {
        // Registered before the checks below, so a peer finishing in between still wakes
        // this receiver: it waits on its frames, the peer, the phase and its one deadline,
        // with no polling timer (an idle call at 10,000 calls costs nothing between frames).
        let peer_done = peer.done_notify.notified();
        tokio::pin!(peer_done);
        peer_done.as_mut().enable();
        if *ctx.phase.borrow() == Phase::Abort {
            break;
        }
        let deadline = if peer.done.load(Relaxed) {
            if received >= peer.sent.load(Relaxed) {
                break;
            }
            *drain_until.get_or_insert_with(|| Instant::now() + ctx.opts.drain)
        } else {
            // Past this the peer's senders are stuck (blocked sends); stop waiting for them.
            hard_stop
        };
        if Instant::now() >= deadline {
            break;
        }
        let frame = tokio::select! {
            r = call.recv_media() => match r {
                Err(_) => break,
                Ok(f) => f,
            },
            _ = &mut peer_done => continue,
            _ = until(&mut phase, |p| *p == Phase::Abort) => break,
            _ = tokio::time::sleep_until(deadline.into()) => continue,
        };
        let recv_us = now_us();
        let now = Instant::now();
        if now < ctx.stop_at {
            if let Some(last) = last_at {
                max_gap = Some(max_gap.map_or(now - last, |g| g.max(now - last)));
            }
            last_at = Some(now);
        }
        match Probe::decode(&frame.data) {
            Ok(p) if p.call == i as u32 && p.kind == frame.kind => {
                let o = trackers[p.kind.index()].observe(p.seq, p.sent_us, recv_us);
                ctx.col
                    .received(i, p.kind, frame.data.len(), u64::from(p.pieces), o);
                received += 1;
            }
            Ok(_) => ctx.col.misrouted(frame.kind),
            Err(_) => ctx.col.bad_probe(),
        }
    }
    // A stream that went silent and never came back: its silence lasted to the end of sending.
    if let Some(last) = last_at {
        let tail = Instant::now()
            .min(ctx.stop_at)
            .saturating_duration_since(last);
        max_gap = Some(max_gap.map_or(tail, |g| g.max(tail)));
    }
    if let Some(g) = max_gap {
        ctx.col.record_gap(i, g.as_micros() as u64);
    }
}

async fn events(ctx: &Ctx, call: &Call, dropped: &Mutex<Option<String>>, migrated: &AtomicBool) {
    let mut phase = ctx.phase.clone();
    loop {
        let ev = tokio::select! {
            ev = call.next_event() => ev,
            _ = until(&mut phase, |p| *p != Phase::Running) => return,
        };
        match ev {
            None => return,
            Some(Event::Disconnected(_)) => {
                note_drop(dropped, "disconnected".into());
                return;
            }
            Some(Event::SessionEnded(r)) => {
                note_drop(dropped, format!("session_ended_{r}"));
                return;
            }
            Some(Event::PeerLeft(r)) => note_drop(dropped, format!("peer_left_{r}")),
            Some(Event::Migrated { .. }) => migrated.store(true, Relaxed),
            Some(_) => {}
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The `--endpoints` shared QUIC endpoints, bound on the address family of the first relay
/// (the generator's clients then cost no socket, endpoint driver or PEM parsing each).
fn shared_endpoints(
    opts: &RunOptions,
    target: &RunTarget,
) -> Result<Vec<SharedEndpoint>, SdkError> {
    let v6 = target.nodes.first().is_some_and(|n| n.addr.is_ipv6());
    let local: SocketAddr = if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    (0..opts.endpoints)
        .map(|_| {
            SharedEndpoint::builder(target.cert_pem.clone())
                .local_addr(local)
                .tls_resumption(opts.tls_resumption)
                .build()
        })
        .collect()
}

/// Runs the load and returns its report (partial if stopped early). Must run inside the
/// client runtime.
pub async fn run(opts: RunOptions, target: RunTarget) -> Result<Report, RunError> {
    if target.nodes.is_empty() {
        return Err(RunError::NoNodes);
    }
    if !(opts.ramp_per_s.is_finite() && opts.ramp_per_s > 0.0) {
        return Err(RunError::BadRamp);
    }
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let t0 = Instant::now();
    let ramp_time = Duration::from_secs_f64(opts.calls.saturating_sub(1) as f64 / opts.ramp_per_s);
    let stop_at = t0 + ramp_time + opts.duration;
    let hard_deadline = stop_at + opts.grace;
    let col = Arc::new(Collector::new());
    let shared = shared_endpoints(&opts, &target).map_err(RunError::Endpoint)?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let ctx = Arc::new(Ctx {
        node_names: target.nodes.iter().map(|n| n.name.clone()).collect(),
        address_book: target
            .nodes
            .iter()
            .filter_map(|n| Some((n.claim.clone()?, n.addr)))
            .collect(),
        nodes: target.nodes.clone(),
        cert_pem: target.cert_pem.clone(),
        shared,
        key: target.key.clone(),
        server_name: target.server_name.clone(),
        col: col.clone(),
        phase: phase_rx.clone(),
        stop_at,
        token_ttl: ramp_time + opts.duration + opts.grace + Duration::from_secs(300),
        opts: opts.clone(),
    });

    // Baseline resource sample before the first call.
    let mut watches = relay_watches(&opts, &target);
    for w in &mut watches {
        w.sample(0).await;
    }
    let gen_cpu_start = resources::process_cpu_seconds(None);
    let progress = Arc::new(Progress::new(
        opts.progress,
        ramp_time + opts.duration,
        opts.calls,
    ));

    // Monitor: progress and resource samples once a second, until told to stop.
    let (mon_stop_tx, mut mon_stop) = watch::channel(false);
    let monitor = {
        let col = col.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut prev: Totals = col.totals();
            let mut prev_t = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = mon_stop.wait_for(|s| *s) => break,
                }
                let now = col.totals();
                let r = rates(&prev, &now, prev_t.elapsed());
                progress.update(t0.elapsed(), &now, &r);
                prev = now;
                prev_t = Instant::now();
                for w in &mut watches {
                    w.sample(now.active).await;
                }
            }
            watches
        })
    };

    // Chaos: each action once, at its time after the first call starts.
    let chaos = tokio::spawn(chaos::run(opts.chaos.clone(), t0, opts.ops_token.clone()));

    // Launcher: starts calls on the ramp and reaps them; aborts them all on Phase::Abort.
    let launcher = {
        let ctx = ctx.clone();
        let mut phase = phase_rx.clone();
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for i in 0..ctx.opts.calls {
                let due = t0 + Duration::from_secs_f64(i as f64 / ctx.opts.ramp_per_s);
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = until(&mut phase, |p| *p != Phase::Running) => break,
                }
                // Reap finished calls as we go, so a long ramp holds no dead tasks.
                while set.try_join_next().is_some() {}
                ctx.col.attempted.fetch_add(1, Relaxed);
                set.spawn(call_task(i, ctx.clone()));
            }
            loop {
                tokio::select! {
                    r = set.join_next() => if r.is_none() { break },
                    _ = until(&mut phase, |p| *p == Phase::Abort) => {
                        set.abort_all();
                        while set.join_next().await.is_some() {}
                        break;
                    }
                }
            }
        })
    };

    // The timeline: run until stop_at (or a signal), then wind down within bounds.
    let mut launcher = launcher;
    let sig = signal();
    tokio::pin!(sig);
    let mut interrupted = false;
    let mut launcher_done = false;
    let mut stop_reason = StopReason::Completed;
    tokio::select! {
        _ = tokio::time::sleep_until(stop_at.into()) => {}
        _ = &mut sig => {
            interrupted = true;
            progress.note("interrupted: stopping calls, writing a partial report (again to abort)");
        }
        // Every call already ended (e.g. all failed to join): nothing left to wait for.
        _ = &mut launcher => launcher_done = true,
    }
    let _ = phase_tx.send(Phase::StopSending);
    let wind_down = if interrupted {
        (Instant::now() + opts.drain + Duration::from_secs(5)).min(hard_deadline)
    } else {
        hard_deadline
    };
    let second_sig = signal();
    tokio::pin!(second_sig);
    let finished = launcher_done
        || tokio::select! {
            _ = &mut launcher => true,
            _ = tokio::time::sleep_until(wind_down.into()) => false,
            _ = &mut second_sig => false,
        };
    if !finished {
        let _ = phase_tx.send(Phase::Abort);
        if tokio::time::timeout(Duration::from_secs(2), &mut launcher)
            .await
            .is_err()
        {
            launcher.abort();
        }
        if !interrupted {
            stop_reason = StopReason::Deadline;
        }
    }
    if interrupted {
        stop_reason = StopReason::Interrupted;
    }
    let _ = mon_stop_tx.send(true);
    // Actions still waiting for their time when the run ended are not done (and not listed).
    if !chaos.is_finished() {
        chaos.abort();
    }
    let chaos = chaos.await.unwrap_or_default();
    let mut watches = monitor.await.unwrap_or_default();
    let live = col.active.load(Relaxed);
    for w in &mut watches {
        w.sample(live).await;
    }
    progress.finish();
    let elapsed = t0.elapsed();

    let snap = col.snapshot(opts.calls)?;
    let relays: Vec<RelayReport> = watches.iter().map(RelayWatch::report).collect();
    let relay_cpu = target
        .embedded
        .as_ref()
        .and_then(|_| relays.first())
        .and_then(|r| r.cpu_seconds)
        .unwrap_or(0.0);
    let gen_cpu = match (gen_cpu_start, resources::process_cpu_seconds(None)) {
        (Some(a), Some(b)) => Some(crate::hist::round3((b - a - relay_cpu).max(0.0))),
        _ => None,
    };
    let partial = stop_reason != StopReason::Completed || snap.calls.attempted < opts.calls;
    let mut warnings = Vec::new();
    if snap.send_lag.p99_ms > 10.0 {
        warnings.push(format!(
            "generator saturated: frames left up to {:.1} ms late (send_lag p99); latency \
             figures include the generator's own queueing",
            snap.send_lag.p99_ms
        ));
    }
    let misrouted: u64 = snap.media.kinds().iter().map(|(_, k)| k.misrouted).sum();
    if misrouted > 0 {
        warnings.push(format!(
            "{misrouted} frames were delivered to another call's endpoint"
        ));
    }
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        tool: format!("duet-loadtest {}", env!("CARGO_PKG_VERSION")),
        generators: 1,
        started_unix_ms,
        elapsed_s: crate::hist::round3(elapsed.as_secs_f64()),
        partial,
        stop_reason,
        config: RunConfig {
            profile: opts.profile.to_string(),
            calls: opts.calls,
            duration_s: opts.duration.as_secs_f64(),
            ramp_per_s: opts.ramp_per_s,
            seed: opts.seed,
            run_id: opts.run_id.clone(),
            e2ee: opts.e2ee,
            e2ee_active: opts.e2ee,
            transport: opts.transport.clone(),
            embedded_relay: target.embedded.is_some(),
            relays: target
                .nodes
                .iter()
                .map(|n| match &n.claim {
                    Some(c) => format!("{c}={}", n.addr),
                    None => n.addr.to_string(),
                })
                .collect(),
            grace_s: opts.grace.as_secs_f64(),
        },
        calls: snap.calls,
        join: snap.join,
        media_gap: snap.media_gap,
        chaos,
        media: snap.media,
        transport: snap.transport,
        generator: GeneratorReport {
            cpu_seconds: gen_cpu,
            client_threads: opts.client_threads as u64,
            quic_endpoints: opts.endpoints as u64,
            tls_resumption: opts.tls_resumption && opts.endpoints > 0,
            send_lag: snap.send_lag,
        },
        relays,
        warnings,
        slo: None,
    };
    report.finalize()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::failure_reason;
    use duet_sdk::SdkError;

    #[test]
    fn a_timeout_says_what_did_not_come() {
        assert_eq!(
            failure_reason(&SdkError::Timeout("the end-to-end key agreement")),
            "timeout_the_end_to_end_key_agreement"
        );
        assert_eq!(
            failure_reason(&SdkError::Timeout("Joined")),
            "timeout_joined"
        );
        assert_eq!(failure_reason(&SdkError::Timeout("")), "timeout");
    }
}

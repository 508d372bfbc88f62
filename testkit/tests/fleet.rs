//! A fleet as an operator runs it: three relay processes, a real DNS server answering for
//! the ready nodes as a headless Service does ([`FleetDns`]), the policy crate's minter
//! placing each session over the node set it reads from DNS (primary and two fallbacks in
//! the token), and 100 end-to-end encrypted calls whose SDKs know where each node is.
//!
//! - SIGKILL the node carrying the most calls: every call it carried continues on another
//!   node of its tokens' list with the same security code (no new key agreement), the calls
//!   on the other nodes see no gap, no call is lost.
//! - Drain a node through its ops API while the calls run: its calls move, none ends.
//! - A lossy, slow, jittery path with a short blackout (the user-space [`Impairer`]) is not
//!   a dead relay: no call moves.
//! - An outage on one endpoint's path only: it moves, finds no peer, and goes back.
//!
//! Media is a small sealed frame every 100 ms each way per call (enough to see a gap and
//! cheap enough for 200 endpoints on a 2-core box).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use duet_policy::placement::NodeSource;
use duet_policy::NodeSet;
use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, JoinToken, MediaKind, NodeId, TokenKeyring, UserId,
};
use duet_sdk::{Call, Client, ConnectOptions, Event, SecurityCode};
use duet_testkit::dns::FleetDns;
use duet_testkit::fleet::{Fleet, OPS_TOKEN};
use duet_testkit::impair::{Impairer, Listener, Shape};
use duet_testkit::sdk::e2ee_config;
use duet_testkit::{sid, RelayUnderTest, STEP};

const CALLS: usize = 100;
/// One test at a time: each holds 200 endpoints.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one receiving endpoint saw.
#[derive(Default)]
struct Rx {
    frames: AtomicU64,
    last: Mutex<Option<Instant>>,
    max_gap: Mutex<Duration>,
}

struct LiveCall {
    a: Arc<Call>,
    b: Arc<Call>,
    node: NodeId,
    code: SecurityCode,
    rx: [Arc<Rx>; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn pump(from: Arc<Call>, to: Arc<Call>, rx: Arc<Rx>) -> Vec<tokio::task::JoinHandle<()>> {
    let send = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for seq in 0u32.. {
            tick.tick().await;
            // A send fails while the link moves; the next tick tries again.
            let _ = from.send_media(MediaKind::Audio, &seq.to_be_bytes()).await;
        }
    });
    let recv = tokio::spawn(async move {
        while to.recv_media().await.is_ok() {
            let now = Instant::now();
            rx.frames.fetch_add(1, Relaxed);
            let mut last = rx.last.lock().unwrap();
            if let Some(l) = *last {
                let mut g = rx.max_gap.lock().unwrap();
                *g = (*g).max(now - l);
            }
            *last = Some(now);
        }
    });
    vec![send, recv]
}

/// The SDK's default dead-relay detection (`DeadRelay::default()`: 500 ms of silence with
/// probes outstanding); the QUIC idle timeout is far longer, so it is the detector that
/// moves the calls, not the timeout.
fn options(fleet: &Fleet) -> ConnectOptions {
    options_with(fleet, fleet.address_book())
}

fn options_with(fleet: &Fleet, book: Vec<(NodeId, SocketAddr)>) -> ConnectOptions {
    ConnectOptions {
        nodes: book,
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(5),
        join_timeout: Duration::from_secs(2),
        ..ConnectOptions::trusting(fleet.cert_pem())
    }
}

/// Everything one endpoint needs to join, owned (joins run as tasks).
struct Joiner {
    dial: SocketAddr,
    token: String,
    opts: ConnectOptions,
    keys: TokenKeyring,
    session: String,
}

impl Joiner {
    fn new(fleet: &Fleet, nodes: &[NodeId], session: &str, user: &str) -> Result<Joiner> {
        Self::with(fleet, nodes, session, user, options(fleet))
    }

    fn with(
        fleet: &Fleet,
        nodes: &[NodeId],
        session: &str,
        user: &str,
        opts: ConnectOptions,
    ) -> Result<Joiner> {
        let claims = JoinClaims::builder(
            sid(session),
            UserId::new(user)?,
            DeviceId::new(format!("{user}-phone"))?,
        )
        .nodes(nodes.to_vec())
        .ttl(Duration::from_secs(600))
        .e2ee(E2eeClaim::Allowed)
        .build()?;
        let book: HashMap<NodeId, SocketAddr> = opts.nodes.iter().cloned().collect();
        Ok(Joiner {
            dial: *book
                .get(&nodes[0])
                .context("the primary is in the address book")?,
            token: JoinToken::mint(&fleet.signer(), &claims),
            opts,
            keys: TokenKeyring::new(vec![fleet.signer().verifying_key()]),
            session: session.to_owned(),
        })
    }

    async fn join(self) -> Result<Call> {
        let mut cfg = e2ee_config(true);
        cfg.token_keys = self.keys;
        let client = Client::connect(self.dial, self.token, self.opts).await?;
        Ok(client.join_e2ee(sid(&self.session), cfg).await?)
    }
}

/// Places and starts the calls, ten at a time.
async fn place_calls(fleet: &Fleet, set: &NodeSet) -> Result<Vec<LiveCall>> {
    let mut calls = Vec::with_capacity(CALLS);
    for chunk in (0..CALLS).collect::<Vec<_>>().chunks(10) {
        let mut joins = tokio::task::JoinSet::new();
        for &i in chunk {
            let session = format!("fleet-{i}");
            let nodes = set.candidates(&sid(&session));
            ensure!(nodes.len() == 3, "primary and two fallbacks: {nodes:?}");
            let a = Joiner::new(fleet, &nodes, &session, &format!("alice{i}"))?;
            let b = Joiner::new(fleet, &nodes, &session, &format!("bob{i}"))?;
            joins.spawn(async move {
                let (a, b) = tokio::join!(a.join(), b.join());
                let (a, b) = (a.context("alice")?, b.context("bob")?);
                let code = a.security_code().context("an E2EE call has a code")?;
                ensure!(
                    b.security_code().as_ref() == Some(&code),
                    "the codes differ"
                );
                anyhow::Ok((a, b, nodes[0].clone(), code))
            });
        }
        while let Some(r) = joins.join_next().await {
            let (a, b, node, code) = r??;
            let (a, b) = (Arc::new(a), Arc::new(b));
            let rx = [Arc::new(Rx::default()), Arc::new(Rx::default())];
            let mut tasks = pump(a.clone(), b.clone(), rx[0].clone());
            tasks.extend(pump(b.clone(), a.clone(), rx[1].clone()));
            calls.push(LiveCall {
                a,
                b,
                node,
                code,
                rx,
                tasks,
            });
        }
    }
    Ok(calls)
}

/// Fails on an event that means a call is over; returns how many endpoints moved.
async fn scan_events(calls: &[LiveCall]) -> Result<usize> {
    let mut moved = 0;
    for c in calls {
        for call in [&c.a, &c.b] {
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(2), call.next_event()).await
            {
                match ev {
                    Event::Migrated { .. } => moved += 1,
                    Event::PeerLeft(_) | Event::SessionEnded(_) | Event::Disconnected(_) => {
                        anyhow::bail!("a call ended: {ev:?}")
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(moved)
}

/// Waits until every call received `more` new frames both ways.
async fn all_flow(calls: &[LiveCall], more: u64, what: &str) -> Result<()> {
    let base: Vec<[u64; 2]> = calls
        .iter()
        .map(|c| [c.rx[0].frames.load(Relaxed), c.rx[1].frames.load(Relaxed)])
        .collect();
    let deadline = Instant::now() + 3 * STEP;
    loop {
        let stuck = calls
            .iter()
            .zip(&base)
            .filter(|(c, b)| (0..2).any(|d| c.rx[d].frames.load(Relaxed) < b[d] + more))
            .count();
        if stuck == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: {stuck} calls stopped carrying media"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reset_gaps(calls: &[LiveCall]) {
    for c in calls {
        for rx in &c.rx {
            *rx.max_gap.lock().unwrap() = Duration::ZERO;
        }
    }
}

async fn fleet_with_calls() -> Result<(Fleet, FleetDns, Vec<LiveCall>)> {
    let fleet = Fleet::start(3, |b| b)?;
    let book: Vec<(String, SocketAddr)> = fleet
        .address_book()
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    let dns = FleetDns::start(&book).await?;
    let set = NodeSet::from_source(NodeSource::parse(&dns.srv_source())?).await?;
    ensure!(
        set.nodes().len() == 3,
        "DNS names three ready nodes: {:?}",
        set.nodes()
    );
    let calls = place_calls(&fleet, &set).await?;
    all_flow(&calls, 5, "after the calls started").await?;
    Ok((fleet, dns, calls))
}

fn per_node(calls: &[LiveCall]) -> HashMap<NodeId, usize> {
    let mut m = HashMap::new();
    for c in calls {
        *m.entry(c.node.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_calls_continue_elsewhere_with_the_same_code_and_no_call_is_lost(
) -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    duet_testkit::init_tracing();
    let (mut fleet, _dns, calls) = fleet_with_calls().await?;
    let counts = per_node(&calls);
    ensure!(counts.len() == 3, "placement used every node: {counts:?}");
    let (victim, carried) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, c)| (n.clone(), *c))
        .context("calls")?;
    let vi = fleet
        .ids()
        .iter()
        .position(|n| *n == victim)
        .context("victim")?;
    scan_events(&calls).await?;
    reset_gaps(&calls);

    let killed_at = Instant::now();
    fleet.nodes[vi].sigkill()?;
    all_flow(&calls, 10, "after the SIGKILL").await?;
    let recovered_in = killed_at.elapsed();
    let moved = scan_events(&calls).await?;
    ensure!(
        moved == 2 * carried,
        "{moved} endpoints moved, {carried} calls were on {victim}"
    );

    let mut moved_gaps = Vec::new();
    let mut others_max = Duration::ZERO;
    for c in &calls {
        for call in [&c.a, &c.b] {
            ensure!(call.security_code().as_ref() == Some(&c.code), "a new code");
            ensure!(call.is_e2ee(), "no longer end-to-end encrypted");
        }
        let gap =
            c.rx.iter()
                .map(|r| *r.max_gap.lock().unwrap())
                .max()
                .unwrap_or_default();
        if c.node == victim {
            moved_gaps.push(gap);
        } else {
            others_max = others_max.max(gap);
        }
    }
    moved_gaps.sort();
    let pct = |q: f64| moved_gaps[((moved_gaps.len() - 1) as f64 * q) as usize];
    eprintln!(
        "killed {victim} carrying {carried} of {CALLS} calls: all flowing again after {recovered_in:?}; \
         media gap of moved calls p50 {:?} p99 {:?} max {:?}; longest gap elsewhere {others_max:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    // The calls elsewhere never stopped: their frames come every 100 ms.
    ensure!(
        others_max < Duration::from_millis(800),
        "calls on other nodes saw a {others_max:?} gap"
    );
    // Issue 14's bar. Catches the old recovery (wait out the idle timeout, then ask the
    // dead node again before the next one): p99 2.2 s with a 1 s idle timeout.
    ensure!(
        pct(0.99) < Duration::from_secs(1),
        "media gap of moved calls p99 {:?} (bar: < 1 s)",
        pct(0.99)
    );
    for c in &calls {
        for t in &c.tasks {
            t.abort();
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_under_load_moves_its_calls_and_ends_none() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    duet_testkit::init_tracing();
    let (fleet, _dns, calls) = fleet_with_calls().await?;
    let counts = per_node(&calls);
    let drained = Fleet::id(0);
    let carried = counts.get(&drained).copied().unwrap_or(0);
    ensure!(carried > 0, "{counts:?}");
    scan_events(&calls).await?;

    let (status, body) = duet_testkit::http_post(
        fleet.nodes[0].ops_addr(),
        "/admin/drain",
        OPS_TOKEN,
        r#"{"deadline_ms": 20000}"#,
    )
    .await?;
    ensure!(
        status == 200 || status == 202,
        "drain answered {status}: {body}"
    );
    all_flow(&calls, 10, "during the drain").await?;
    // Give every call of the drained node time to move, then count.
    let deadline = Instant::now() + 2 * STEP;
    let mut moved = 0;
    while moved < 2 * carried && Instant::now() < deadline {
        moved += scan_events(&calls).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        moved == 2 * carried,
        "{moved} endpoints moved of {carried} calls on {drained}"
    );
    all_flow(&calls, 5, "after the drain").await?;
    // Its sessions stay until the resume window closes; what matters is that it drains
    // and no call ended (`scan_events` above).
    let draining = duet_testkit::metric(
        &duet_testkit::scrape(fleet.nodes[0].ops_addr()).await,
        "duet_draining",
    );
    ensure!(draining == 1.0, "the node is not draining");
    for c in &calls {
        ensure!(c.a.security_code().as_ref() == Some(&c.code), "a new code");
        for t in &c.tasks {
            t.abort();
        }
    }
    Ok(())
}

/// A lossy, slow, jittery path with a short blackout is not a dead relay: with the default
/// `DeadRelay` thresholds no call moves, every call keeps its node, its code and its media.
/// Both endpoints of 10 calls reach both nodes through the user-space [`Impairer`]: 15%
/// loss, 60 ms delay with 60 ms jitter (which reorders), 2% duplicates, each way, for 8 s,
/// with a 300 ms blackout in the middle. A detector keyed on the RTT alone (a few RTTs of
/// silence: a few ms here) would move every call at the first burst of losses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_slow_path_moves_no_call() -> Result<()> {
    const LOSSY_CALLS: usize = 10;
    let _one = ONE_AT_A_TIME.lock().await;
    duet_testkit::init_tracing();
    let fleet = Fleet::start(2, |b| b)?;
    let mut net = Impairer::new(14);
    let mut book = Vec::new();
    for (node, addr) in fleet.address_book() {
        let l = Listener::bind().await?;
        book.push((node, l.addr()));
        net.forward(l, addr);
    }
    let nodes = fleet.ids();
    let mut calls = Vec::new();
    for i in 0..LOSSY_CALLS {
        let session = format!("lossy-{i}");
        let opts = options_with(&fleet, book.clone());
        let a = Joiner::with(&fleet, &nodes, &session, &format!("alice{i}"), opts.clone())?;
        let b = Joiner::with(&fleet, &nodes, &session, &format!("bob{i}"), opts)?;
        let (a, b) = tokio::join!(a.join(), b.join());
        let (a, b) = (Arc::new(a.context("alice")?), Arc::new(b.context("bob")?));
        let code = a.security_code().context("an E2EE call has a code")?;
        let rx = [Arc::new(Rx::default()), Arc::new(Rx::default())];
        let mut tasks = pump(a.clone(), b.clone(), rx[0].clone());
        tasks.extend(pump(b.clone(), a.clone(), rx[1].clone()));
        calls.push(LiveCall {
            a,
            b,
            node: nodes[0].clone(),
            code,
            rx,
            tasks,
        });
    }
    all_flow(&calls, 5, "before the impairment").await?;
    scan_events(&calls).await?;

    let lossy = Shape {
        loss: 0.15,
        delay: Duration::from_millis(60),
        jitter: Duration::from_millis(60),
        duplicate: 0.02,
        ..Shape::default()
    };
    net.set(lossy.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    net.set(Shape {
        outage: true,
        ..lossy.clone()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.set(lossy);
    tokio::time::sleep(Duration::from_secs(4)).await;
    all_flow(&calls, 5, "on the lossy path").await?;
    net.set(Shape::default());

    let moved = scan_events(&calls).await?;
    let dropped = net.stats().dropped;
    eprintln!("lossy path: {dropped} datagrams dropped, {moved} endpoints moved");
    ensure!(dropped > 100, "the path was not lossy: {dropped} dropped");
    ensure!(
        moved == 0,
        "{moved} endpoints moved on a path that only lost packets"
    );
    for c in &calls {
        for call in [&c.a, &c.b] {
            ensure!(
                call.node().as_ref() == Some(&c.node),
                "a call left its node"
            );
            ensure!(call.security_code().as_ref() == Some(&c.code), "a new code");
        }
        for t in &c.tasks {
            t.abort();
        }
    }
    Ok(())
}

/// An outage on one endpoint's path only (alice's to n1; bob's path and n1 are fine):
/// alice takes n1 for dead and moves to n2, finds no peer there within `peer_wait`, and
/// goes back to n1, which takes her place back with its resume secret; bob never moves.
/// The call carries media again with the same code. Catches a detector-driven move that
/// strands one endpoint on a node its peer never comes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_on_one_endpoint_s_path_brings_it_back_to_its_peer() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    duet_testkit::init_tracing();
    let fleet = Fleet::start(2, |b| b)?;
    let direct = fleet.address_book();
    // Alice reaches each node through its own impairer, so only her path to n1 fails.
    let mut paths = Vec::new();
    let mut alice_book = Vec::new();
    for (i, (node, addr)) in direct.iter().enumerate() {
        let mut net = Impairer::new(20 + i as u64);
        let l = Listener::bind().await?;
        alice_book.push((node.clone(), l.addr()));
        net.forward(l, *addr);
        paths.push(net);
    }
    let nodes = fleet.ids();
    let session = "one-sided";
    let a = Joiner::with(
        &fleet,
        &nodes,
        session,
        "alice",
        options_with(&fleet, alice_book),
    )?;
    let b = Joiner::with(&fleet, &nodes, session, "bob", options_with(&fleet, direct))?;
    let (a, b) = tokio::join!(a.join(), b.join());
    let (a, b) = (Arc::new(a.context("alice")?), Arc::new(b.context("bob")?));
    let code = a.security_code().context("a code")?;
    let rx = [Arc::new(Rx::default()), Arc::new(Rx::default())];
    let mut tasks = pump(a.clone(), b.clone(), rx[0].clone());
    tasks.extend(pump(b.clone(), a.clone(), rx[1].clone()));
    let call = [LiveCall {
        a: a.clone(),
        b: b.clone(),
        node: nodes[0].clone(),
        code: code.clone(),
        rx,
        tasks,
    }];
    all_flow(&call, 5, "before the outage").await?;

    paths[0].set(Shape {
        outage: true,
        ..Shape::default()
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    paths[0].set(Shape::default());

    // Alice: away to n2 and back to n1; bob: no move.
    let mut alice_moves = Vec::new();
    let deadline = Instant::now() + 3 * STEP;
    while alice_moves.len() < 2 && Instant::now() < deadline {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), a.next_event()).await
        {
            match ev {
                Event::Migrated { from, to } => alice_moves.push((from, to)),
                Event::PeerLeft(_) | Event::SessionEnded(_) | Event::Disconnected(_) => {
                    anyhow::bail!("alice's call ended: {ev:?}")
                }
                _ => {}
            }
        }
    }
    ensure!(
        alice_moves
            == vec![
                (nodes[0].clone(), nodes[1].clone()),
                (nodes[1].clone(), nodes[0].clone())
            ],
        "alice moved {alice_moves:?}"
    );
    all_flow(&call, 10, "after alice came back").await?;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(20), b.next_event()).await {
        ensure!(
            !matches!(
                ev,
                Event::Migrated { .. } | Event::PeerLeft(_) | Event::Disconnected(_)
            ),
            "bob saw {ev:?}"
        );
    }
    ensure!(
        a.node().as_ref() == Some(&nodes[0]),
        "alice is on {:?}",
        a.node()
    );
    ensure!(
        b.node().as_ref() == Some(&nodes[0]),
        "bob is on {:?}",
        b.node()
    );
    for c in [&a, &b] {
        ensure!(c.security_code().as_ref() == Some(&code), "a new code");
    }
    for t in &call[0].tasks {
        t.abort();
    }
    Ok(())
}

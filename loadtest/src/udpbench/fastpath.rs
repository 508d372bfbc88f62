//! The `fastpath` target: duet-relay's raw UDP fast path. Each endpoint joins over its own
//! QUIC control connection (no E2EE) for the `FastPathOffer` in `Joined`, then sends BIND
//! from its raw socket until the relay confirms with `FastPathBound`; then the shared raw
//! window, and `Leave` on every control connection.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::fastpath::{FastPathHeader, PacketType};

use super::joins::{client_runtime, ids, join_all, run_id, token_ttl};
use super::{bind_net, finish_raw, kind_for, relay_sample, Measured, SetupReport};
use crate::cli::UdpArgs;
use crate::fpctl::{self, Control};
use crate::target;
use crate::udp::{self, STOP};
use crate::udpgen::Endpoints;
use crate::udpnet::Addressing;

pub(super) fn run(a: &UdpArgs) -> anyhow::Result<Measured> {
    let access = target::RelayAccess::load(&a.access)?;
    let run_id = run_id(a);
    let rt = client_runtime(1)?;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let relay = a.target.addr;
    let ttl = token_ttl(a);
    let nep = 2 * a.pairs as usize;
    let net = bind_net(a, nep)?;
    // The relay binds the fast-path ticket to the control connection's IP, so an endpoint's
    // BIND must leave from that IP: with `ips` each endpoint's control connection leaves
    // from the endpoint's own address (one QUIC endpoint each), with `ports` all share one.
    let cfg = fpctl::client_config(&access.cert_pem)?;
    let binds: Vec<SocketAddr> = match net.addressing() {
        Addressing::Ports => vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        Addressing::Ips => (0..nep)
            .map(|e| SocketAddr::new((*net.local(e).ip()).into(), 0))
            .collect(),
    };
    let quic_eps: Arc<Vec<quinn::Endpoint>> = Arc::new(rt.block_on(async {
        binds
            .iter()
            .map(|b| fpctl::endpoint(cfg.clone(), *b))
            .collect::<anyhow::Result<Vec<_>>>()
    })?);
    let key = access.key.clone();
    let server_name = access.server_name.clone();
    let (pairs, failures) = rt.block_on(join_all(a.pairs, move |p, side| {
        let e = 2 * p as usize + usize::from(side == "b");
        let ep = quic_eps[if quic_eps.len() == 1 { 0 } else { e }].clone();
        let (key, server_name) = (key.clone(), server_name.clone());
        let id = ids(&run_id, p, side);
        async move {
            let (session, user, device) = id?;
            let token = target::mint(&key, &session, &user, &device, &[], ttl);
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
    }));
    let mut warnings = Vec::new();
    // Endpoint 2i = pair i side a, 2i+1 = side b; a pair sends when both got offers.
    let mut ctls: Vec<Option<Control>> = (0..nep).map(|_| None).collect();
    let mut no_offer = 0u64;
    for (p, x, y) in pairs {
        if x.offer.is_some() && y.offer.is_some() {
            ctls[2 * p as usize] = Some(x);
            ctls[2 * p as usize + 1] = Some(y);
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
    let active: Vec<usize> = (0..nep).filter(|&e| ctls[e].is_some()).collect();
    let kind = kind_for(a.size as usize);
    let offer = |e: usize| ctls[e].as_ref().and_then(|c| c.offer.as_ref());
    let dests: Vec<SocketAddrV4> = (0..nep)
        .map(|e| udp::v4(offer(e).map_or(relay, |o| o.target(relay))))
        .collect::<Result<_, _>>()?;
    let prefixes: Vec<Vec<u8>> = (0..nep)
        .map(|e| {
            offer(e).map_or_else(Vec::new, |o| {
                FastPathHeader::new(PacketType::Media(kind), o.channel)
                    .to_bytes()
                    .to_vec()
            })
        })
        .collect();
    // The receiver sees the sender's header: the peer's channel.
    let expect: Vec<Vec<u8>> = (0..nep).map(|e| prefixes[e ^ 1].clone()).collect();
    let bound = |e: usize| ctls[e].as_ref().is_some_and(|c| c.bound.load(Relaxed));
    // BIND from each endpoint's own address until the relay confirms (3 tries, 1 s each).
    for _ in 0..3 {
        for &e in active.iter().filter(|&&e| !bound(e)) {
            if let Some(pkt) = offer(e).and_then(|o| o.bind_packet()) {
                let _ = net.send_to(e, &pkt, SocketAddr::V4(dests[e]));
            }
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !active.iter().all(|&e| bound(e)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if active.iter().all(|&e| bound(e)) || STOP.load(Relaxed) {
            break;
        }
    }
    let confirmed = active.iter().filter(|&&e| bound(e)).count() as u64;
    let ready = (0..nep / 2)
        .filter(|p| bound(2 * p) && bound(2 * p + 1))
        .count() as u32;
    if confirmed < active.len() as u64 {
        warnings.push(format!(
            "{} of {} endpoints never got FastPathBound; their media will be lost",
            active.len() as u64 - confirmed,
            active.len()
        ));
    }
    let setup = SetupReport {
        pairs_ready: ready,
        pairs_failed: a.pairs - ready,
        failures,
        hellos_back: None,
        binds_confirmed: Some(confirmed),
        channels_bound: None,
        setup_s: t.elapsed().as_secs_f64(),
    };
    let fp_addr = active.first().map(|&e| SocketAddr::V4(dests[e]));
    let eps = Endpoints {
        net,
        active,
        dests,
        prefixes,
        expect: Arc::new(expect),
    };
    let m = finish_raw(a, eps, setup, fp_addr, rss0, warnings)?;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for c in ctls.into_iter().flatten() {
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

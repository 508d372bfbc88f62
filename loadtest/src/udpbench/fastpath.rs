//! The `fastpath` target: duet-relay's raw UDP fast path. Each endpoint joins over its own
//! QUIC control connection (no E2EE) for the `FastPathOffer` in `Joined`, then sends BIND
//! from its raw socket until the relay confirms with `FastPathBound`; then the shared raw
//! window, and `Leave` on every control connection.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_proto::fastpath::{FastPathHeader, PacketType};

use super::joins::{client_runtime, ids, join_all, relay_access, run_id, token_ttl};
use super::{bind_net, finish_raw, kind_for, relay_sample, Measured, SetupReport};
use crate::cli::UdpArgs;
use crate::fpctl::{self, Control};
use crate::target;
use crate::udp::{self, STOP};
use crate::udpgen::Endpoints;

pub(super) fn run(a: &UdpArgs) -> anyhow::Result<Measured> {
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
    let net = bind_net(a, nep)?;
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
                let _ = net.send_to(e, &pkt, SocketAddr::V4(dests[e]));
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
        channels_bound: None,
        setup_s: t.elapsed().as_secs_f64(),
    };
    let fp_addr = dests.first().map(|d| SocketAddr::V4(*d));
    let eps = Endpoints {
        net,
        active: (0..nep).collect(),
        dests,
        prefixes,
        expect: Arc::new(expect),
    };
    let m = finish_raw(a, eps, setup, fp_addr, rss0, warnings)?;
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

//! The `quic` target: duet-relay's QUIC datagram path through the SDK (clients joined
//! without E2EE, `send_raw_datagram` / `tap_raw`), paced by one thread: the SDK saturates
//! the generator long before the relay, so read `generator_cpu_s` beside the relay's.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::joins::{client_runtime, ids, join_all, run_id, token_ttl};
use super::{hold, kind_for, relay_sample, Measured, SetupReport};
use crate::cli::UdpArgs;
use crate::target;
use crate::udp::{self, RecvStats};

pub(super) fn run(a: &UdpArgs) -> anyhow::Result<Measured> {
    use duet_sdk::{Call, Client, ConnectOptions};
    let access = target::RelayAccess::load(&a.access)?;
    let run_id = run_id(a);
    let rt = client_runtime(2)?;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let relay = a.target.addr;
    let ttl = token_ttl(a);
    let size = a.size as usize;
    let opts = ConnectOptions {
        server_name: access.server_name.clone(),
        join_timeout: Duration::from_secs(10),
        ..ConnectOptions::trusting(access.cert_pem.clone())
    };
    let key = access.key.clone();
    let (pairs, failures) = rt.block_on(join_all(a.pairs, move |p, side| {
        let (key, opts) = (key.clone(), opts.clone());
        let id = ids(&run_id, p, side);
        async move {
            let (session, user, device) = id?;
            let token = target::mint(&key, &session, &user, &device, &[], ttl);
            let c = Client::connect(relay, token, opts).await?;
            Ok(c.join(session).await?)
        }
    }));
    let calls: Arc<Vec<Call>> = Arc::new(pairs.into_iter().flat_map(|(_, x, y)| [x, y]).collect());
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
        channels_bound: None,
        setup_s: t.elapsed().as_secs_f64(),
    };
    let kind = kind_for(size);
    let prefix = duet_proto::MediaHeader::new(kind).to_bytes().to_vec();
    let m = if a.idle || nep == 0 {
        hold(if nep == 0 { Duration::ZERO } else { a.duration });
        let (_, rss1) = relay_sample(a.relay_pid);
        Measured::without_media(setup, None, (rss0, rss1), warnings)
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
        let (c0, g0) = (relay_sample(a.relay_pid).0, udp::self_cpu_seconds());
        let cs = calls.clone();
        let send = udp::pace(&prefixes, a.pps, a.duration, size, |eps, bufs| {
            bufs.iter()
                .zip(eps)
                .filter(|(b, &ep)| cs[ep].send_raw_datagram(Bytes::copy_from_slice(b)).is_ok())
                .count()
        });
        if !send.interrupted {
            std::thread::sleep(udp::DRAIN);
        }
        let (c1, g1) = (relay_sample(a.relay_pid).0, udp::self_cpu_seconds());
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
            gen_window_cpu: Some(g1 - g0),
            threads: 1,
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

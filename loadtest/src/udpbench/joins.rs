//! What the fastpath and quic targets share: the ids and tokens of each pair's two
//! endpoints, bounded concurrent joins, and the runtime the control clients live on.
//! (Access to the relay, its certificate and token key, is `target::RelayAccess`.)

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use duet_proto::{DeviceId, SessionId, UserId};

use super::random_base;
use crate::cli::UdpArgs;
use crate::resources;
use crate::udp::STOP;

pub(super) fn ids(
    run_id: &str,
    pair: u32,
    side: &str,
) -> anyhow::Result<(SessionId, UserId, DeviceId)> {
    Ok((
        SessionId::new(format!("udp-{run_id}-{pair}"))?,
        UserId::new(format!("udp-{run_id}-{pair}-{side}"))?,
        DeviceId::new(format!("udp-dev-{side}"))?,
    ))
}

pub(super) fn token_ttl(a: &UdpArgs) -> Duration {
    a.duration + Duration::from_secs(600)
}

/// Joins every pair with `join(pair, side)`, at most [`JOINS_IN_FLIGHT`] joins in flight;
/// returns the joined pairs (index, both sides) in order, and failure counts by reason.
#[allow(clippy::type_complexity)]
pub(super) async fn join_all<T, F, Fut>(
    pairs: u32,
    join: F,
) -> (Vec<(u32, T, T)>, BTreeMap<String, u64>)
where
    T: Send + 'static,
    F: Fn(u32, &'static str) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(JOINS_IN_FLIGHT / 2));
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
    (ok, fails)
}

/// Joins (handshakes) in flight at once: below the relay's default
/// `admission.max_handshakes_per_source` (64), which every generator connection counts
/// against (they all leave from one address). At 64 pairs (128 joins) in flight, a third of
/// 100 pairs were refused (`duet_quic_handshakes_refused_total{reason="per_source"}`).
const JOINS_IN_FLIGHT: usize = 48;

/// This run's id in session and user names: given, or random.
pub(super) fn run_id(a: &UdpArgs) -> String {
    a.run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", random_base() >> 32))
}

/// The runtime the control clients live on, its threads named so their CPU is told apart.
pub(super) fn client_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(resources::CLIENT_THREAD_PREFIX)
        .enable_all()
        .build()
}

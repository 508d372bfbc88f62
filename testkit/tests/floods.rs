//! Floods while calls run, against the real `duet-relay` process: 20 SDK calls carry audio
//! both ways (50 frames/s each direction) while, all at once, garbage UDP hits the QUIC
//! port and the fast-path port, a join flood presents forged tokens (unknown key id, a
//! wrong key under the trusted id, junk), and a joined client floods `Signal`s.
//!
//! What must hold: the calls lose under 1% of their frames and none breaks; the fast path
//! answers not one byte to the flooding sockets (no source of theirs is bound); the QUIC
//! port answers less than it was sent (stateless resets are smaller than their trigger); no
//! forged join gets in, and each is refused with its own reason; the signal flooder's peer
//! gets no more than the signal budget; and every refusal is in the relay's counters.
//!
//! Bounded: every flood has a fixed count (about 2 s of flooding in all). The figures at
//! 100 calls with a release relay are `benches/floods.sh`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use duet_proto::RelayMessage;
use duet_sdk::Call;
use duet_testkit::abuse::{
    forged_tokens, join_flood, signal_flood, udp_garbage, Garbage, UdpFlood,
};
use duet_testkit::sdk::{assert_media_flows, carry_media, sdk_join};
use duet_testkit::{metric, metric_sum, scrape, wait_metric, Raw, RelayProcess, RelayUnderTest};

const CALLS: usize = 20;
/// The relay's default `limits.signals_per_sec` (sustained, and the burst).
const SIGNALS_PER_SEC: f64 = 20.0;

#[test]
fn calls_keep_their_media_while_every_flood_runs_and_unbound_sources_get_nothing() -> Result<()> {
    duet_testkit::init_tracing();
    let rt = tokio::runtime::Runtime::new()?;
    let relay = RelayProcess::start()?;
    let fast_path = relay
        .fast_path_addr()
        .expect("the fast path is on by default");
    rt.block_on(async {
        let mut calls: Vec<(Arc<Call>, Arc<Call>)> = Vec::new();
        for i in 0..CALLS {
            let s = format!("flood-call-{i}");
            let a = sdk_join(&relay, &s, "alice", "a-dev").await?;
            let b = sdk_join(&relay, &s, "bob", "b-dev").await?;
            assert_media_flows(&a, &b).await?;
            calls.push((Arc::new(a), Arc::new(b)));
        }
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let flows: Vec<_> = calls
            .iter()
            .flat_map(|(a, b)| {
                [
                    carry_media(a.clone(), b.clone(), stop.clone()),
                    carry_media(b.clone(), a.clone(), stop.clone()),
                ]
            })
            .collect();

        // The signal flooder and its peer, joined before the floods start.
        let (flooder, _) = Raw::join(&relay, "flood-signals", "mallory", "m-dev").await?;
        let (mut peer, _) = Raw::join(&relay, "flood-signals", "victim", "v-dev").await?;
        let peer_signals = Arc::new(AtomicU64::new(0));
        let counted = peer_signals.clone();
        let peer_task = tokio::spawn(async move {
            while let Ok(Some(m)) = peer.next().await {
                if matches!(m, RelayMessage::Signal(_)) {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;

        let forged = forged_tokens("default")?;
        let tokens: Vec<String> = forged.iter().map(|(t, _)| t.clone()).collect();
        let quic = relay.quic_addr();
        let cert = relay.cert_pem();
        let (garbage_quic, garbage_fp, joins, signals) = tokio::join!(
            udp_garbage(
                quic,
                UdpFlood {
                    kind: Garbage::Quic,
                    sockets: 4,
                    packets: 10_000,
                    per_sec: 5_000,
                    seed: 1,
                },
            ),
            udp_garbage(
                fast_path,
                UdpFlood {
                    kind: Garbage::FastPath,
                    sockets: 4,
                    packets: 10_000,
                    per_sec: 5_000,
                    seed: 2,
                },
            ),
            join_flood(quic, &cert, &tokens, 300, 6),
            signal_flood(flooder, 5_000, 200, 2_500),
        );
        let (garbage_quic, garbage_fp, joins, signals) =
            (garbage_quic?, garbage_fp?, joins?, signals?);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(true);
        tokio::time::sleep(Duration::from_millis(400)).await;
        peer_task.abort();

        // The calls.
        let (mut sent, mut got) = (0u64, 0u64);
        for (i, f) in flows.iter().enumerate() {
            ensure!(f.broken().is_empty(), "flow {i} broke: {:?}", f.broken());
            ensure!(f.sent() > 50, "flow {i} sent only {}", f.sent());
            sent += f.sent();
            got += f.received();
        }
        let loss = 1.0 - got as f64 / sent as f64;
        eprintln!(
            "calls: {CALLS}, frames sent {sent}, received {got}, loss {:.3}%",
            loss * 100.0
        );
        ensure!(
            loss < 0.01,
            "calls lost {:.2}% of their frames",
            loss * 100.0
        );
        for (a, b) in &calls {
            assert_media_flows(a, b).await?;
        }

        // Garbage.
        eprintln!("garbage at QUIC: {garbage_quic:?}\ngarbage at the fast path: {garbage_fp:?}");
        ensure!(
            garbage_fp.received_bytes == 0,
            "the fast path answered unbound sources: {garbage_fp:?}"
        );
        ensure!(
            garbage_quic.received_bytes < garbage_quic.sent_bytes,
            "the QUIC port amplified garbage: {garbage_quic:?}"
        );

        // Joins with forged tokens.
        eprintln!("join flood: {joins:?}");
        ensure!(joins.accepted == 0, "a forged token got in: {joins:?}");
        let refused: u64 = joins.refused.values().sum();
        ensure!(
            refused + joins.failed == joins.attempts && refused * 10 >= joins.attempts * 9,
            "{joins:?}"
        );

        // The signal flood.
        let delivered = peer_signals.load(Ordering::Relaxed) as f64;
        let budget = SIGNALS_PER_SEC * (1.0 + signals.elapsed.as_secs_f64() + 1.5);
        eprintln!("signal flood: {signals:?}, the peer got {delivered}");
        ensure!(
            delivered <= budget,
            "{delivered} signals reached the peer, budget {budget}"
        );
        ensure!(signals.rate_limited > 0, "{signals:?}");

        // Every refusal is counted.
        let ops = relay.ops_addr();
        for (_, reason) in &forged {
            let series = format!("duet_refusals_total{{reason=\"{}\"}}", reason.as_str());
            let want = joins.refused.get(reason.as_str()).copied().unwrap_or(0) as f64;
            ensure!(want > 0.0, "no {reason:?} refusal among {joins:?}");
            ensure!(wait_metric(ops, &series, want).await >= want, "{series}");
        }
        let text = scrape(ops).await;
        for reason in ["truncated", "bad_version", "unknown_channel"] {
            let series = format!("duet_fastpath_dropped_total{{reason=\"{reason}\"}}");
            ensure!(metric(&text, &series) > 0.0, "{series}: 0");
        }
        let fp_dropped = metric_sum(&text, "duet_fastpath_dropped_total", &[]);
        ensure!(
            fp_dropped >= garbage_fp.sent_packets as f64 * 0.9,
            "fast-path drops {fp_dropped} for {} garbage packets",
            garbage_fp.sent_packets
        );
        let rate_limited = metric(&text, "duet_signals_dropped_total{reason=\"rate_limited\"}");
        ensure!(
            rate_limited >= signals.rate_limited as f64,
            "signals rate_limited {rate_limited}, the flooder heard {}",
            signals.rate_limited
        );
        ensure!(
            metric(&text, "duet_sessions") >= CALLS as f64,
            "sessions: {text}"
        );
        anyhow::Ok(())
    })
}

//! `floods`: every flood of `duet_testkit::abuse` at a running relay, at once, for
//! `benches/floods.sh`: garbage UDP at its QUIC and fast-path ports, joins with forged
//! tokens, and a signal flood from a joined client (tokens from the relay's signing key).
//! Prints one JSON object with what each flood sent and drew.
//!
//! `cargo run --release -p duet-testkit --example floods -- QUIC_ADDR FASTPATH_ADDR
//! CERT_PEM SIGNING_KEY_FILE [SECONDS] [GARBAGE_PER_SEC]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use duet_proto::{RelayMessage, SigningKey};
use duet_testkit::abuse::{
    forged_tokens, join_flood, signal_flood, udp_garbage, Garbage, UdpFlood,
};
use duet_testkit::{Raw, RelayUnderTest};

struct Target {
    quic: SocketAddr,
    cert: Vec<u8>,
    key: SigningKey,
}

impl RelayUnderTest for Target {
    fn quic_addr(&self) -> SocketAddr {
        self.quic
    }
    fn ops_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    fn cert_pem(&self) -> Vec<u8> {
        self.cert.clone()
    }
    fn signer(&self) -> SigningKey {
        self.key.clone()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [quic, fast_path, cert, key, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: floods QUIC_ADDR FASTPATH_ADDR CERT_PEM SIGNING_KEY_FILE [SECONDS] [GARBAGE_PER_SEC]");
    };
    let secs: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let per_sec: u64 = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5_000);
    let seed = std::fs::read_to_string(key).context("signing key")?;
    let t = Target {
        quic: quic.parse()?,
        cert: std::fs::read(cert).context("certificate")?,
        key: SigningKey::ed25519_from_hex("default", seed.trim())?,
    };
    let fast_path: SocketAddr = fast_path.parse()?;

    let (flooder, _) = Raw::join(&t, "bench-flood-signals", "mallory", "m-dev").await?;
    let (mut peer, _) = Raw::join(&t, "bench-flood-signals", "victim", "v-dev").await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let d = delivered.clone();
    let peer_task = tokio::spawn(async move {
        while let Ok(Some(m)) = peer.next().await {
            if matches!(m, RelayMessage::Signal(_)) {
                d.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let tokens: Vec<String> = forged_tokens("default")?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let flood = |kind, seed| UdpFlood {
        kind,
        sockets: 8,
        packets: per_sec * secs,
        per_sec,
        seed,
    };
    let t0 = std::time::Instant::now();
    let (gq, gf, joins, signals) = tokio::join!(
        udp_garbage(t.quic, flood(Garbage::Quic, 1)),
        udp_garbage(fast_path, flood(Garbage::FastPath, 2)),
        // About 100 forged joins a second, 4 at a time.
        join_flood(t.quic, &t.cert, &tokens, 100 * secs, 4),
        signal_flood(flooder, 2_000 * secs, 200, 2_000),
    );
    let (gq, gf, joins, signals) = (gq?, gf?, joins?, signals?);
    peer_task.abort();
    let refused: Vec<String> = joins
        .refused
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!(
        "{{\"seconds\": {:.1}, \
         \"garbage_quic\": {{\"sent_packets\": {}, \"sent_bytes\": {}, \"received_packets\": {}, \"received_bytes\": {}}}, \
         \"garbage_fast_path\": {{\"sent_packets\": {}, \"sent_bytes\": {}, \"received_packets\": {}, \"received_bytes\": {}}}, \
         \"joins\": {{\"attempts\": {}, \"accepted\": {}, \"failed\": {}, \"refused\": {{{}}}, \"seconds\": {:.2}}}, \
         \"signals\": {{\"sent\": {}, \"rate_limited_notices\": {}, \"delivered_to_peer\": {}, \"seconds\": {:.2}}}}}",
        t0.elapsed().as_secs_f64(),
        gq.sent_packets, gq.sent_bytes, gq.received_packets, gq.received_bytes,
        gf.sent_packets, gf.sent_bytes, gf.received_packets, gf.received_bytes,
        joins.attempts, joins.accepted, joins.failed, refused.join(", "), joins.elapsed.as_secs_f64(),
        signals.sent, signals.rate_limited, delivered.load(Ordering::Relaxed), signals.elapsed.as_secs_f64(),
    );
    Ok(())
}

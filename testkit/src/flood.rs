//! [`flood_initials`]: QUIC Initials at a relay from a socket that never answers, the way a
//! handshake flood (or a spoofed-source amplification attempt) reaches it, and what came
//! back: bytes and datagrams each way, so a test can check the 3x anti-amplification rule
//! and that a flood does not hurt live calls.
//!
//! The Initials are real ones: a quinn client endpoint makes each connection attempt, but
//! its datagrams reach the relay only through a forwarder that sends them from the
//! attacker socket and never passes anything back, so the relay sees an address that sent
//! its first flight and then went silent. Each attempt's datagrams are forwarded only in
//! the first [`FIRST_FLIGHT`] after its first one (no client retransmission, no close).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::{pem::PemObject, CertificateDer};

/// How long after an attempt's first datagram its datagrams are still forwarded.
pub const FIRST_FLIGHT: Duration = Duration::from_millis(50);

/// What one flood sent and drew.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodReport {
    pub attempts: u64,
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    pub received_datagrams: u64,
    pub received_bytes: u64,
    /// From the first attempt to the last.
    pub elapsed: Duration,
}

impl FloodReport {
    /// Bytes drawn per byte sent.
    pub fn amplification(&self) -> f64 {
        self.received_bytes as f64 / self.sent_bytes.max(1) as f64
    }
}

/// How to flood.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Connection attempts in all.
    pub attempts: u64,
    /// Attempts per second (paced in 10 ms steps).
    pub per_sec: u64,
    /// How long to keep counting what the relay sends after the last attempt (its
    /// retransmissions, a close at its handshake timeout).
    pub linger: Duration,
    /// Offer only X25519, so each ClientHello fits one 1200-byte Initial: the smallest
    /// first flight a client can send, the strictest amplification check.
    pub small_hello: bool,
}

fn client_config(cert_pem: &[u8], small_hello: bool) -> Result<quinn::ClientConfig> {
    if !small_hello {
        return Ok(duet_sdk::tls::quic_client_config(
            &duet_sdk::ConnectOptions::trusting(cert_pem),
        )?);
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(c?)?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![duet_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// The destination connection id of a long-header packet.
fn long_header_dcid(d: &[u8]) -> Option<&[u8]> {
    if d.first()? & 0x80 == 0 {
        return None;
    }
    let len = usize::from(*d.get(5)?);
    d.get(6..6 + len)
}

/// Floods `relay` (whose certificate is `cert_pem`) with connection attempts that never
/// answer; returns what was sent and what came back.
pub async fn flood_initials(
    relay: SocketAddr,
    cert_pem: &[u8],
    flood: Flood,
) -> Result<FloodReport> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let attacker = Arc::new(tokio::net::UdpSocket::bind(loopback).await?);
    attacker.connect(relay).await?;
    let proxy = tokio::net::UdpSocket::bind(loopback).await?;
    let proxy_addr = proxy.local_addr()?;
    let mut client = quinn::Endpoint::client(loopback)?;
    client.set_default_client_config(client_config(cert_pem, flood.small_hello)?);

    let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let received = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let forward = {
        let (attacker, sent) = (attacker.clone(), sent.clone());
        tokio::spawn(async move {
            let mut first_seen: HashMap<Vec<u8>, Instant> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = proxy.recv_from(&mut buf).await {
                let d = &buf[..n];
                let Some(dcid) = long_header_dcid(d) else {
                    continue;
                };
                let t0 = *first_seen.entry(dcid.to_vec()).or_insert_with(Instant::now);
                if t0.elapsed() <= FIRST_FLIGHT && attacker.send(d).await.is_ok() {
                    sent[0].fetch_add(1, Ordering::Relaxed);
                    sent[1].fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let count = {
        let (attacker, received) = (attacker.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = attacker.recv(&mut buf).await {
                received[0].fetch_add(1, Ordering::Relaxed);
                received[1].fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };

    // Each attempt is kept a little past its first flight, then dropped: its close goes
    // to the forwarder after FIRST_FLIGHT and is not passed on.
    let per_step = (flood.per_sec / 100).max(1);
    let mut pending = std::collections::VecDeque::new();
    let t0 = Instant::now();
    let mut made = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while made < flood.attempts {
        tick.tick().await;
        for _ in 0..per_step.min(flood.attempts - made) {
            let c = client
                .connect(proxy_addr, "localhost")
                .context("starting a connection attempt")?;
            pending.push_back((Instant::now(), c));
            made += 1;
        }
        while pending
            .front()
            .is_some_and(|(t, _)| t.elapsed() > FIRST_FLIGHT * 2)
        {
            pending.pop_front();
        }
    }
    let elapsed = t0.elapsed();
    tokio::time::sleep(flood.linger).await;
    drop(pending);
    client.close(0u32.into(), b"");
    forward.abort();
    count.abort();
    Ok(FloodReport {
        attempts: made,
        sent_datagrams: sent[0].load(Ordering::Relaxed),
        sent_bytes: sent[1].load(Ordering::Relaxed),
        received_datagrams: received[0].load(Ordering::Relaxed),
        received_bytes: received[1].load(Ordering::Relaxed),
        elapsed,
    })
}

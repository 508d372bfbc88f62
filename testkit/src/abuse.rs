//! Floods that hit a relay while calls run, each from sockets of its own that count every
//! byte the relay sends back:
//! - [`udp_garbage`]: datagrams at a UDP port, random bytes or, for the fast path, packets
//!   that parse but name channels never issued and carry forged BIND tickets
//!   ([`Garbage`]);
//! - [`join_flood`]: QUIC connections that `Join` with tokens the relay must refuse
//!   ([`forged_tokens`]: an unknown key id, a wrong key under a trusted id, junk);
//! - [`signal_flood`]: a joined client sending `Signal`s as fast as its stream takes them.
//!
//! What the relay does with them is the relay's; the handshake (Initial) flood is
//! [`crate::flood`]'s. Every flood is bounded in count; every wait in time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use duet_proto::control::encode;
use duet_proto::fastpath::{bind_packet_from, FastPathHeader, PacketType, TICKET_LEN};
use duet_proto::{
    ChannelId, ClientMessage, FrameDecoder, JoinToken, MediaKind, RefusalReason, RelayMessage,
    SigningKey,
};
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

use crate::raw::Raw;
use crate::tokens::claims;

/// What [`udp_garbage`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// At a QUIC port: random bytes of random length; a third shaped as long-header v1
    /// Initials of 1,200 bytes (they fail decryption), a third as short-header packets for
    /// connection ids never issued (what draws a stateless reset, smaller than the packet).
    Quic,
    /// At the fast-path port: truncated headers, bad versions and types, media for random
    /// channel ids, BINDs with random tickets, and plain random bytes.
    FastPath,
}

/// How to flood a UDP port.
#[derive(Debug, Clone, Copy)]
pub struct UdpFlood {
    pub kind: Garbage,
    /// Sending sockets (distinct source ports), used in turn.
    pub sockets: usize,
    /// Datagrams in all.
    pub packets: u64,
    /// Datagrams per second, paced in 10 ms steps.
    pub per_sec: u64,
    pub seed: u64,
}

/// What a UDP flood sent and what came back to its sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpReport {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
}

fn garbage(kind: Garbage, rng: &mut impl Rng, buf: &mut Vec<u8>) {
    buf.clear();
    let pick = rng.random_range(0..6u8);
    match (kind, pick) {
        (Garbage::Quic, 0 | 1) => {
            buf.resize(1200, 0);
            rng.fill(&mut buf[..]);
            buf[0] = 0xc0 | (buf[0] & 0x0f);
            buf[1..5].copy_from_slice(&1u32.to_be_bytes());
            buf[5] = 8; // DCID length
        }
        (Garbage::Quic, 2 | 3) => {
            buf.resize(rng.random_range(40..1200), 0);
            rng.fill(&mut buf[..]);
            buf[0] = 0x40 | (buf[0] & 0x3f);
        }
        (Garbage::FastPath, 0) => {
            buf.resize(rng.random_range(1..10), 0);
            rng.fill(&mut buf[..]);
        }
        (Garbage::FastPath, 1) => {
            let h =
                FastPathHeader::new(PacketType::Media(MediaKind::Audio), ChannelId(rng.random()));
            buf.extend_from_slice(&h.to_bytes());
            buf.resize(buf.len() + rng.random_range(0..1200), 0);
            let start = 10;
            rng.fill(&mut buf[start..]);
        }
        (Garbage::FastPath, 2) => {
            let mut ticket = [0u8; TICKET_LEN];
            rng.fill(&mut ticket[..]);
            ticket[0] = duet_proto::fastpath::TICKET_VERSION;
            if let Some(p) = bind_packet_from(ChannelId(rng.random()), &ticket) {
                buf.extend_from_slice(&p);
            }
        }
        (Garbage::FastPath, 3) => {
            let h =
                FastPathHeader::new(PacketType::Media(MediaKind::Video), ChannelId(rng.random()));
            buf.extend_from_slice(&h.to_bytes());
            buf[0] = rng.random_range(2..=255); // bad version
            buf[1] = rng.random(); // and most likely a bad type
            buf.extend_from_slice(&[0u8; 64]);
        }
        _ => {
            buf.resize(rng.random_range(1..1400), 0);
            rng.fill(&mut buf[..]);
        }
    }
}

/// Floods `target` as `f` says, then keeps listening for 500 ms (late answers count).
pub async fn udp_garbage(target: SocketAddr, f: UdpFlood) -> Result<UdpReport> {
    let recv_packets = Arc::new(AtomicU64::new(0));
    let recv_bytes = Arc::new(AtomicU64::new(0));
    let mut socks = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..f.sockets.max(1) {
        let s = Arc::new(UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        let (r, p, b) = (s.clone(), recv_packets.clone(), recv_bytes.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = r.recv_from(&mut buf).await {
                p.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
        socks.push(s);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(f.seed);
    let mut report = UdpReport::default();
    let per_step = (f.per_sec / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut buf = Vec::with_capacity(1500);
    let mut i = 0usize;
    while report.sent_packets < f.packets {
        tick.tick().await;
        for _ in 0..per_step.min(f.packets - report.sent_packets) {
            garbage(f.kind, &mut rng, &mut buf);
            let s = &socks[i % socks.len()];
            i += 1;
            // A full socket buffer drops the datagram here, as the network would.
            if s.try_send_to(&buf, target).is_ok() {
                report.sent_bytes += buf.len() as u64;
            }
            report.sent_packets += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in readers {
        r.abort();
    }
    report.received_packets = recv_packets.load(Ordering::Relaxed);
    report.received_bytes = recv_bytes.load(Ordering::Relaxed);
    Ok(report)
}

/// Tokens a relay trusting a key with id `trusted_kid` must refuse, with the refusal each
/// must draw: signed by a key id it does not know (`unknown_key`), by another key under the
/// trusted id (`bad_signature`), and not a token at all (`bad_token`).
pub fn forged_tokens(trusted_kid: &str) -> Result<Vec<(String, RefusalReason)>> {
    let c = claims("flood", "mallory", "mallory-dev");
    let stranger = SigningKey::generate("stranger")?;
    let impostor = SigningKey::generate(trusted_kid)?;
    Ok(vec![
        (JoinToken::mint(&stranger, &c), RefusalReason::UnknownKey),
        (JoinToken::mint(&impostor, &c), RefusalReason::BadSignature),
        ("not a token at all".to_owned(), RefusalReason::BadToken),
    ])
}

/// What a join flood drew, by the relay's answer.
#[derive(Debug, Clone, Default)]
pub struct JoinFloodReport {
    pub attempts: u64,
    /// Refusals by reason (`unknown_key`, ...).
    pub refused: BTreeMap<&'static str, u64>,
    /// Joins the relay accepted (none should be).
    pub accepted: u64,
    /// Attempts that got no answer (handshake refused or timed out, stream closed).
    pub failed: u64,
    pub elapsed: Duration,
}

/// `attempts` connections (at most `concurrency` at once), each sending `Join` with the next
/// of `tokens` in turn and reading the answer.
pub async fn join_flood(
    addr: SocketAddr,
    cert_pem: &[u8],
    tokens: &[String],
    attempts: u64,
    concurrency: usize,
) -> Result<JoinFloodReport> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let permit = sem.clone().acquire_owned().await?;
        let token = tokens[i as usize % tokens.len()].clone();
        let cert = cert_pem.to_vec();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                let mut r = Raw::connect_to(addr, &cert).await?;
                let m = r.join_raw(&format!("flood-{i}"), token, None).await;
                r.endpoint.close(0u32.into(), b"");
                m
            };
            tokio::time::timeout(crate::STEP, answer)
                .await
                .ok()
                .and_then(Result::ok)
        }));
    }
    let mut report = JoinFloodReport {
        attempts,
        ..JoinFloodReport::default()
    };
    for t in tasks {
        match t.await? {
            Some(RelayMessage::Refused(r)) => *report.refused.entry(r.as_str()).or_default() += 1,
            Some(RelayMessage::Joined(_)) => report.accepted += 1,
            _ => report.failed += 1,
        }
    }
    report.elapsed = t0.elapsed();
    Ok(report)
}

/// What a signal flood sent and heard back.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignalFloodReport {
    pub sent: u64,
    /// `Dropped(RateLimited)` notices the flooder got.
    pub rate_limited: u64,
    pub elapsed: Duration,
}

/// From `raw`, already joined: `count` `Signal`s of `size` bytes, `per_sec` of them a second
/// (written in 10 ms steps; 0: back to back, the stream's flow control the only pacing),
/// answers read meanwhile; then 500 ms more of reading. The connection is closed at the end.
pub async fn signal_flood(
    raw: Raw,
    count: u64,
    size: usize,
    per_sec: u64,
) -> Result<SignalFloodReport> {
    let Raw {
        endpoint,
        conn,
        mut send,
        mut recv,
        ..
    } = raw;
    let limited = Arc::new(AtomicU64::new(0));
    let l = limited.clone();
    let reader = tokio::spawn(async move {
        let mut dec = FrameDecoder::default();
        while let Ok(Some(c)) = recv.read_chunk(65536, true).await {
            dec.extend(&c.bytes);
            while let Ok(Some(m)) = dec.next_message::<RelayMessage>() {
                if m == RelayMessage::Dropped(RefusalReason::RateLimited) {
                    l.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let frame = encode(&ClientMessage::Signal(bytes::Bytes::from(vec![0x5a; size])))?;
    let t0 = Instant::now();
    let mut sent = 0;
    // Frames batched into one write per step: the flood is bounded by the stream and the
    // pace, not by syscalls.
    let step = if per_sec == 0 {
        50
    } else {
        (per_sec / 100).max(1)
    };
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * step as usize)
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while sent < count {
        if per_sec > 0 {
            tick.tick().await;
        }
        let n = (count - sent).min(step);
        let bytes = &batch[..frame.len() * n as usize];
        tokio::time::timeout(crate::STEP, send.write_all(bytes))
            .await
            .context("the signal flood's stream stalled")??;
        sent += n;
    }
    let elapsed = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.close(0u32.into(), b"done");
    reader.abort();
    endpoint.close(0u32.into(), b"");
    Ok(SignalFloodReport {
        sent,
        rate_limited: limited.load(Ordering::Relaxed),
        elapsed,
    })
}

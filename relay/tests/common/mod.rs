//! Helpers shared by the relay's integration tests: an in-process relay on loopback with
//! short timeouts, tokens, SDK and raw-quinn clients, and /metrics scraping over HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use duet_proto::control::encode;
use duet_proto::{
    ClientMessage, DeviceId, E2eeClaim, FrameDecoder, JoinClaims, JoinToken, Joined, RelayMessage,
    ResumeSecret, SessionId, SigningKey, UserId, ALPN,
};
use duet_relay::{Config, LimitsConfig, Relay, RelayHandle};
use duet_sdk::{Call, Client, ConnectOptions, Event};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const STEP: Duration = Duration::from_secs(5);

pub struct TestRelay {
    pub relay: RelayHandle,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestRelay {
    type Target = RelayHandle;
    fn deref(&self) -> &RelayHandle {
        &self.relay
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        node_id: "test-node".into(),
        drain_deadline_ms: 10_000,
        limits: LimitsConfig {
            media_packets_per_sec: 1_000_000,
            media_bytes_per_sec: 1_000_000_000,
            signals_per_sec: 1000,
            join_timeout_ms: 2_000,
            idle_timeout_ms: 20_000,
            resume_window_ms: 5_000,
            ..LimitsConfig::default()
        },
        ..Config::loopback(dir)
    }
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestRelay {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    f(&mut cfg);
    let relay = Relay::start(cfg).await.expect("relay starts");
    TestRelay { relay, _dir: dir }
}

pub async fn start() -> TestRelay {
    start_with(|_| {}).await
}

pub fn now() -> u64 {
    duet_proto::clock::unix_now()
}

pub fn claims(session: &str, user: &str, device: &str) -> JoinClaims {
    JoinClaims::builder(
        SessionId::new(session).unwrap(),
        UserId::new(user).unwrap(),
        DeviceId::new(device).unwrap(),
    )
    .e2ee(E2eeClaim::Allowed)
    .build()
    .unwrap()
}

/// The key the test relay's tokens are signed with: the key pair it generated in its data
/// directory (the relay holds only the public half).
pub fn signer(relay: &RelayHandle) -> SigningKey {
    relay.config().load_signing_key(None, None).unwrap()
}

pub fn token_with(key: &SigningKey, c: &JoinClaims) -> String {
    JoinToken::mint(key, c)
}

pub fn token(relay: &RelayHandle, session: &str, user: &str, device: &str) -> String {
    JoinToken::mint(&signer(relay), &claims(session, user, device))
}

pub fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

pub fn opts(relay: &RelayHandle) -> ConnectOptions {
    ConnectOptions::trusting(relay.cert_pem())
}

/// Connects with the SDK and joins.
pub async fn sdk_join(
    relay: &RelayHandle,
    session: &str,
    user: &str,
    device: &str,
) -> Result<Call> {
    let client = Client::connect(
        relay.quic_addr(),
        token(relay, session, user, device),
        opts(relay),
    )
    .await?;
    Ok(client.join(sid(session)).await?)
}

/// The next event, skipping none; fails after `STEP`.
pub async fn next_event(call: &Call) -> Result<Event> {
    tokio::time::timeout(STEP, call.next_event())
        .await
        .context("timed out waiting for an event")?
        .context("event stream ended")
}

/// Waits for an event equal to `want`, skipping others.
pub async fn expect_event(call: &Call, want: Event) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let ev = tokio::time::timeout_at(deadline, call.next_event())
            .await
            .with_context(|| format!("timed out waiting for {want:?}"))?
            .with_context(|| format!("events ended before {want:?}"))?;
        if ev == want {
            return Ok(());
        }
    }
}

/// A peer that still forwards: one small frame each way arrives intact.
pub async fn assert_media_flows(a: &Call, b: &Call) -> Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        let payload = format!("still here {}", rand::random::<u64>()).into_bytes();
        // Datagrams are unreliable: resend until one arrives.
        let got = tokio::time::timeout(STEP, async {
            loop {
                from.send_media(duet_proto::MediaKind::Audio, &payload)
                    .await?;
                if let Ok(Ok(f)) =
                    tokio::time::timeout(Duration::from_millis(200), to.recv_media()).await
                {
                    if f.data.as_ref() == payload.as_slice() {
                        return anyhow::Ok(());
                    }
                }
            }
        })
        .await;
        got.context("media did not flow")??;
    }
    Ok(())
}

// ---------------------------------------------------------------- raw quinn client

pub fn client_endpoint(cert_pem: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    // aws-lc-rs with the hybrid post-quantum group first.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .sort_by_key(|g| g.name() != rustls::NamedGroup::X25519MLKEM768);
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cc = quinn::ClientConfig::new(Arc::new(qc));
    let mut tc = quinn::TransportConfig::default();
    tc.datagram_receive_buffer_size(Some(8 << 20));
    tc.datagram_send_buffer_size(8 << 20);
    cc.transport_config(Arc::new(tc));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cc);
    ep
}

/// A hand-driven client: raw control frames and raw datagrams.
pub struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl Raw {
    pub async fn connect(relay: &RelayHandle) -> Result<Raw> {
        let endpoint = client_endpoint(&relay.cert_pem());
        let conn = endpoint.connect(relay.quic_addr(), "localhost")?.await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(Raw {
            endpoint,
            conn,
            send,
            recv,
            dec: FrameDecoder::default(),
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    pub async fn send_msg(&mut self, m: &ClientMessage) -> Result<()> {
        let f = encode(m)?;
        self.write(&f).await
    }

    /// The next relay message, `None` if the stream or connection ended.
    pub async fn next(&mut self) -> Result<Option<RelayMessage>> {
        let fut = async {
            loop {
                if let Some(m) = self.dec.next_message::<RelayMessage>()? {
                    return Ok(Some(m));
                }
                match self.recv.read_chunk(65536, true).await {
                    Ok(Some(c)) => self.dec.extend(&c.bytes),
                    _ => return Ok(None),
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .context("timed out waiting for a relay message")?
    }

    pub async fn join_raw(
        &mut self,
        session: &str,
        token: String,
        resume: Option<ResumeSecret>,
    ) -> Result<RelayMessage> {
        self.send_msg(&ClientMessage::Join {
            session: sid(session),
            token,
            resume,
            e2ee: true,
        })
        .await?;
        self.next().await?.context("no answer to Join")
    }

    pub async fn join(
        relay: &RelayHandle,
        session: &str,
        user: &str,
        device: &str,
    ) -> Result<(Raw, Joined)> {
        let mut r = Raw::connect(relay).await?;
        match r
            .join_raw(session, token(relay, session, user, device), None)
            .await?
        {
            RelayMessage::Joined(j) => Ok((r, j)),
            other => bail!("expected Joined, got {other:?}"),
        }
    }

    pub async fn recv_datagram(&self) -> Result<Bytes> {
        Ok(tokio::time::timeout(STEP, self.conn.read_datagram()).await??)
    }

    /// Waits for the connection to close; returns its application close code.
    pub async fn closed_code(&self) -> Option<u64> {
        match tokio::time::timeout(STEP, self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- ops HTTP

/// GET `path` on the ops address: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}

/// Scrapes /metrics over HTTP.
pub async fn scrape(relay: &RelayHandle) -> String {
    let (status, body) = http_get(relay.ops_addr(), "/metrics")
        .await
        .expect("scrape");
    assert_eq!(status, 200);
    body
}

/// The value of one series (`name{labels}` exactly as rendered, or a bare name); 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if k == series {
                return v.parse().unwrap_or(0.0);
            }
        }
    }
    0.0
}

/// Scrapes until `series` reaches at least `at_least` (counters are updated asynchronously).
pub async fn wait_metric(relay: &RelayHandle, series: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let v = metric(&scrape(relay).await, series);
        if v >= at_least || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

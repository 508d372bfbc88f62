//! `duet-relay probe`: a synthetic check of a relay's data plane, for monitoring (a
//! Kubernetes CronJob, a systemd timer), never as a liveness probe: it depends on the
//! network path and on the token key, which a liveness check must not.
//!
//! It joins a fresh probe session with two endpoints (tokens minted with the given signing
//! key), sends media both ways over QUIC datagrams and then over the raw-UDP fast path
//! (after binding both endpoints with their tickets), each packet echoed back by the other
//! side, and reports the median round-trip time of each. Exit 0 when every round trip came
//! back, 1 otherwise. It speaks only `duet_proto` over quinn: no SDK, no E2EE (the relay
//! forwards opaque bytes either way).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duet_proto::control::encode;
use duet_proto::fastpath::{FastPathHeader, PacketType};
use duet_proto::{
    ClientMessage, DeviceId, E2eeClaim, FastPathOffer, FrameDecoder, JoinClaims, JoinToken,
    MediaHeader, MediaKind, NodeId, RelayMessage, SessionId, SigningKey, UserId,
};
use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::config::parse_duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The relay's QUIC address
    #[arg(long, value_name = "ADDR")]
    pub relay: SocketAddr,
    /// Name the relay's certificate is checked against
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// PEM file of the certificate (or CA) to trust for the relay
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Token signing key (hex Ed25519 seed) whose public half the relay trusts
    #[arg(long, value_name = "FILE")]
    pub token_key: PathBuf,
    /// Key id written into the probe's tokens
    #[arg(long, default_value = "default")]
    pub key_id: String,
    /// The relay's node id, when its tokens must name it
    #[arg(long)]
    pub node: Option<NodeId>,
    /// Round trips per transport
    #[arg(long, default_value_t = 5)]
    pub count: u32,
    /// Give up after this long in all, e.g. 10s
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Check QUIC only (for a relay with the fast path off)
    #[arg(long)]
    pub quic_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Setup(String),
    #[error("QUIC connection to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the relay refused the probe's join: {0}")]
    Refused(String),
    #[error("the probe's control stream: {0}")]
    Control(String),
    #[error("no fast-path offer in Joined (fast path off? use --quic-only)")]
    NoFastPath,
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What a probe measured: median round-trip times.
#[derive(Debug, Clone, Copy)]
pub struct ProbeReport {
    pub quic_rtt: Duration,
    pub fast_path_rtt: Option<Duration>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok quic_rtt_ms={:.3}", self.quic_rtt.as_secs_f64() * 1e3)?;
        match self.fast_path_rtt {
            Some(r) => write!(f, " fast_path_rtt_ms={:.3}", r.as_secs_f64() * 1e3),
            None => write!(f, " fast_path=skipped"),
        }
    }
}

/// Runs the probe on its own runtime; prints the report line.
pub fn run(args: ProbeArgs) -> Result<(), ProbeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = args.timeout;
    let report = rt.block_on(async move {
        tokio::time::timeout(timeout, probe(&args))
            .await
            .map_err(|_| ProbeError::Timeout { what: "the probe" })?
    })?;
    println!("{report}");
    Ok(())
}

fn setup(e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Setup(e.to_string())
}

fn client_config(ca: &[u8]) -> Result<quinn::ClientConfig, ProbeError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c.map_err(setup)?).map_err(setup)?;
    }
    if roots.is_empty() {
        return Err(setup("--ca holds no certificate"));
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .sort_by_key(|g| g.name() != rustls::NamedGroup::X25519MLKEM768);
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![duet_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(setup)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// One probe endpoint: its connection and control stream.
struct End {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl End {
    async fn connect(ep: &quinn::Endpoint, a: &ProbeArgs) -> Result<End, ProbeError> {
        let err = |e: &dyn std::fmt::Display| ProbeError::Connect {
            addr: a.relay,
            reason: e.to_string(),
        };
        let conn = ep
            .connect(a.relay, &a.server_name)
            .map_err(|e| err(&e))?
            .await
            .map_err(|e| err(&e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| err(&e))?;
        Ok(End {
            conn,
            send,
            recv,
            dec: FrameDecoder::default(),
        })
    }

    async fn send(&mut self, m: &ClientMessage) -> Result<(), ProbeError> {
        let f = encode(m).map_err(|e| ProbeError::Control(e.to_string()))?;
        self.send
            .write_all(&f)
            .await
            .map_err(|e| ProbeError::Control(e.to_string()))
    }

    /// The next control message.
    async fn next(&mut self) -> Result<RelayMessage, ProbeError> {
        loop {
            match self.dec.next_message::<RelayMessage>() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(ProbeError::Control(e.to_string())),
            }
            match self.recv.read_chunk(65536, true).await {
                Ok(Some(c)) => self.dec.extend(&c.bytes),
                Ok(None) => return Err(ProbeError::Control("the relay closed it".into())),
                Err(e) => return Err(ProbeError::Control(e.to_string())),
            }
        }
    }

    async fn join(
        &mut self,
        session: &SessionId,
        token: String,
    ) -> Result<FastPathOfferOpt, ProbeError> {
        self.send(&ClientMessage::Join {
            session: session.clone(),
            token,
            resume: None,
            e2ee: true,
        })
        .await?;
        match self.next().await? {
            RelayMessage::Joined(j) => Ok(j.fast_path),
            other => Err(ProbeError::Refused(format!("{other:?}"))),
        }
    }
}

type FastPathOfferOpt = Option<FastPathOffer>;

fn token(
    key: &SigningKey,
    a: &ProbeArgs,
    session: &SessionId,
    user: &str,
) -> Result<String, ProbeError> {
    let claims = JoinClaims::builder(
        session.clone(),
        UserId::new(user).map_err(setup)?,
        DeviceId::new("probe").map_err(setup)?,
    )
    .ttl(Duration::from_secs(120))
    .nodes(a.node.iter().cloned().collect())
    .e2ee(E2eeClaim::Allowed)
    .build()
    .map_err(setup)?;
    Ok(JoinToken::mint(key, &claims))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One probe: join, QUIC round trips, fast-path round trips, leave.
pub async fn probe(a: &ProbeArgs) -> Result<ProbeReport, ProbeError> {
    let ca = std::fs::read(&a.ca).map_err(|e| setup(format!("--ca {}: {e}", a.ca.display())))?;
    let seed = zeroize::Zeroizing::new(
        std::fs::read_to_string(&a.token_key)
            .map_err(|e| setup(format!("--token-key {}: {e}", a.token_key.display())))?,
    );
    let key = SigningKey::ed25519_from_hex(a.key_id.clone(), seed.trim()).map_err(setup)?;
    let local: SocketAddr = match a.relay.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let mut ep = quinn::Endpoint::client(local)?;
    ep.set_default_client_config(client_config(&ca)?);
    let session = SessionId::new(format!("probe-{:016x}", rand::random::<u64>())).map_err(setup)?;

    let mut x = End::connect(&ep, a).await?;
    let mut y = End::connect(&ep, a).await?;
    let offer_x = x
        .join(&session, token(&key, a, &session, "probe-a")?)
        .await?;
    let offer_y = y
        .join(&session, token(&key, a, &session, "probe-b")?)
        .await?;
    match x.next().await? {
        RelayMessage::PeerJoined => {}
        other => return Err(ProbeError::Refused(format!("{other:?}"))),
    }

    let quic_rtt = quic_round_trips(&x, &y, a.count).await?;
    let fast_path_rtt = if a.quic_only {
        None
    } else {
        let (ox, oy) = offer_x.zip(offer_y).ok_or(ProbeError::NoFastPath)?;
        let ux = bind(&mut x, &ox, a.relay).await?;
        let uy = bind(&mut y, &oy, a.relay).await?;
        Some(fast_path_round_trips((&ux, ox.channel), (&uy, oy.channel), a.count).await?)
    };
    for e in [&mut x, &mut y] {
        let _ = e.send(&ClientMessage::Leave).await;
        let _ = e.send.finish();
    }
    x.conn.close(0u32.into(), b"probe done");
    y.conn.close(0u32.into(), b"probe done");
    ep.wait_idle().await;
    Ok(ProbeReport {
        quic_rtt,
        fast_path_rtt,
    })
}

/// A probe payload: marker, round number, and a nonce so stale echoes are told apart.
fn payload(round: u32) -> Vec<u8> {
    let mut p = b"duet-probe".to_vec();
    p.extend_from_slice(&round.to_be_bytes());
    p.extend_from_slice(&rand::random::<u64>().to_be_bytes());
    p
}

/// How long one try of a round trip waits before sending again (datagrams are unreliable).
const TRY: Duration = Duration::from_millis(300);

async fn quic_round_trips(x: &End, y: &End, count: u32) -> Result<Duration, ProbeError> {
    let mut rtts = Vec::new();
    for round in 0..count {
        let mut d = MediaHeader::new(MediaKind::Audio).to_bytes().to_vec();
        d.extend_from_slice(&payload(round));
        let d = Bytes::from(d);
        let t0 = Instant::now();
        loop {
            x.conn
                .send_datagram(d.clone())
                .map_err(|e| ProbeError::Control(e.to_string()))?;
            let echoed = async {
                loop {
                    let got = y.conn.read_datagram().await.ok()?;
                    if got == d {
                        y.conn.send_datagram(got).ok()?;
                        break;
                    }
                }
                loop {
                    if x.conn.read_datagram().await.ok()? == d {
                        return Some(());
                    }
                }
            };
            if let Ok(Some(())) = tokio::time::timeout(TRY, echoed).await {
                break;
            }
        }
        rtts.push(t0.elapsed());
    }
    Ok(median(rtts))
}

/// Binds `end` on the fast path from a new UDP socket; waits for `FastPathBound`.
async fn bind(
    end: &mut End,
    offer: &FastPathOffer,
    relay: SocketAddr,
) -> Result<tokio::net::UdpSocket, ProbeError> {
    let target = offer.target(relay);
    let local: SocketAddr = match target.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = tokio::net::UdpSocket::bind(local).await?;
    udp.connect(target).await?;
    let bind = offer
        .bind_packet()
        .ok_or_else(|| ProbeError::Control("a malformed ticket".into()))?;
    loop {
        udp.send(&bind).await?;
        match tokio::time::timeout(TRY, end.next()).await {
            Ok(Ok(RelayMessage::FastPathBound { .. })) => return Ok(udp),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
    }
}

async fn fast_path_round_trips(
    x: (&tokio::net::UdpSocket, duet_proto::ChannelId),
    y: (&tokio::net::UdpSocket, duet_proto::ChannelId),
    count: u32,
) -> Result<Duration, ProbeError> {
    let media = PacketType::Media(MediaKind::Audio);
    let mut rtts = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    for round in 0..count {
        let p = payload(round);
        let mut out = FastPathHeader::new(media, x.1).to_bytes().to_vec();
        out.extend_from_slice(&p);
        let t0 = Instant::now();
        loop {
            x.0.send(&out).await?;
            let echoed = async {
                loop {
                    let n = y.0.recv(&mut buf).await.ok()?;
                    if let Ok((_, got)) = FastPathHeader::parse(&buf[..n]) {
                        if got == p.as_slice() {
                            let mut back = FastPathHeader::new(media, y.1).to_bytes().to_vec();
                            back.extend_from_slice(got);
                            y.0.send(&back).await.ok()?;
                            break;
                        }
                    }
                }
                loop {
                    let n = x.0.recv(&mut buf2).await.ok()?;
                    if let Ok((_, got)) = FastPathHeader::parse(&buf2[..n]) {
                        if got == p.as_slice() {
                            return Some(());
                        }
                    }
                }
            };
            if let Ok(Some(())) = tokio::time::timeout(TRY, echoed).await {
                break;
            }
        }
        rtts.push(t0.elapsed());
    }
    Ok(median(rtts))
}

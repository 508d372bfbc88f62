//! A minimal control-plane client for the fast-path bench: QUIC + TLS to the relay, `Join`
//! (no E2EE), and the control stream kept open for the run.
//!
//! Why not the SDK: the bench binds thousands of endpoints from a few shared sockets (one
//! QUIC endpoint, raw UDP sockets it batches itself), which the SDK's one-call-one-socket
//! driver does not do. This speaks exactly the SDK's protocol (the SDK's own
//! TLS and QUIC configuration from `duet_sdk::tls`, the same control framing) over one shared
//! QUIC endpoint, so the relay sees ordinary control connections. Media never goes over these connections; the bench's raw
//! UDP sockets carry it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use duet_proto::control::encode;
use duet_proto::{ClientMessage, FastPathOffer, FrameDecoder, RelayMessage, SessionId};
use duet_sdk::ConnectOptions;

/// The control connections' client configuration: the SDK's (`duet_sdk::tls`: TLS 1.3 on
/// aws-lc-rs, X25519MLKEM768 first, ALPN `duet/1`, trust in `cert_pem` only) with a keep-alive
/// per 10 s.
pub fn client_config(cert_pem: &[u8]) -> anyhow::Result<quinn::ClientConfig> {
    let opts = ConnectOptions {
        // The relay closes idle QUIC connections after 30 s; one keep-alive per 10 s per
        // connection keeps the control plane's share of the relay's CPU during a bench negligible.
        keep_alive: Duration::from_secs(10),
        ..ConnectOptions::trusting(cert_pem)
    };
    Ok(duet_sdk::tls::quic_client_config(&opts)?)
}

/// One QUIC client endpoint (one UDP socket on `bind`) for control connections. Its
/// connections leave from `bind`'s IP, which the relay binds its fast-path ticket to.
/// Needs a tokio runtime context.
pub fn endpoint(cfg: quinn::ClientConfig, bind: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::client(bind)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// One joined endpoint's control connection.
pub struct Control {
    pub conn: quinn::Connection,
    /// The fast-path offer in `Joined` (`None`: the relay serves no fast path).
    pub offer: Option<FastPathOffer>,
    /// Set when the relay confirmed a BIND (`FastPathBound`) on this connection.
    pub bound: Arc<AtomicBool>,
    send: quinn::SendStream,
    reader: tokio::task::JoinHandle<()>,
}

impl Control {
    /// Connects, joins `session` with `token` and starts reading the control stream.
    pub async fn join(
        ep: &quinn::Endpoint,
        relay: SocketAddr,
        server_name: &str,
        token: String,
        session: SessionId,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let work = async {
            let conn = ep.connect(relay, server_name)?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&encode(&ClientMessage::Join {
                session,
                token,
                resume: None,
                e2ee: false,
            })?)
            .await?;
            let mut dec = FrameDecoder::default();
            let joined = loop {
                if let Some(m) = dec.next_message::<RelayMessage>()? {
                    match m {
                        RelayMessage::Joined(j) => break j,
                        RelayMessage::Refused(r) => anyhow::bail!("refused: {r}"),
                        _ => continue,
                    }
                }
                match recv.read_chunk(64 * 1024, true).await? {
                    Some(c) => dec.extend(&c.bytes),
                    None => anyhow::bail!("control stream closed before Joined"),
                }
            };
            anyhow::Ok((conn, send, recv, dec, joined))
        };
        let (conn, send, mut recv, mut dec, joined) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| anyhow::anyhow!("timeout"))??;
        let bound = Arc::new(AtomicBool::new(false));
        let b = bound.clone();
        let reader = tokio::spawn(async move {
            loop {
                while let Ok(Some(m)) = dec.next_message::<RelayMessage>() {
                    if let RelayMessage::FastPathBound { .. } = m {
                        b.store(true, Relaxed);
                    }
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => dec.extend(&c.bytes),
                    _ => return,
                }
            }
        });
        Ok(Self {
            conn,
            offer: joined.fast_path,
            bound,
            send,
            reader,
        })
    }

    /// Sends `Leave` and closes (bounded).
    pub async fn leave(mut self) {
        if let Ok(f) = encode(&ClientMessage::Leave) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.send.write_all(&f)).await;
        }
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut self.reader).await;
        self.reader.abort();
        self.conn.close(0u32.into(), b"bye");
    }
}

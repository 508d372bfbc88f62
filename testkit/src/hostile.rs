//! A hostile relay for tests: a QUIC relay front that sits between SDK clients and a real
//! relay, holds the relay's own certificate (as a relay operator, or an intruder on a node,
//! would), and may drop, delay, reorder, duplicate, rewrite and inject control messages and
//! media, close connections, lie in `Joined` and splice sessions.
//!
//! Each client connection is a *leg*, numbered in the order they arrive. For every leg the
//! front opens its own connection to the upstream relay and pumps, through a [`Tamper`]:
//! the client's control messages (decoded `ClientMessage`s), the relay's (`RelayMessage`s)
//! and datagrams both ways. A [`Handle`] injects messages and datagrams into any leg,
//! closes legs, and keeps a log of every datagram it forwarded, so a test can check that no
//! plaintext ever crossed.
//!
//! Owns the front and its pumps. Does not own what the SDK or the relay do (the tests
//! assert that) nor the upstream relay (`TestRelay` / `RelayProcess`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use duet_proto::control::encode;
use duet_proto::{ClientMessage, FrameDecoder, RelayMessage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

use crate::raw::client_endpoint;

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the client to the relay.
    ToRelay,
    /// From the relay to the client.
    ToClient,
}

/// What the hostile relay does to each thing it forwards. Every method returns what to
/// forward instead (empty = drop); the [`Handle`] injects elsewhere or later.
pub trait Tamper: Send + Sync + 'static {
    fn client_msg(&self, _leg: usize, msg: ClientMessage, _h: &Handle) -> Vec<ClientMessage> {
        vec![msg]
    }
    fn relay_msg(&self, _leg: usize, msg: RelayMessage, _h: &Handle) -> Vec<RelayMessage> {
        vec![msg]
    }
    fn datagram(&self, _leg: usize, _dir: Dir, d: Bytes, _h: &Handle) -> Vec<Bytes> {
        vec![d]
    }
}

/// Forwards everything unchanged.
pub struct Honest;
impl Tamper for Honest {}

struct LegIo {
    client: quinn::Connection,
    upstream: quinn::Connection,
    to_client: mpsc::UnboundedSender<RelayMessage>,
    to_relay: mpsc::UnboundedSender<ClientMessage>,
}

#[derive(Default)]
struct State {
    legs: Vec<Option<LegIo>>,
    /// Every datagram forwarded or injected, both ways: (leg, dir, bytes).
    log: Vec<(usize, Dir, Bytes)>,
    /// Every control message forwarded or injected to a client.
    relay_log: Vec<(usize, RelayMessage)>,
}

/// Injection, closing and the forwarding log; cheap to clone.
#[derive(Clone, Default)]
pub struct Handle(Arc<Mutex<State>>);

impl Handle {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `msg` to the client of `leg` as if the relay said it.
    pub fn inject(&self, leg: usize, msg: RelayMessage) {
        let mut st = self.st();
        st.relay_log.push((leg, msg.clone()));
        if let Some(Some(l)) = st.legs.get(leg) {
            let _ = l.to_client.send(msg);
        }
    }

    /// Sends `msg` upstream on `leg` as if the client said it.
    pub fn inject_upstream(&self, leg: usize, msg: ClientMessage) {
        if let Some(Some(l)) = self.st().legs.get(leg) {
            let _ = l.to_relay.send(msg);
        }
    }

    /// Sends a datagram to the client of `leg`.
    pub fn inject_datagram(&self, leg: usize, d: Bytes) {
        let mut st = self.st();
        st.log.push((leg, Dir::ToClient, d.clone()));
        if let Some(Some(l)) = st.legs.get(leg) {
            let _ = l.client.send_datagram(d);
        }
    }

    /// Closes `leg` on both sides, as a failing network or relay would.
    pub fn close(&self, leg: usize) {
        if let Some(Some(l)) = self.st().legs.get(leg) {
            l.client.close(0u32.into(), b"hostile close");
            l.upstream.close(0u32.into(), b"hostile close");
        }
    }

    /// Legs seen so far.
    pub fn legs(&self) -> usize {
        self.st().legs.len()
    }

    /// Every datagram that crossed (forwarded or injected).
    pub fn datagrams(&self) -> Vec<(usize, Dir, Bytes)> {
        self.st().log.clone()
    }

    /// Every control message given to a client.
    pub fn relay_messages(&self) -> Vec<(usize, RelayMessage)> {
        self.st().relay_log.clone()
    }

    /// Whether any datagram that crossed holds `needle`.
    pub fn saw_in_datagrams(&self, needle: &[u8]) -> bool {
        self.st()
            .log
            .iter()
            .any(|(_, _, d)| d.windows(needle.len()).any(|w| w == needle))
    }
}

/// The hostile front. Dropping it stops accepting; legs already up keep running until
/// their connections close.
pub struct HostileRelay {
    endpoint: quinn::Endpoint,
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.close(0u32.into(), b"hostile relay gone");
    }
}

fn server_config(data_dir: &Path) -> Result<quinn::ServerConfig> {
    let cert = std::fs::read(data_dir.join("cert.pem")).context("the relay's cert.pem")?;
    let key = std::fs::read(data_dir.join("key.pem")).context("the relay's key.pem")?;
    let chain = CertificateDer::pem_slice_iter(&cert).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![duet_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.datagram_receive_buffer_size(Some(4 << 20));
    transport.datagram_send_buffer_size(4 << 20);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

impl HostileRelay {
    /// A front on loopback for the relay at `upstream`, whose certificate and key are in
    /// `data_dir` (the relay's data directory), tampering as `tamper` says.
    pub fn start(
        upstream: SocketAddr,
        data_dir: &Path,
        tamper: Arc<dyn Tamper>,
    ) -> Result<HostileRelay> {
        let cert_pem = std::fs::read(data_dir.join("cert.pem"))?;
        let endpoint = quinn::Endpoint::server(
            server_config(data_dir)?,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )?;
        let handle = Handle::default();
        let (ep, h) = (endpoint.clone(), handle.clone());
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (h, tamper, cert_pem) = (h.clone(), tamper.clone(), cert_pem.clone());
                tokio::spawn(async move {
                    if let Err(e) = leg(incoming, upstream, &cert_pem, h, tamper).await {
                        tracing::debug!(error = %e, "hostile leg ended");
                    }
                });
            }
        });
        Ok(HostileRelay {
            endpoint,
            handle,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("a bound endpoint")
    }
}

async fn leg(
    incoming: quinn::Incoming,
    upstream: SocketAddr,
    cert_pem: &[u8],
    h: Handle,
    tamper: Arc<dyn Tamper>,
) -> Result<()> {
    let client = incoming.await?;
    let up_ep = client_endpoint(cert_pem)?;
    let up = up_ep.connect(upstream, "localhost")?.await?;
    let (mut c_send, mut c_recv) = client.accept_bi().await?;
    let (mut u_send, mut u_recv) = up.open_bi().await?;
    let (to_client, mut to_client_rx) = mpsc::unbounded_channel::<RelayMessage>();
    let (to_relay, mut to_relay_rx) = mpsc::unbounded_channel::<ClientMessage>();
    let id = {
        let mut st = h.st();
        st.legs.push(Some(LegIo {
            client: client.clone(),
            upstream: up.clone(),
            to_client: to_client.clone(),
            to_relay: to_relay.clone(),
        }));
        st.legs.len() - 1
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Some(m) = to_client_rx.recv().await {
            let Ok(f) = encode(&m) else { continue };
            if c_send.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    tasks.spawn(async move {
        while let Some(m) = to_relay_rx.recv().await {
            let Ok(f) = encode(&m) else { continue };
            if u_send.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    {
        let (h, t) = (h.clone(), tamper.clone());
        tasks.spawn(async move {
            let mut dec = FrameDecoder::default();
            loop {
                while let Ok(Some(m)) = dec.next_message::<ClientMessage>() {
                    for m in t.client_msg(id, m, &h) {
                        let _ = to_relay.send(m);
                    }
                }
                match c_recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => dec.extend(&c.bytes),
                    _ => break,
                }
            }
        });
    }
    {
        let (h, t) = (h.clone(), tamper.clone());
        tasks.spawn(async move {
            let mut dec = FrameDecoder::default();
            loop {
                while let Ok(Some(m)) = dec.next_message::<RelayMessage>() {
                    for m in t.relay_msg(id, m, &h) {
                        h.st().relay_log.push((id, m.clone()));
                        let _ = to_client.send(m);
                    }
                }
                match u_recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => dec.extend(&c.bytes),
                    _ => break,
                }
            }
        });
    }
    for (from, to, dir) in [
        (client.clone(), up.clone(), Dir::ToRelay),
        (up.clone(), client.clone(), Dir::ToClient),
    ] {
        let (h, t) = (h.clone(), tamper.clone());
        tasks.spawn(async move {
            while let Ok(d) = from.read_datagram().await {
                for d in t.datagram(id, dir, d, &h) {
                    h.st().log.push((id, dir, d.clone()));
                    let _ = to.send_datagram(d);
                }
            }
        });
    }
    // One side gone: the other goes too (the relay sees a lost connection).
    tokio::select! {
        _ = client.closed() => up.close(0u32.into(), b"client gone"),
        _ = up.closed() => client.close(0u32.into(), b"relay gone"),
    }
    tasks.abort_all();
    if let Some(slot) = h.st().legs.get_mut(id) {
        *slot = None;
    }
    drop(up_ep);
    Ok(())
}

type ClientFn = dyn Fn(usize, ClientMessage, &Handle) -> Vec<ClientMessage> + Send + Sync;
type RelayFn = dyn Fn(usize, RelayMessage, &Handle) -> Vec<RelayMessage> + Send + Sync;
type DatagramFn = dyn Fn(usize, Dir, Bytes, &Handle) -> Vec<Bytes> + Send + Sync;

/// A [`Tamper`] from closures; what is not set is forwarded unchanged.
#[derive(Default)]
pub struct Script {
    client: Option<Box<ClientFn>>,
    relay: Option<Box<RelayFn>>,
    datagram: Option<Box<DatagramFn>>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn on_client(
        mut self,
        f: impl Fn(usize, ClientMessage, &Handle) -> Vec<ClientMessage> + Send + Sync + 'static,
    ) -> Self {
        self.client = Some(Box::new(f));
        self
    }
    pub fn on_relay(
        mut self,
        f: impl Fn(usize, RelayMessage, &Handle) -> Vec<RelayMessage> + Send + Sync + 'static,
    ) -> Self {
        self.relay = Some(Box::new(f));
        self
    }
    pub fn on_datagram(
        mut self,
        f: impl Fn(usize, Dir, Bytes, &Handle) -> Vec<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.datagram = Some(Box::new(f));
        self
    }
}

impl Tamper for Script {
    fn client_msg(&self, leg: usize, msg: ClientMessage, h: &Handle) -> Vec<ClientMessage> {
        match &self.client {
            Some(f) => f(leg, msg, h),
            None => vec![msg],
        }
    }
    fn relay_msg(&self, leg: usize, msg: RelayMessage, h: &Handle) -> Vec<RelayMessage> {
        match &self.relay {
            Some(f) => f(leg, msg, h),
            None => vec![msg],
        }
    }
    fn datagram(&self, leg: usize, dir: Dir, d: Bytes, h: &Handle) -> Vec<Bytes> {
        match &self.datagram {
            Some(f) => f(leg, dir, d, h),
            None => vec![d],
        }
    }
}

/// The handshake message type of a `Signal` payload (byte 1), if it looks like one.
pub fn handshake_type(payload: &[u8]) -> Option<u8> {
    payload.get(1).copied()
}

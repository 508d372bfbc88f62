//! QUIC setup: the quinn server config (our TLS, one bidirectional stream, datagrams on, a
//! pinned UDP payload size), the relay's UDP socket, and the accept loop that starts one
//! connection task per incoming connection.
//!
//! Owns the transport settings only; TLS is `tls`, what a connection does is `control`.

use std::sync::Arc;

use quinn::VarInt;

use super::admission::Verdict;
use super::cid::SignedCidGenerator;
use super::control::run_connection;
use super::driver::Driver;

/// The quinn server config: our TLS config, one bidirectional stream, datagrams on.
pub fn quinn_server_config(
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, crate::tls::TlsError> {
    let qsc = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| crate::tls::TlsError::Quic(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qsc));
    let mut tc = quinn::TransportConfig::default();
    tc.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // Media is in datagrams; the one stream carries control frames (each at most
        // MAX_CONTROL_FRAME): windows of two frames bound what a connection can make the
        // relay buffer (quinn's defaults allow 1.25 MiB per stream, unbounded per
        // connection).
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(STREAM_WINDOW))
        .send_window(u64::from(STREAM_WINDOW))
        .datagram_receive_buffer_size(Some(2 * 1024 * 1024))
        .datagram_send_buffer_size(2 * 1024 * 1024)
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()))
        // Both legs of a session keep the QUIC minimum MTU (see `bind_endpoint`).
        .initial_mtu(PINNED_UDP_PAYLOAD)
        .mtu_discovery_config(None);
    sc.transport_config(Arc::new(tc));
    // Attempts quinn holds before the accept loop decides: a bounded queue with a small
    // buffer each, so a flood cannot grow memory while `admission` works through it.
    sc.max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(MAX_INCOMING as u64 * INCOMING_BUFFER);
    Ok(sc)
}

/// Flow-control window of the control stream and of the connection's stream data.
const STREAM_WINDOW: u32 = 2 * duet_proto::MAX_CONTROL_FRAME as u32;

/// Connection attempts quinn queues for the accept loop; beyond, it refuses them itself.
const MAX_INCOMING: usize = 4096;
/// Bytes quinn buffers per queued attempt beyond its first datagram (the rest of a large
/// ClientHello).
const INCOMING_BUFFER: u64 = 8 * 1024;

/// UDP payload size of every connection, both ways. The relay forwards a datagram unchanged,
/// so a piece that fits the sender's leg must fit the receiver's leg too: with path-MTU
/// discovery on, one leg can grow before the other and the relay would have to drop. Pinning
/// both to QUIC's guaranteed minimum (advertised to clients as `max_udp_payload_size`, which
/// bounds their own discovery) makes every piece a client may send forwardable.
pub const PINNED_UDP_PAYLOAD: u16 = 1200;

/// The relay's endpoint settings: stateless resets keyed by `reset_key` (the same key after
/// a restart makes the new process's resets recognisable to the old process's clients), our
/// connection ids (`cid`), the pinned UDP payload size.
pub fn endpoint_config(reset_key: &[u8]) -> std::io::Result<quinn::EndpointConfig> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, reset_key);
    // The connection-id generator tags its ids with a key of its own and sends no reset for
    // ids it did not tag: that key must survive a restart as well (see `cid`).
    let tag = aws_lc_rs::hmac::sign(&key, b"duet quic connection id key");
    let cid_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, tag.as_ref());
    let mut ep = quinn::EndpointConfig::new(Arc::new(key));
    ep.cid_generator(move || {
        Box::new(SignedCidGenerator::new(cid_key.clone())) as Box<dyn quinn::ConnectionIdGenerator>
    });
    ep.max_udp_payload_size(PINNED_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    Ok(ep)
}

/// Binds the relay's UDP socket (large kernel buffers, best effort) and its quinn endpoint
/// ([`endpoint_config`]).
pub fn bind_endpoint(
    server: quinn::ServerConfig,
    addr: std::net::SocketAddr,
    reset_key: &[u8],
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    let ep = endpoint_config(reset_key)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    let socket = SegmentCap {
        inner: runtime.wrap_udp_socket(socket.into())?,
        max: MAX_SEND_SEGMENTS,
    };
    quinn::Endpoint::new_with_abstract_socket(ep, Some(server), Arc::new(socket), runtime)
}

/// Datagrams quinn may put in one send (GSO) per connection. quinn sizes each
/// connection's send buffer for this many datagrams and keeps it for the connection's life:
/// at its default (10, when the kernel offers GSO) that is 12 KiB per connection, the largest
/// single item of an idle session's memory (see RESULTS.md, "QUIC memory"). Two keep the
/// buffer at 2.4 KiB; one is not enough: with one, a 300 KB frame sent through the relay at
/// once lost a dozen of its 261 datagrams on the receiving side every time
/// (`testkit/tests/sdk_sessions.rs`, `signals_are_forwarded_verbatim_and_size_limited`).
const MAX_SEND_SEGMENTS: usize = 2;

/// The runtime's UDP socket, with quinn's GSO batch capped at `max` datagrams.
#[derive(Debug)]
struct SegmentCap {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    max: usize,
}

impl quinn::AsyncUdpSocket for SegmentCap {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Takes each incoming connection attempt until shutdown: a Retry, a refusal, or a
/// connection task, as `admission` decides (see `quic::admission`).
pub(crate) async fn accept_loop(driver: Arc<Driver>, endpoint: quinn::Endpoint) {
    let mut stop = driver.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            inc = endpoint.accept() => match inc {
                Some(incoming) => admit(&driver, incoming),
                None => break,
            },
        }
    }
}

fn admit(driver: &Arc<Driver>, incoming: quinn::Incoming) {
    let verdict = driver.admission.decide(
        incoming.remote_address(),
        incoming.remote_address_validated(),
        incoming.may_retry(),
    );
    match verdict {
        Verdict::Retry => {
            // `may_retry` was true, so this cannot fail; a failure would give the attempt
            // back, which is then dropped (ignored).
            let _ = incoming.retry();
        }
        Verdict::Refuse(_) => incoming.refuse(),
        Verdict::Accept(permit) => {
            tokio::spawn(run_connection(driver.clone(), incoming, permit));
        }
    }
}

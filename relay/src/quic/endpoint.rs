//! QUIC setup: the quinn server config (our TLS, one bidirectional stream, datagrams on, a
//! pinned UDP payload size), the relay's UDP socket, and the accept loop that starts one
//! connection task per incoming connection.
//!
//! Owns the transport settings only; TLS is `tls`, what a connection does is `control`.

use std::sync::Arc;

use quinn::VarInt;

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
        .datagram_receive_buffer_size(Some(2 * 1024 * 1024))
        .datagram_send_buffer_size(2 * 1024 * 1024)
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()))
        // Both legs of a session keep the QUIC minimum MTU (see `bind_endpoint`).
        .initial_mtu(PINNED_UDP_PAYLOAD)
        .mtu_discovery_config(None);
    sc.transport_config(Arc::new(tc));
    Ok(sc)
}

/// UDP payload size of every connection, both ways. The relay forwards a datagram unchanged,
/// so a piece that fits the sender's leg must fit the receiver's leg too: with path-MTU
/// discovery on, one leg can grow before the other and the relay would have to drop. Pinning
/// both to QUIC's guaranteed minimum (advertised to clients as `max_udp_payload_size`, which
/// bounds their own discovery) makes every piece a client may send forwardable.
pub const PINNED_UDP_PAYLOAD: u16 = 1200;

/// Binds the relay's UDP socket (large kernel buffers, best effort) and its quinn endpoint.
pub fn bind_endpoint(
    server: quinn::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    let mut ep = quinn::EndpointConfig::default();
    ep.max_udp_payload_size(PINNED_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    quinn::Endpoint::new(ep, Some(server), socket.into(), runtime)
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(driver: Arc<Driver>, endpoint: quinn::Endpoint) {
    let mut stop = driver.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            inc = endpoint.accept() => match inc {
                Some(incoming) => {
                    tokio::spawn(run_connection(driver.clone(), incoming));
                }
                None => break,
            },
        }
    }
}

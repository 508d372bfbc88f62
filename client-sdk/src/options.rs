//! How a client reaches and trusts a relay, and the transport's timing knobs.

use std::time::Duration;

pub use crate::client::SharedEndpoint;
pub use crate::fastpath::FastPathMode;

/// Options for `Client::connect`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// PEM of the relay's certificate, or of the CA that issued it. The SDK bundles no
    /// public roots: a relay is trusted only when the app says so.
    pub trusted_cert_pem: Option<Vec<u8>>,
    /// How long connecting and joining may take.
    pub join_timeout: Duration,
    /// A frame still missing a piece this long after its first piece arrived is dropped.
    pub reassembly_timeout: Duration,
    /// QUIC keep-alive, so a quiet call is not closed by idle timers on the path.
    pub keep_alive: Duration,
    /// Whether media may use the relay's raw-UDP fast path (see [`crate::fastpath`]).
    /// QUIC datagrams stay the fallback whatever this says.
    pub fast_path: FastPathMode,
    /// How long a fast-path BIND may go unconfirmed before media stays on QUIC.
    pub fast_path_bind_timeout: Duration,
    /// How often a bound fast path asks for a fresh ticket and binds again (keeps NAT
    /// mappings open; a NAT that changed the source port gets the binding moved), and how
    /// often a fast path that was not confirmed in time tries again from a new socket.
    pub fast_path_refresh: Duration,
    /// QUIC idle timeout: a relay that answers nothing this long is taken for dead (keep
    /// it a few `keep_alive`s long).
    pub idle_timeout: Duration,
    /// The fleet's address book: where each relay node of the token's `nodes` list is.
    /// Non-empty turns on automatic recovery: after a stateless reset (the node restarted)
    /// the call resumes on the same node; when the relay goes silent ([`DeadRelay`], or the
    /// idle timeout) or says it is draining, it moves to the next node of the token's list
    /// (the silent node comes last); both endpoints follow the same list, so they meet
    /// again without talking. Same keys, same code ([`crate::Event::Migrated`],
    /// [`crate::Event::KeysConfirmed`]). Empty: a lost connection ends the call's link and
    /// the app calls `Call::resume` itself.
    pub nodes: Vec<(duet_proto::NodeId, std::net::SocketAddr)>,
    /// With `nodes` set: how a silent relay is told from a slow path, well before
    /// `idle_timeout`. See [`DeadRelay`].
    pub dead_relay: DeadRelay,
    /// Connect through this shared QUIC endpoint (one socket and one TLS configuration for
    /// many clients) instead of one of the client's own. `None` (the default): each client
    /// binds its own socket. See [`SharedEndpoint`].
    pub endpoint: Option<SharedEndpoint>,
}

/// How a call (with [`ConnectOptions::nodes`] set) decides that its relay is dead from the
/// path itself, and moves to the token's next node without waiting for the QUIC idle
/// timeout.
///
/// Anything that arrives from the relay (QUIC packets, acknowledgements, fast-path media)
/// counts as life; silence counts only while the relay owes an answer, i.e. from the first
/// thing sent after it was last heard (media, a keep-alive). An idle call is therefore
/// looked at only when the app sends, and otherwise once per `2 × silence` (for QUIC's own
/// keep-alives, which the SDK is not told of): a relay that dies while a call is idle is
/// found up to `keep_alive + 2 × silence` later than on a busy call.
/// After `probe_after` of owed silence the SDK sends a probe (a control `Ping`, answered by
/// the relay and acknowledged by QUIC), again every `probe_after` while it lasts. A relay
/// silent for `max(silence, probe_after + rtts × smoothed RTT)` is taken for dead: the call moves to the next node of its token's list (no attempt on the
/// silent node first; a stateless reset, i.e. a node that restarted, still resumes there).
/// Halfway to that verdict the SDK already opens a QUIC connection to that next node, so
/// the move costs only the join and the key confirmation.
///
/// The floor `silence` is what keeps a lossy or jittery path from moving calls: a path
/// that still delivers something every `silence` never counts as dead, however small its
/// RTT. Lower it for faster failover, raise it for paths with longer blackouts (a
/// blackout longer than the threshold moves the call, which is what a dead node looks
/// like from here).
///
/// Defaults: `probe_after` 150 ms, `silence` 500 ms, `rtts` 4, `peer_wait` 1.5 s: a killed
/// relay's calls move after ~0.5 s of owed silence plus the join (media gap p99 ~0.8 s on
/// loopback under load, see benches/RESULTS.md "Fleet failover").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadRelay {
    /// Silence after which a probe is sent (and the interval between probes).
    pub probe_after: Duration,
    /// The least silence that counts as a dead relay.
    pub silence: Duration,
    /// And at least this many smoothed round trips after the first probe.
    pub rtts: u32,
    /// After a move for silence, how long to wait for the peer on the new node. If it has
    /// not come by then and the old node answers again, the outage was this endpoint's
    /// alone (the peer never left the old node): the call goes back there.
    pub peer_wait: Duration,
}

impl Default for DeadRelay {
    fn default() -> Self {
        Self {
            probe_after: Duration::from_millis(150),
            silence: Duration::from_millis(500),
            rtts: 4,
            peer_wait: Duration::from_millis(1500),
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            trusted_cert_pem: None,
            join_timeout: Duration::from_secs(5),
            reassembly_timeout: Duration::from_millis(500),
            keep_alive: Duration::from_secs(5),
            fast_path: FastPathMode::Off,
            fast_path_bind_timeout: Duration::from_secs(1),
            fast_path_refresh: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            nodes: Vec::new(),
            dead_relay: DeadRelay::default(),
            endpoint: None,
        }
    }
}

impl ConnectOptions {
    /// Defaults, trusting the given certificate (the relay's own or its CA's).
    pub fn trusting(cert_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            trusted_cert_pem: Some(cert_pem.into()),
            ..Self::default()
        }
    }
}

impl ConnectOptions {
    /// Where node `id` is, from [`ConnectOptions::nodes`].
    pub fn node_addr(&self, id: &duet_proto::NodeId) -> Option<std::net::SocketAddr> {
        self.nodes.iter().find(|(n, _)| n == id).map(|(_, a)| *a)
    }

    /// Which node is at `addr`, from [`ConnectOptions::nodes`].
    pub fn node_at(&self, addr: std::net::SocketAddr) -> Option<duet_proto::NodeId> {
        self.nodes
            .iter()
            .find(|(_, a)| *a == addr)
            .map(|(n, _)| n.clone())
    }
}

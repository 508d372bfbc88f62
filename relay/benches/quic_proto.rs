//! The floor of the QUIC datagram path: what quinn-proto itself costs the relay per forwarded
//! datagram (decrypt on one leg, ACK bookkeeping, encrypt on the other), with the relay's own
//! server and endpoint settings and the SDK's client settings, and no tasks, no channels, no
//! sockets. The relay's real cost per packet over loopback (`benches/run-system.sh`) minus this
//! is what its task structure and the kernel add (see RESULTS.md, "The QUIC path's floor").
//!
//! Sans-IO on a simulated clock: each of `pairs` calls has two clients that each send one
//! 160-byte datagram every 20 ms (50 per second, the audio rate of the system benchmark); the
//! relay side hands each one to the peer's connection, as `quic::media` does. Only the relay
//! side's calls are timed: its endpoint and connections, from the packet in to the packets
//! out, ACKs and timers included.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duet_relay::config::Config;
use duet_relay::metrics::RelayMetrics;
use duet_relay::quic::{endpoint_config, quinn_server_config};
use duet_relay::tls::{self, CertPaths, CertStore};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
};

/// The per-endpoint send interval of the system benchmark's QUIC rows.
const TICK: Duration = Duration::from_millis(20);
const PAYLOAD: usize = 160;

/// One UDP datagram on the simulated wire.
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    data: BytesMut,
}

/// The first `size` bytes of `buf`, sent from `from` to `to`.
fn copy_out(from: SocketAddr, buf: &[u8], to: SocketAddr, size: usize) -> Packet {
    Packet {
        from,
        to,
        data: BytesMut::from(&buf[..size]),
    }
}

/// One QUIC endpoint and its connections.
struct Node {
    addr: SocketAddr,
    ep: Endpoint,
    conns: HashMap<ConnectionHandle, Connection>,
    buf: Vec<u8>,
}

impl Node {
    fn new(addr: SocketAddr, ep: Endpoint) -> Self {
        Self {
            addr,
            ep,
            conns: HashMap::new(),
            buf: Vec::with_capacity(1500),
        }
    }

    /// Takes one datagram; a new connection is accepted. Returns the connection it was for.
    fn receive(
        &mut self,
        p: Packet,
        now: Instant,
        out: &mut Vec<Packet>,
    ) -> Option<ConnectionHandle> {
        self.buf.clear();
        match self
            .ep
            .handle(now, p.from, None, None, p.data, &mut self.buf)?
        {
            DatagramEvent::ConnectionEvent(h, ev) => {
                self.conns.get_mut(&h)?.handle_event(ev);
                Some(h)
            }
            DatagramEvent::NewConnection(inc) => {
                self.buf.clear();
                match self.ep.accept(inc, now, &mut self.buf, None) {
                    Ok((h, c)) => {
                        self.conns.insert(h, c);
                        Some(h)
                    }
                    Err(e) => {
                        let t = e.response?;
                        out.push(copy_out(self.addr, &self.buf, t.destination, t.size));
                        None
                    }
                }
            }
            DatagramEvent::Response(t) => {
                out.push(copy_out(self.addr, &self.buf, t.destination, t.size));
                None
            }
        }
    }

    /// Every connection: see [`Node::drive_one`].
    fn drive(
        &mut self,
        now: Instant,
        out: &mut Vec<Packet>,
        datagrams: &mut Vec<(ConnectionHandle, Bytes)>,
    ) {
        let all: Vec<_> = self.conns.keys().copied().collect();
        for h in all {
            self.drive_one(h, now, out, datagrams);
        }
    }

    /// Fires a due timer, moves endpoint events both ways, drains the connection's events
    /// into `datagrams` (handle, datagram) and its packets into `out`.
    fn drive_one(
        &mut self,
        h: ConnectionHandle,
        now: Instant,
        out: &mut Vec<Packet>,
        datagrams: &mut Vec<(ConnectionHandle, Bytes)>,
    ) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
        while let Some(ev) = c.poll_endpoint_events() {
            if let Some(back) = self.ep.handle_event(h, ev) {
                c.handle_event(back);
            }
        }
        while let Some(ev) = c.poll() {
            if let Event::DatagramReceived = ev {
                while let Some(d) = c.datagrams().recv() {
                    datagrams.push((h, d));
                }
            }
        }
        loop {
            self.buf.clear();
            let Some(t) = c.poll_transmit(now, 1, &mut self.buf) else {
                break;
            };
            out.push(copy_out(self.addr, &self.buf, t.destination, t.size));
        }
    }
}

/// `pairs` calls through one relay endpoint, handshakes done.
struct Sim {
    relay: Node,
    clients: Vec<Node>,
    /// The relay's connection for client `i`.
    relay_conn: Vec<ConnectionHandle>,
    /// Each relay connection's peer in its call (both ways).
    peer: HashMap<ConnectionHandle, ConnectionHandle>,
    now: Instant,
    payload: Bytes,
    /// Relay-side counters over the timed ticks.
    relay_in: u64,
    relay_out: u64,
    forwarded: u64,
}

impl Sim {
    fn new(pairs: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let provider = Arc::new(tls::provider(&RelayMetrics::new()));
        let paths = CertPaths::resolve(&cfg).expect("self-signed certificate");
        let pem = std::fs::read(&paths.cert).expect("certificate");
        let store = Arc::new(CertStore::load(paths, provider.clone()).expect("certificate"));
        let server = quinn_server_config(tls::server_config(provider, store).expect("tls"))
            .expect("quic server config");
        let relay_ep = Endpoint::new(
            Arc::new(endpoint_config(&[7u8; 32]).expect("endpoint config")),
            Some(Arc::new(server)),
            false,
            Some([1; 32]),
        );
        let opts = duet_sdk::ConnectOptions {
            trusted_cert_pem: Some(pem),
            ..Default::default()
        };
        let client_cfg: ClientConfig =
            duet_sdk::tls::quic_client_config(&opts).expect("client config");
        let relay_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 4433));
        let mut sim = Self {
            relay: Node::new(relay_addr, relay_ep),
            clients: Vec::new(),
            relay_conn: Vec::new(),
            peer: HashMap::new(),
            now: Instant::now(),
            payload: Bytes::from(vec![0xA5; PAYLOAD]),
            relay_in: 0,
            relay_out: 0,
            forwarded: 0,
        };
        for i in 0..2 * pairs {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + i as u16));
            let mut node = Node::new(
                addr,
                Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None),
            );
            let (h, c) = node
                .ep
                .connect(sim.now, client_cfg.clone(), relay_addr, "localhost")
                .expect("connect");
            node.conns.insert(h, c);
            sim.clients.push(node);
            // One handshake at a time, so the relay's new connection is this client's.
            let before: Vec<_> = sim.relay.conns.keys().copied().collect();
            let fresh = |s: &Sim| {
                s.relay
                    .conns
                    .iter()
                    .find(|(h, c)| !before.contains(h) && !c.is_handshaking())
                    .map(|(h, _)| *h)
            };
            sim.settle(|s| fresh(s).is_some());
            sim.relay_conn
                .push(fresh(&sim).expect("the relay accepted the connection"));
        }
        for p in sim.relay_conn.chunks(2) {
            sim.peer.insert(p[0], p[1]);
            sim.peer.insert(p[1], p[0]);
        }
        sim
    }

    /// Runs the wire, 1 ms per round, until `done` (at most 10 s of simulated time).
    fn settle(&mut self, done: impl Fn(&Self) -> bool) {
        for _ in 0..10_000 {
            self.round(false);
            if done(self) {
                return;
            }
            self.now += Duration::from_millis(1);
        }
        panic!("the simulation did not settle");
    }

    /// Moves packets until the wire is quiet: clients, then the relay, and again. Returns the
    /// relay side's time when `timed`.
    fn round(&mut self, timed: bool) -> Duration {
        let mut spent = Duration::ZERO;
        let mut to_relay = Vec::new();
        let mut to_clients = Vec::new();
        let mut datagrams = Vec::new();
        for c in &mut self.clients {
            c.drive(self.now, &mut to_relay, &mut datagrams);
        }
        datagrams.clear();
        // Connections whose timer is due (a driver of its own would keep a timer heap).
        let mut touched: Vec<_> = self
            .relay
            .conns
            .iter_mut()
            .filter_map(|(h, c)| {
                c.poll_timeout()
                    .is_some_and(|t| t <= self.now)
                    .then_some(*h)
            })
            .collect();
        while !to_relay.is_empty() || !touched.is_empty() {
            let started = Instant::now();
            let n_in = to_relay.len();
            for p in to_relay.drain(..) {
                touched.extend(self.relay.receive(p, self.now, &mut to_clients));
            }
            touched.sort_unstable();
            touched.dedup();
            // Connections with new datagrams hand them to the peer, which then sends.
            for &h in &touched {
                self.relay
                    .drive_one(h, self.now, &mut to_clients, &mut datagrams);
            }
            touched.clear();
            let forwarded = datagrams.len();
            for (h, d) in datagrams.drain(..) {
                let Some(&p) = self.peer.get(&h) else {
                    continue;
                };
                if let Some(c) = self.relay.conns.get_mut(&p) {
                    let _ = c.datagrams().send(d, true);
                    touched.push(p);
                }
            }
            for &h in &touched {
                self.relay
                    .drive_one(h, self.now, &mut to_clients, &mut datagrams);
            }
            touched.clear();
            if timed {
                spent += started.elapsed();
                self.relay_in += n_in as u64;
                self.relay_out += to_clients.len() as u64;
                self.forwarded += forwarded as u64;
            }
            for p in to_clients.drain(..) {
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == p.to) {
                    c.receive(p, self.now, &mut to_relay);
                }
            }
            for c in &mut self.clients {
                c.drive(self.now, &mut to_relay, &mut datagrams);
            }
            datagrams.clear();
        }
        spent
    }

    /// One tick: every client sends one datagram, the wire runs quiet, the clock moves on.
    fn tick(&mut self) -> Duration {
        for c in &mut self.clients {
            for conn in c.conns.values_mut() {
                let _ = conn.datagrams().send(self.payload.clone(), true);
            }
        }
        let spent = self.round(true);
        self.now += TICK;
        // Timers due between ticks (delayed ACKs, pacing, keep-alives) fire on the way.
        spent + self.round(true)
    }
}

fn bench_quic_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("quic_relay_floor");
    for pairs in [1usize, 100] {
        let mut sim = Sim::new(pairs);
        for _ in 0..200 {
            sim.tick();
        }
        (sim.relay_in, sim.relay_out, sim.forwarded) = (0, 0, 0);
        g.throughput(Throughput::Elements(2 * pairs as u64));
        g.bench_function(BenchmarkId::new("pairs", pairs), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| sim.tick()).sum())
        });
        let f = sim.forwarded.max(1) as f64;
        eprintln!(
            "quic_relay_floor/pairs/{pairs}: {} datagrams forwarded; per forwarded datagram the \
             relay received {:.2} and sent {:.2} UDP datagrams",
            sim.forwarded,
            sim.relay_in as f64 / f,
            sim.relay_out as f64 / f
        );
    }
    g.finish();
}

criterion_group!(benches, bench_quic_floor);
criterion_main!(benches);

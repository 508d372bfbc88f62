//! [`Impairer`]: a hostile network between clients and a relay, in user space. Each
//! listener takes the clients' UDP datagrams, and forwards them to one upstream address
//! from a socket per client (so the relay sees one source per client, as through a NAT),
//! and the answers back; on the way, in both directions, the current [`Shape`] drops,
//! delays (with jitter, which reorders), duplicates, or, during an outage, swallows
//! datagrams, and drops those larger than an MTU. [`Impairer::rebind`] is a NAT rebinding:
//! one client's mapping moves to a new port without the client knowing.
//!
//! Why not `tc netem`: the kernels this runs on may not have it (this machine's has
//! `CONFIG_NET_SCH_NETEM` unset); this does the same to UDP, seeded, on any Linux.
//!
//! It forwards bytes and owns no protocol: QUIC and the fast path cross it untouched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// What the network does to each datagram, in each direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    /// Share of datagrams dropped, 0.0..=1.0.
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Up to this much more delay, uniform per datagram (reorders datagrams closer together
    /// than the jitter).
    pub jitter: Duration,
    /// Share of datagrams sent twice.
    pub duplicate: f64,
    /// Every datagram dropped.
    pub outage: bool,
    /// Datagrams above this many bytes of UDP payload are dropped (a path MTU minus 28).
    pub max_payload: Option<usize>,
}

struct Shared {
    shape: Mutex<Shape>,
    rng: Mutex<rand::rngs::StdRng>,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    /// Clients whose mapping moves to a new port at their next datagram.
    rebinds: Mutex<Vec<SocketAddr>>,
}

/// What the network did so far, both directions together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImpairStats {
    pub dropped: u64,
    pub duplicated: u64,
}

impl Shared {
    /// Whether `client`'s mapping is to move now (once per [`Impairer::rebind`]).
    fn take_rebind(&self, client: SocketAddr) -> bool {
        let Ok(mut r) = self.rebinds.lock() else {
            return false;
        };
        let before = r.len();
        r.retain(|c| *c != client);
        r.len() != before
    }

    /// How to pass one datagram: `None` to drop it, else its delays (one per copy).
    fn plan(&self, len: usize) -> Option<Vec<Duration>> {
        let shape = self.shape.lock().ok()?.clone();
        let mut rng = self.rng.lock().ok()?;
        let lost = shape.loss > 0.0 && rng.random_bool(shape.loss.min(1.0));
        if shape.outage || shape.max_payload.is_some_and(|m| len > m) || lost {
            self.dropped.fetch_add(1, Relaxed);
            return None;
        }
        let copies = if shape.duplicate > 0.0 && rng.random_bool(shape.duplicate.min(1.0)) {
            self.duplicated.fetch_add(1, Relaxed);
            2
        } else {
            1
        };
        let jitter = shape.jitter.as_micros() as u64;
        Some(
            (0..copies)
                .map(|_| {
                    let j = if jitter > 0 {
                        rng.random_range(0..=jitter)
                    } else {
                        0
                    };
                    shape.delay + Duration::from_micros(j)
                })
                .collect(),
        )
    }
}

/// The impairing network: listeners on loopback, one per relay port.
pub struct Impairer {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A listener bound before its upstream is known (a relay told to advertise it starts
/// after); [`Impairer::forward`] connects it.
pub struct Listener {
    socket: Arc<UdpSocket>,
}

impl Listener {
    pub async fn bind() -> Result<Listener> {
        let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        Ok(Listener {
            socket: Arc::new(socket),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Sends now (awaited, in order) or after `delay` (a task of its own).
async fn send_later(socket: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>, delay: Duration) {
    if delay.is_zero() {
        // Awaited, not `try_send_to`: a socket just bound has no write readiness yet, and
        // `try_send_to` would drop the first datagram of every new mapping.
        let _ = socket.send_to(&data, to).await;
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&data, to).await;
    });
}

impl Impairer {
    /// A network that passes everything, its randomness seeded.
    pub fn new(seed: u64) -> Impairer {
        Impairer {
            shared: Arc::new(Shared {
                shape: Mutex::new(Shape::default()),
                rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
                dropped: AtomicU64::new(0),
                duplicated: AtomicU64::new(0),
                rebinds: Mutex::new(Vec::new()),
            }),
            tasks: Vec::new(),
        }
    }

    /// From now on, what the network does.
    pub fn set(&self, shape: Shape) {
        if let Ok(mut s) = self.shared.shape.lock() {
            *s = shape;
        }
    }

    /// A NAT rebinding of `client` (its address as the listeners see it): at its next
    /// datagram its mapping is given up and a new one made, so the relay sees it come from a
    /// new port, and answers still sent to the old port are dropped. The client is not told.
    pub fn rebind(&self, client: SocketAddr) {
        if let Ok(mut r) = self.shared.rebinds.lock() {
            r.push(client);
        }
    }

    pub fn stats(&self) -> ImpairStats {
        ImpairStats {
            dropped: self.shared.dropped.load(Relaxed),
            duplicated: self.shared.duplicated.load(Relaxed),
        }
    }

    /// Forwards what `listener` receives to `upstream`, and the answers back, shaped.
    pub fn forward(&mut self, listener: Listener, upstream: SocketAddr) {
        let shared = self.shared.clone();
        let down = listener.socket;
        let task = tokio::spawn(async move {
            // One upstream socket per client address, bound on the upstream's side of the
            // routing table (the relay may be in another namespace). The answers' tasks
            // live in `backs`, so aborting this task ends them too.
            let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, AbortHandle)> = HashMap::new();
            let mut backs = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 65_536];
            // Bounded: a test's clients are few.
            const MAX_CLIENTS: usize = 64;
            loop {
                let Ok((n, from)) = down.recv_from(&mut buf).await else {
                    return;
                };
                if shared.take_rebind(from) {
                    if let Some((_, back)) = clients.remove(&from) {
                        back.abort();
                    }
                }
                let up = match clients.get(&from) {
                    Some((s, _)) => s.clone(),
                    None if clients.len() < MAX_CLIENTS => {
                        let any = match upstream {
                            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
                        };
                        let Ok(s) = UdpSocket::bind(any).await else {
                            continue;
                        };
                        let s = Arc::new(s);
                        let back =
                            backs.spawn(backward(s.clone(), down.clone(), from, shared.clone()));
                        clients.insert(from, (s.clone(), back));
                        s
                    }
                    None => continue,
                };
                if let Some(delays) = shared.plan(n) {
                    for d in delays {
                        send_later(up.clone(), upstream, buf[..n].to_vec(), d).await;
                    }
                }
            }
        });
        self.tasks.push(task);
    }
}

/// The relay's answers to one client, shaped on their way back.
async fn backward(
    up: Arc<UdpSocket>,
    down: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = up.recv(&mut buf).await {
        if let Some(delays) = shared.plan(n) {
            for d in delays {
                send_later(down.clone(), client, buf[..n].to_vec(), d).await;
            }
        }
    }
}

impl Drop for Impairer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

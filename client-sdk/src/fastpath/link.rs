//! The fast path's sockets and the task that drives `super::bind::BindMachine` with
//! them: opening (and replacing) the UDP socket, sending BIND, asking for tickets over the
//! control stream, and telling the call which socket media goes on.
//!
//! Owns [`FastLink`] (shared by the call, its media task and the driver) and [`Driver`].
//! Does not own the bind decisions (`super::bind`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use duet_proto::{ChannelId, ClientMessage, FastPathOffer};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::call::{Event, Shared};
use crate::error::SdkError;

use super::bind::{Action, BindConfig, BindMachine, RebindFailure};
use super::Transport;

/// Spare room for one received datagram (fast-path datagrams are QUIC-sized).
pub(crate) const RECV_ROOM: usize = 16 * 1024;

/// A socket with the generation it was opened in (errors of older sockets are ignored).
#[derive(Debug, Clone)]
pub(crate) struct GenSocket {
    pub generation: u64,
    pub socket: Arc<UdpSocket>,
}

/// The sockets the media task reads: the current one and, during a rebind, the one before
/// (the relay sends to it until the new binding takes effect).
#[derive(Debug, Clone, Default)]
pub(crate) struct RecvSockets {
    pub current: Option<GenSocket>,
    pub previous: Option<GenSocket>,
}

/// What the control task, the media task, `send_media` and the app tell the driver.
#[derive(Debug)]
pub(crate) enum Input {
    Bound {
        channel: ChannelId,
        addr: SocketAddr,
    },
    Ticket(FastPathOffer),
    TicketUnavailable,
    SocketError {
        generation: u64,
        error: String,
    },
    Rebind(oneshot::Sender<Result<SocketAddr, SdkError>>),
}

/// Fast-path counters of one call.
#[derive(Debug, Default)]
pub(crate) struct FastCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub malformed: AtomicU64,
}

/// The fast path's state shared by the call, its tasks and the driver.
#[derive(Debug)]
pub(crate) struct FastLink {
    pub channel: ChannelId,
    on_fast: AtomicBool,
    send_socket: Mutex<Option<GenSocket>>,
    recv_sockets: watch::Sender<RecvSockets>,
    input: mpsc::UnboundedSender<Input>,
    pub counters: FastCounters,
}

impl FastLink {
    pub fn new(channel: ChannelId) -> (Arc<Self>, mpsc::UnboundedReceiver<Input>) {
        let (input, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Self {
            channel,
            on_fast: AtomicBool::new(false),
            send_socket: Mutex::new(None),
            recv_sockets: watch::Sender::new(RecvSockets::default()),
            input,
            counters: FastCounters::default(),
        });
        (link, rx)
    }

    pub fn transport(&self) -> Transport {
        if self.on_fast.load(Ordering::Acquire) {
            Transport::FastPath
        } else {
            Transport::Quic
        }
    }

    /// The socket to send media on, when media goes over the fast path now.
    pub fn sender(&self) -> Option<GenSocket> {
        if !self.on_fast.load(Ordering::Acquire) {
            return None;
        }
        self.send_socket.lock().ok()?.clone()
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        let s = self.recv_sockets.borrow();
        s.current.as_ref()?.socket.local_addr().ok()
    }

    pub fn subscribe(&self) -> watch::Receiver<RecvSockets> {
        self.recv_sockets.subscribe()
    }

    pub fn tell(&self, input: Input) {
        let _ = self.input.send(input);
    }

    /// A media send failed on `generation`: media goes to QUIC now, the driver decides.
    pub fn send_failed(&self, generation: u64, error: String) {
        self.on_fast.store(false, Ordering::Release);
        self.tell(Input::SocketError { generation, error });
    }
}

/// Opens a UDP socket of `target`'s family on an ephemeral port, connected to `target`.
async fn open_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Everything the driver task needs.
pub(crate) struct Driver {
    pub shared: Arc<Shared>,
    pub link: Arc<FastLink>,
    pub inputs: mpsc::UnboundedReceiver<Input>,
    pub offer: FastPathOffer,
    pub target: SocketAddr,
    pub cfg: BindConfig,
}

impl Driver {
    fn emit(&self, ev: Event) {
        self.shared.emit_fast_event(ev);
    }

    /// Runs until the call ends.
    pub async fn run(mut self) {
        let mut generation = 0u64;
        let mut pending: Option<oneshot::Sender<Result<SocketAddr, SdkError>>> = None;
        let (mut machine, first) = BindMachine::new(self.offer.channel, self.cfg, Instant::now());
        let mut actions: std::collections::VecDeque<Action> = first.into();
        match open_socket(self.target).await {
            Ok(s) => {
                self.link.recv_sockets.send_replace(RecvSockets {
                    current: Some(GenSocket {
                        generation,
                        socket: Arc::new(s),
                    }),
                    previous: None,
                });
            }
            Err(e) => {
                actions.clear();
                actions.extend(machine.on_socket_error(format!("fast-path socket: {e}")));
            }
        }
        loop {
            while let Some(a) = actions.pop_front() {
                let more = self
                    .execute(&mut machine, a, &mut pending, &mut generation)
                    .await;
                actions.extend(more);
            }
            let deadline = machine.next_deadline();
            let more = tokio::select! {
                input = self.inputs.recv() => {
                    let Some(input) = input else { return };
                    match input {
                        Input::Bound { channel, addr } => machine.on_bound(channel, addr),
                        Input::Ticket(offer) => {
                            if offer.channel != self.offer.channel {
                                tracing::warn!("fresh fast-path ticket names another channel; ignored");
                                Vec::new()
                            } else {
                                self.offer = offer;
                                machine.on_ticket(Instant::now())
                            }
                        }
                        Input::TicketUnavailable => machine.on_ticket_unavailable(),
                        Input::SocketError { generation: g, error } => {
                            if g == generation {
                                machine.on_socket_error(format!("fast-path socket: {error}"))
                            } else {
                                Vec::new()
                            }
                        }
                        Input::Rebind(reply) => {
                            if let Some(old) = pending.replace(reply) {
                                let _ = old.send(Err(SdkError::FastPathUnavailable(
                                    "superseded by a newer rebind".into(),
                                )));
                            }
                            self.link.on_fast.store(false, Ordering::Release);
                            machine.rebind(Instant::now())
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => machine.poll(Instant::now()),
                _ = self.shared.closed() => return,
            };
            actions.extend(more);
        }
    }

    /// The generation of the socket the relay confirmed last.
    fn bound_generation(&self) -> Option<u64> {
        let s = self.link.send_socket.lock().ok()?;
        s.as_ref().map(|s| s.generation)
    }

    fn current(&self) -> Option<GenSocket> {
        self.link.recv_sockets.borrow().current.clone()
    }

    async fn execute(
        &mut self,
        machine: &mut BindMachine,
        action: Action,
        pending: &mut Option<oneshot::Sender<Result<SocketAddr, SdkError>>>,
        generation: &mut u64,
    ) -> Vec<Action> {
        match action {
            Action::NewSocket => {
                self.link.on_fast.store(false, Ordering::Release);
                let s = match open_socket(self.target).await {
                    Ok(s) => s,
                    Err(e) => return machine.on_socket_error(format!("fast-path socket: {e}")),
                };
                *generation += 1;
                let new = GenSocket {
                    generation: *generation,
                    socket: Arc::new(s),
                };
                // Keep reading the socket the relay has bound (it sends there until the new
                // binding takes effect), or else the one before this (it may be bound
                // without our having heard).
                let bound = self.bound_generation();
                self.link.recv_sockets.send_modify(|r| {
                    let old = r.current.replace(new);
                    let is_bound = |s: &Option<GenSocket>| {
                        bound.is_some() && s.as_ref().map(|s| s.generation) == bound
                    };
                    if is_bound(&old) || !is_bound(&r.previous) {
                        r.previous = old;
                    }
                });
            }
            Action::SendBind => {
                let Some(packet) = self.offer.bind_packet() else {
                    return machine.on_socket_error("the fast-path ticket is malformed".into());
                };
                let Some(cur) = self.current() else {
                    return machine.on_socket_error("no fast-path socket".into());
                };
                if let Err(e) = cur.socket.send(&packet).await {
                    return machine.on_socket_error(format!("fast-path socket: {e}"));
                }
                tracing::trace!(generation = cur.generation, "sent fast-path BIND");
            }
            Action::RequestTicket => {
                if let Err(e) = self
                    .shared
                    .send_control(&ClientMessage::FastPathTicket)
                    .await
                {
                    tracing::debug!(error = %e, "could not ask for a fast-path ticket");
                }
            }
            Action::Confirmed { addr } => {
                let cur = self.current();
                if let Ok(mut s) = self.link.send_socket.lock() {
                    *s = cur;
                }
                self.link.on_fast.store(true, Ordering::Release);
                self.link.recv_sockets.send_modify(|r| r.previous = None);
                tracing::debug!(%addr, "fast path bound; media goes over UDP");
                self.emit(Event::FastPathBound { addr });
            }
            Action::Fallback { reason } => {
                self.link.on_fast.store(false, Ordering::Release);
                // The relay may have bound us (a lost confirmation) or still send to a UDP
                // path that died: have it send to us over QUIC again.
                if let Err(e) = self
                    .shared
                    .send_control(&ClientMessage::FastPathUnbind)
                    .await
                {
                    tracing::debug!(error = %e, "could not unbind the fast path");
                }
                tracing::debug!(%reason, "media stays on QUIC");
                self.emit(Event::FastPathFallback { reason });
            }
            Action::RebindDone(result) => {
                if let Some(reply) = pending.take() {
                    let result = match result {
                        Ok(()) => self.link.local_addr().ok_or_else(|| {
                            SdkError::FastPathUnavailable("no fast-path socket".into())
                        }),
                        Err(RebindFailure::Timeout(what)) => Err(SdkError::Timeout(what)),
                        Err(RebindFailure::Unavailable(why)) => {
                            Err(SdkError::FastPathUnavailable(why))
                        }
                    };
                    let _ = reply.send(result);
                }
            }
        }
        Vec::new()
    }
}

//! The raw-UDP fast path as a media transport: the UDP socket, the bind state machine and
//! the task that drives them.
//!
//! With [`FastPathMode::Prefer`] and a [`FastPathOffer`] in `Joined`, the call opens a UDP
//! socket connected to the relay's fast-path address (so only the relay's datagrams are
//! accepted, and an ICMP "port unreachable" surfaces as an error), sends the offer's BIND
//! packet and resends it with backoff (100, 200, 400 ms, ...) until the relay confirms with
//! `FastPathBound` on the control stream or `fast_path_bind_timeout` passes. Confirmed: media
//! goes out as `FastPathHeader | body` over UDP. Not confirmed, or the socket reports an
//! error: media stays on QUIC datagrams and [`crate::Event::FastPathFallback`] says why. The
//! call never fails because of the fast path. Every `fast_path_refresh` a fresh ticket is
//! asked for and BIND is resent from the current socket (keeps NAT mappings open; a NAT that
//! changed the source port gets the binding moved, the fresh ticket having a higher seq).
//! After a fallback by timeout (not after a socket error) the SDK retries quietly, at once
//! and then at each refresh, from a new socket with a fresh ticket: that recovers a lost BIND
//! and also a lost confirmation (a BIND from a new address is a move, which the relay
//! confirms).
//! `Call::rebind_fast_path` opens a new socket and binds it with a fresh ticket.
//!
//! Owns: the sockets, `BindMachine` (sans-IO: when to send BIND, ask for a ticket, give
//! up, switch transport) and its driver task, and turning a received fast-path datagram
//! into the QUIC media-datagram form the reassembler takes. Does not own fragmentation
//! (`fragment`), sealing (`e2ee`) or the control stream (`call`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duet_proto::fastpath::{FastPathHeader, PacketType, FASTPATH_HEADER_LEN};
use duet_proto::{ChannelId, ClientMessage, FastPathOffer, MediaHeader, MEDIA_HEADER_LEN};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::call::{Event, Shared};
use crate::error::SdkError;

/// Whether a call may carry media over the relay's raw-UDP fast path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FastPathMode {
    /// QUIC datagrams only.
    #[default]
    Off,
    /// Bind the fast path when the relay offers one and use it once confirmed; QUIC
    /// datagrams otherwise (and whenever the fast path fails).
    Prefer,
}

/// What this endpoint's media is being sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC datagrams on the control connection.
    Quic,
    /// The relay's raw-UDP fast path.
    FastPath,
}

/// First BIND resend delay; it doubles on each resend.
const FIRST_RESEND: Duration = Duration::from_millis(100);
/// Spare room for one received datagram (fast-path datagrams are QUIC-sized).
pub(crate) const RECV_ROOM: usize = 16 * 1024;

/// Timing of the bind state machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindConfig {
    pub bind_timeout: Duration,
    pub refresh: Duration,
    /// How long a rebind waits for the fresh ticket it asked for.
    pub ticket_timeout: Duration,
}

/// Why a rebind did not take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebindFailure {
    Timeout(&'static str),
    Unavailable(String),
}

/// What the machine wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Open a new socket (a new local port) and make it the current one.
    NewSocket,
    /// Send BIND with the latest ticket from the current socket.
    SendBind,
    /// Ask the relay for a fresh ticket (`ClientMessage::FastPathTicket`).
    RequestTicket,
    /// The relay bound the channel to `addr`: send media on the fast path.
    Confirmed { addr: SocketAddr },
    /// Send media on QUIC; the text says why.
    Fallback { reason: String },
    /// The pending rebind finished.
    RebindDone(Result<(), RebindFailure>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A new socket waits for the fresh ticket it will bind with.
    AwaitTicket {
        deadline: Instant,
    },
    /// BIND sent, waiting for `FastPathBound`.
    Binding {
        deadline: Instant,
        next_send: Instant,
        backoff: Duration,
    },
    Bound {
        addr: SocketAddr,
    },
    /// Media on QUIC. `retry`: each refresh tries again from a new socket with a fresh
    /// ticket (the BIND or its confirmation may have been lost; a new source address makes
    /// the relay confirm even a binding it already has). Not after a socket error: nothing
    /// listens there.
    Fallback {
        retry: bool,
    },
}

/// The bind state machine, sans IO: inputs are what the relay and the socket said and the
/// time; outputs are [`Action`]s.
#[derive(Debug)]
pub(crate) struct BindMachine {
    cfg: BindConfig,
    channel: ChannelId,
    phase: Phase,
    /// The app waits in `rebind_fast_path` for this attempt.
    rebinding: bool,
    /// This attempt is a retry from `Fallback`: its failure is no news to the app.
    quiet: bool,
    next_refresh: Instant,
}

impl BindMachine {
    /// Starts binding with the offer's ticket: send BIND now.
    pub fn new(channel: ChannelId, cfg: BindConfig, now: Instant) -> (Self, Vec<Action>) {
        let m = Self {
            cfg,
            channel,
            phase: Self::binding(cfg, now),
            rebinding: false,
            quiet: false,
            next_refresh: now + cfg.refresh,
        };
        (m, vec![Action::SendBind])
    }

    fn binding(cfg: BindConfig, now: Instant) -> Phase {
        Phase::Binding {
            deadline: now + cfg.bind_timeout,
            next_send: now + FIRST_RESEND,
            backoff: FIRST_RESEND,
        }
    }

    #[cfg(test)]
    pub fn transport(&self) -> Transport {
        match self.phase {
            Phase::Bound { .. } => Transport::FastPath,
            _ => Transport::Quic,
        }
    }

    /// When `poll` next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let phase = match self.phase {
            Phase::AwaitTicket { deadline } => Some(deadline),
            Phase::Binding {
                deadline,
                next_send,
                ..
            } => Some(deadline.min(next_send)),
            Phase::Bound { .. } | Phase::Fallback { .. } => None,
        };
        phase.map_or(self.next_refresh, |p| p.min(self.next_refresh))
    }

    /// This attempt failed: media on QUIC, the app told (unless a quiet retry) and a
    /// waiting rebind answered.
    fn fail(&mut self, retry: bool, reason: String, failure: RebindFailure) -> Vec<Action> {
        self.phase = Phase::Fallback { retry };
        let mut out = Vec::new();
        if !std::mem::take(&mut self.quiet) {
            out.push(Action::Fallback { reason });
        }
        if std::mem::take(&mut self.rebinding) {
            out.push(Action::RebindDone(Err(failure)));
        }
        out
    }

    /// A new socket, then a fresh ticket to bind it with.
    fn new_socket(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::AwaitTicket {
            deadline: now + self.cfg.ticket_timeout,
        };
        vec![Action::NewSocket, Action::RequestTicket]
    }

    /// Timers: BIND resends, giving up, refreshes and retries.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = match self.phase {
            Phase::AwaitTicket { deadline } if now >= deadline => self.fail(
                true,
                "no fresh fast-path ticket in time".into(),
                RebindFailure::Timeout("a fresh fast-path ticket"),
            ),
            Phase::Binding { deadline, .. } if now >= deadline => {
                if !self.quiet {
                    // The first retry at once: a lost confirmation is then a short detour.
                    self.next_refresh = now;
                }
                self.fail(
                    true,
                    format!(
                        "the relay did not confirm the fast-path bind within {} ms",
                        self.cfg.bind_timeout.as_millis()
                    ),
                    RebindFailure::Timeout("the fast-path bind confirmation"),
                )
            }
            Phase::Binding {
                deadline,
                next_send,
                backoff,
            } if now >= next_send => {
                let backoff = backoff * 2;
                self.phase = Phase::Binding {
                    deadline,
                    next_send: now + backoff,
                    backoff,
                };
                vec![Action::SendBind]
            }
            _ => Vec::new(),
        };
        if now >= self.next_refresh {
            self.next_refresh = now + self.cfg.refresh;
            match self.phase {
                Phase::Bound { .. } => out.push(Action::RequestTicket),
                Phase::Fallback { retry: true } => {
                    self.quiet = true;
                    out.extend(self.new_socket(now));
                }
                _ => {}
            }
        }
        out
    }

    /// The relay says a BIND took effect on `channel` from `addr`.
    pub fn on_bound(&mut self, channel: ChannelId, addr: SocketAddr) -> Vec<Action> {
        if channel != self.channel {
            return Vec::new();
        }
        match self.phase {
            // Moving away: a late word about the old socket changes nothing.
            Phase::AwaitTicket { .. } => Vec::new(),
            Phase::Bound { addr: old } if old == addr => Vec::new(),
            _ => {
                self.phase = Phase::Bound { addr };
                self.quiet = false;
                let mut out = vec![Action::Confirmed { addr }];
                if std::mem::take(&mut self.rebinding) {
                    out.push(Action::RebindDone(Ok(())));
                }
                out
            }
        }
    }

    /// A fresh ticket arrived (the driver keeps its bytes).
    pub fn on_ticket(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::AwaitTicket { .. } => {
                self.phase = Self::binding(self.cfg, now);
                vec![Action::SendBind]
            }
            // A refresh: same socket, so the relay answers nothing unless a NAT moved us.
            Phase::Bound { .. } | Phase::Binding { .. } => vec![Action::SendBind],
            Phase::Fallback { .. } => Vec::new(),
        }
    }

    /// The relay has no ticket for us.
    pub fn on_ticket_unavailable(&mut self) -> Vec<Action> {
        match self.phase {
            Phase::AwaitTicket { .. } => {
                let why = "the relay has no fast-path ticket".to_string();
                self.fail(true, why.clone(), RebindFailure::Unavailable(why))
            }
            // A failed refresh keeps the binding.
            _ => Vec::new(),
        }
    }

    /// The current socket failed (ECONNREFUSED: the port is closed, UDP is blocked).
    pub fn on_socket_error(&mut self, reason: String) -> Vec<Action> {
        match self.phase {
            // Already on QUIC and not trying: no news, but no more retries either.
            Phase::Fallback { .. } => {
                self.phase = Phase::Fallback { retry: false };
                Vec::new()
            }
            _ => self.fail(false, reason.clone(), RebindFailure::Unavailable(reason)),
        }
    }

    /// The app moved networks: a new socket, and a fresh ticket to bind it. Media is on
    /// QUIC until the new binding is confirmed.
    pub fn rebind(&mut self, now: Instant) -> Vec<Action> {
        self.rebinding = true;
        self.quiet = false;
        self.new_socket(now)
    }
}

/// Turns a fast-path datagram into the QUIC media-datagram form (`MediaHeader | body`),
/// in place: the media header is written over the last two header bytes. `None` when it is
/// not a fast-path media datagram.
pub(crate) fn to_media_datagram(mut d: BytesMut) -> Option<Bytes> {
    let (header, _) = FastPathHeader::parse(&d).ok()?;
    let PacketType::Media(kind) = header.ty else {
        return None;
    };
    let start = FASTPATH_HEADER_LEN - MEDIA_HEADER_LEN;
    d[start..FASTPATH_HEADER_LEN].copy_from_slice(&MediaHeader::new(kind).to_bytes());
    Some(d.freeze().slice(start..))
}

/// Turns a fast-path piece back into a QUIC media datagram (when a UDP send failed).
pub(crate) fn fast_piece_to_quic(piece: &[u8]) -> Option<Bytes> {
    to_media_datagram(BytesMut::from(piece))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use duet_proto::MediaKind;

    const CFG: BindConfig = BindConfig {
        bind_timeout: Duration::from_millis(1000),
        refresh: Duration::from_secs(10),
        ticket_timeout: Duration::from_secs(5),
    };
    const CH: ChannelId = ChannelId(42);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn binds_resends_with_backoff_and_confirms() {
        let t0 = Instant::now();
        let (mut m, first) = BindMachine::new(CH, CFG, t0);
        assert_eq!(first, vec![Action::SendBind]);
        assert_eq!(m.transport(), Transport::Quic);
        assert_eq!(m.next_deadline(), ms(t0, 100));
        assert!(m.poll(ms(t0, 99)).is_empty());
        assert_eq!(m.poll(ms(t0, 100)), vec![Action::SendBind]);
        assert_eq!(m.next_deadline(), ms(t0, 300));
        assert_eq!(m.poll(ms(t0, 300)), vec![Action::SendBind]);
        assert_eq!(m.next_deadline(), ms(t0, 700));
        // Another channel's confirmation is not ours.
        assert!(m.on_bound(ChannelId(43), addr(5)).is_empty());
        assert_eq!(
            m.on_bound(CH, addr(5)),
            vec![Action::Confirmed { addr: addr(5) }]
        );
        assert_eq!(m.transport(), Transport::FastPath);
        // No more resends; the same address again is no news.
        assert!(m.poll(ms(t0, 2000)).is_empty());
        assert!(m.on_bound(CH, addr(5)).is_empty());
        // A NAT moved us: still bound, at the new address.
        assert_eq!(
            m.on_bound(CH, addr(6)),
            vec![Action::Confirmed { addr: addr(6) }]
        );
    }

    #[test]
    fn gives_up_at_the_bind_timeout_and_takes_a_late_confirmation() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let mut sends = 0;
        let (t, fallback) = loop {
            let t = m.next_deadline();
            let acts = m.poll(t);
            if let Some(Action::Fallback { reason }) = acts.first() {
                break (t, reason.clone());
            }
            sends += acts.iter().filter(|a| **a == Action::SendBind).count();
        };
        assert_eq!(t, ms(t0, 1000));
        assert_eq!(sends, 3, "resends at 100, 300, 700 ms");
        assert!(fallback.contains("1000 ms"), "{fallback}");
        assert_eq!(m.transport(), Transport::Quic);
        // The retry's ticket came; a late word (for either socket) counts.
        m.on_ticket(ms(t0, 1001));
        assert_eq!(
            m.on_bound(CH, addr(7)),
            vec![Action::Confirmed { addr: addr(7) }]
        );
        assert_eq!(m.transport(), Transport::FastPath);
    }

    #[test]
    fn the_first_timeout_retries_at_once_from_a_new_socket() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let acts = m.poll(ms(t0, 1000));
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert_eq!(acts[1..], [Action::NewSocket, Action::RequestTicket]);
        assert_eq!(m.next_deadline(), ms(t0, 6000), "the ticket wait");
        assert_eq!(m.on_ticket(ms(t0, 1001)), vec![Action::SendBind]);
        // Its failure is quiet, and the next try waits for the refresh period.
        let quiet: Vec<_> = (0..4)
            .flat_map(|_| {
                let t = m.next_deadline();
                m.poll(t)
            })
            .filter(|a| *a != Action::SendBind)
            .collect();
        assert!(quiet.is_empty(), "{quiet:?}");
        assert_eq!(m.next_deadline(), ms(t0, 11_000));
        // A late confirmation of either socket still counts.
        assert_eq!(
            m.on_bound(CH, addr(4)),
            vec![Action::Confirmed { addr: addr(4) }]
        );
    }

    #[test]
    fn after_a_timeout_each_refresh_retries_quietly_from_a_new_socket() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let acts = m.poll(ms(t0, 1000));
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert_eq!(acts[1..], [Action::NewSocket, Action::RequestTicket]);
        // No ticket in time: a quiet failure.
        assert!(m.poll(ms(t0, 6000)).is_empty());
        // A refresh later: new socket, fresh ticket, BIND with backoff.
        assert_eq!(
            m.poll(ms(t0, 11_000)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        assert_eq!(m.on_ticket(ms(t0, 11_010)), vec![Action::SendBind]);
        assert_eq!(m.poll(ms(t0, 11_110)), vec![Action::SendBind]);
        // It fails too: no second Fallback event, and the next refresh tries again.
        assert!(m.poll(ms(t0, 12_010)).is_empty());
        assert_eq!(m.transport(), Transport::Quic);
        assert_eq!(
            m.poll(ms(t0, 21_000)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        // No ticket this time: still quiet, still retrying later.
        assert!(m.on_ticket_unavailable().is_empty());
        assert_eq!(
            m.poll(ms(t0, 31_000)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        m.on_ticket(ms(t0, 31_001));
        // This one gets through.
        assert_eq!(
            m.on_bound(CH, addr(8)),
            vec![Action::Confirmed { addr: addr(8) }]
        );
        assert_eq!(m.transport(), Transport::FastPath);
        assert_eq!(m.poll(ms(t0, 41_000)), vec![Action::RequestTicket]);
    }

    #[test]
    fn a_socket_error_falls_back_at_once_and_stops_trying() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        let acts = m.on_socket_error("connection refused".into());
        assert_eq!(
            acts,
            vec![Action::Fallback {
                reason: "connection refused".into()
            }]
        );
        assert!(m.on_socket_error("again".into()).is_empty());
        assert!(m.poll(ms(t0, 1000)).is_empty(), "no resend after an error");
        assert!(m.poll(ms(t0, 10_000)).is_empty(), "no refresh either");
        assert!(m.on_ticket(ms(t0, 10_001)).is_empty());
        assert_eq!(m.transport(), Transport::Quic);
    }

    #[test]
    fn refreshes_while_bound() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.on_bound(CH, addr(5));
        assert_eq!(m.next_deadline(), ms(t0, 10_000));
        assert_eq!(m.poll(ms(t0, 10_000)), vec![Action::RequestTicket]);
        assert_eq!(m.next_deadline(), ms(t0, 20_000));
        assert_eq!(m.on_ticket(ms(t0, 10_010)), vec![Action::SendBind]);
        assert_eq!(m.transport(), Transport::FastPath);
        // A failed refresh keeps the binding.
        assert!(m.on_ticket_unavailable().is_empty());
        assert_eq!(m.transport(), Transport::FastPath);
    }

    #[test]
    fn rebind_waits_for_a_ticket_then_binds_and_reports() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.on_bound(CH, addr(5));
        assert_eq!(
            m.rebind(ms(t0, 50)),
            vec![Action::NewSocket, Action::RequestTicket]
        );
        assert_eq!(m.transport(), Transport::Quic);
        // A late word about the old socket while we move changes nothing.
        assert!(m.on_bound(CH, addr(8)).is_empty());
        assert_eq!(m.on_ticket(ms(t0, 60)), vec![Action::SendBind]);
        assert_eq!(m.poll(ms(t0, 160)), vec![Action::SendBind]);
        assert_eq!(
            m.on_bound(CH, addr(9)),
            vec![
                Action::Confirmed { addr: addr(9) },
                Action::RebindDone(Ok(()))
            ]
        );
        assert_eq!(m.transport(), Transport::FastPath);
    }

    #[test]
    fn rebind_failures_are_reported_once() {
        let t0 = Instant::now();
        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.on_bound(CH, addr(5));
        m.rebind(t0);
        let acts = m.on_ticket_unavailable();
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert!(matches!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Unavailable(_)))
        ));

        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.rebind(t0);
        let acts = m.poll(ms(t0, 5000));
        assert_eq!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Timeout("a fresh fast-path ticket")))
        );

        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.rebind(t0);
        m.on_ticket(t0);
        let acts = m.poll(ms(t0, 1000));
        assert!(matches!(acts[0], Action::Fallback { .. }));
        assert_eq!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Timeout(
                "the fast-path bind confirmation"
            )))
        );
        assert!(m.poll(ms(t0, 1001)).is_empty());

        let (mut m, _) = BindMachine::new(CH, CFG, t0);
        m.rebind(t0);
        m.on_ticket(t0);
        let acts = m.on_socket_error("refused".into());
        assert_eq!(
            acts[1],
            Action::RebindDone(Err(RebindFailure::Unavailable("refused".into())))
        );
    }

    #[test]
    fn fast_path_media_becomes_a_quic_media_datagram() {
        let mut d = BytesMut::new();
        d.extend_from_slice(
            &FastPathHeader::new(PacketType::Media(MediaKind::Screen), ChannelId(77)).to_bytes(),
        );
        d.extend_from_slice(b"body");
        let q = to_media_datagram(d).unwrap();
        assert_eq!(&q[..], &[1, 3, b'b', b'o', b'd', b'y']);
        let (h, body) = MediaHeader::parse(&q).unwrap();
        assert_eq!(h.kind, MediaKind::Screen);
        assert_eq!(body, b"body");

        let bind = FastPathHeader::new(PacketType::Bind, ChannelId(77)).to_bytes();
        assert_eq!(to_media_datagram(BytesMut::from(&bind[..])), None);
        assert_eq!(to_media_datagram(BytesMut::from(&[1u8, 2, 3][..])), None);
        assert_eq!(to_media_datagram(BytesMut::from(&[9u8; 12][..])), None);
        assert_eq!(
            fast_piece_to_quic(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 5]).as_deref(),
            Some(&[1u8, 1, 5][..])
        );
    }
}

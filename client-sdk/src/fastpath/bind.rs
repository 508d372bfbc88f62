//! The fast path's bind state machine, sans-IO: `now` in, [`Action`]s out.
//!
//! Owns when to send BIND (with backoff), ask for a fresh ticket, refresh, give up and
//! switch transport, and rebinds. Does not own sockets or the control stream
//! (`super::link`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use duet_proto::ChannelId;

#[cfg(test)]
use super::Transport;

/// First BIND resend delay; it doubles on each resend.
const FIRST_RESEND: Duration = Duration::from_millis(100);

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

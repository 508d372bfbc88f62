//! The one owner of the session core at run time: every input goes through
//! [`Driver::input`], which runs it on the core and carries out the actions it queued, in
//! order, before the lock is released; one timer task sleeps until the core's
//! `poll_timeout` (woken earlier when an input moved it).
//!
//! Owns the I/O side of each action: a connection's [`Link`] (its quinn connection and
//! control queue), each session's [`SessionLinks`] (who each slot's media goes to, read
//! lock-free by the media tasks and the fast-path bridge). It decides nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use duet_proto::{ChannelId, RelayMessage, SessionId, Slot};
use quinn::VarInt;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::admission::Admission;
use super::bridge::Bridge;
use crate::config::{Config, ConfigError};
use crate::fastpath::FastPathService;
use crate::keyring::LiveKeyring;
use crate::metrics::RelayMetrics;
use crate::session::{
    Action, CloseReason, ConnId, CoreConfig, DrainStatus, MediaActivity, SessionCore,
};

/// What a connection's writer task is asked to do. Messages are queued already encoded:
/// the queue's slots are allocated 32 at a time per connection, and a `RelayMessage` is
/// several times the size of its `Bytes` (see RESULTS.md, "QUIC memory").
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// One encoded control frame.
    Frame(Bytes),
    /// Flush what was queued, then close the connection.
    Close(CloseReason),
}

/// What a connection's media task gets when it joins: its session's routes and its slot.
pub(crate) type MediaRoute = (Arc<SessionLinks>, Slot);

impl Outgoing {
    /// `msg` encoded; `None` when it cannot be (larger than a control frame: never sent).
    pub fn msg(msg: &RelayMessage) -> Option<Self> {
        duet_proto::control::encode(msg).ok().map(Self::Frame)
    }
}

/// How the rest of the relay reaches one endpoint's connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub conn: quinn::Connection,
    /// Set once its control stream is open.
    ctl: OnceLock<mpsc::Sender<Outgoing>>,
    /// Hands the media task its route when the connection joins.
    joined: Mutex<Option<oneshot::Sender<MediaRoute>>>,
}

impl Link {
    pub fn new(conn: quinn::Connection, joined: oneshot::Sender<MediaRoute>) -> Self {
        Self {
            conn,
            ctl: OnceLock::new(),
            joined: Mutex::new(Some(joined)),
        }
    }

    /// The control stream is open: messages go to its writer.
    pub fn attach(&self, ctl: mpsc::Sender<Outgoing>) {
        let _ = self.ctl.set(ctl);
    }

    /// Queues `msg` without waiting; counted as lost when the writer is backlogged.
    pub fn send(&self, msg: RelayMessage, m: &RelayMetrics) {
        let Some(ctl) = self.ctl.get() else { return };
        let signal = match &msg {
            RelayMessage::Signal(d) => Some(d.len() as u64),
            _ => None,
        };
        let Some(frame) = Outgoing::msg(&msg) else {
            return;
        };
        match (ctl.try_send(frame), signal) {
            (Ok(()), Some(len)) => {
                m.signals_forwarded.increment(1);
                m.signal_bytes_forwarded.increment(len);
            }
            (Ok(()), None) => {}
            (Err(_), Some(_)) => m.signal_dropped("peer_backlog").increment(1),
            (Err(_), None) => m.control_error("stream_error").increment(1),
        }
    }

    /// Queues a notice from outside the core (a fast-path bind confirmation), best effort.
    pub fn notify(&self, out: Outgoing) {
        if let Some(ctl) = self.ctl.get() {
            let _ = ctl.try_send(out);
        }
    }

    /// Closes after what was queued, or at once when there is no stream to flush.
    fn close(&self, why: CloseReason) {
        let queued = self
            .ctl
            .get()
            .is_some_and(|ctl| ctl.try_send(Outgoing::Close(why)).is_ok());
        if !queued {
            let (code, text) = why.code();
            self.conn
                .close(VarInt::from_u32(code.to_u32()), text.as_bytes());
        }
    }

    fn hand_route(&self, session: &Arc<SessionLinks>, slot: Slot) {
        let tx = self.joined.lock().ok().and_then(|mut j| j.take());
        if let Some(tx) = tx {
            let _ = tx.send((session.clone(), slot));
        }
    }
}

/// Lock-free routing state of one session.
#[derive(Debug)]
pub(crate) struct SessionLinks {
    /// Who each slot's media and fast-path confirmations go to.
    pub slots: [ArcSwapOption<Link>; 2],
    /// Stamped per QUIC datagram; the core reads it at the idle deadline.
    pub activity: Arc<MediaActivity>,
    /// The session's fast-path channels `[slot A, slot B]`.
    pub fast_path: Option<[ChannelId; 2]>,
}

struct Driven {
    core: SessionCore,
    links: HashMap<ConnId, Arc<Link>>,
    sessions: HashMap<SessionId, Arc<SessionLinks>>,
    bridge: Arc<Bridge>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
}

impl Driven {
    fn apply(&mut self, m: &RelayMetrics) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send(c, msg) => {
                    if let Some(l) = self.links.get(&c) {
                        l.send(msg, m);
                    }
                }
                Action::Close(c, why) => {
                    if let Some(l) = self.links.get(&c) {
                        l.close(why);
                    }
                }
                Action::SessionOpened {
                    session,
                    fast_path,
                    activity,
                } => {
                    let s = Arc::new(SessionLinks {
                        slots: Default::default(),
                        activity,
                        fast_path,
                    });
                    self.bridge.open(&s);
                    self.sessions.insert(session, s);
                }
                Action::Route {
                    session,
                    slot,
                    conn,
                } => {
                    let to = conn.and_then(|c| self.links.get(&c).cloned());
                    if let Some(s) = self.sessions.get(&session) {
                        s.slots[slot.index()].store(to.clone());
                        if let Some(l) = to {
                            l.hand_route(s, slot);
                        }
                    }
                }
                Action::SessionClosed(session) => {
                    if let Some(s) = self.sessions.remove(&session) {
                        for slot in &s.slots {
                            slot.store(None);
                        }
                        self.bridge.close(&s);
                    }
                }
            }
        }
        m.sessions.set(self.core.session_count() as f64);
        m.endpoints.set(self.core.endpoint_count() as f64);
    }
}

/// State shared by every task of one relay.
pub(crate) struct Driver {
    pub cfg: Arc<Config>,
    pub metrics: Arc<RelayMetrics>,
    pub fast_path: Option<Arc<FastPathService>>,
    pub admission: Arc<Admission>,
    state: Mutex<Driven>,
    /// Wakes the timer task when an input moved the next deadline earlier.
    rearm: Notify,
    next_conn: AtomicU64,
    pub shutdown: watch::Sender<bool>,
}

impl Driver {
    pub fn new(
        cfg: Arc<Config>,
        keyring: Arc<LiveKeyring>,
        metrics: Arc<RelayMetrics>,
        fast_path: Option<(Arc<FastPathService>, Arc<Bridge>)>,
    ) -> Result<Arc<Self>, ConfigError> {
        let (service, bridge) = match fast_path {
            Some((s, b)) => (Some(s), b),
            None => (None, Arc::new(Bridge::new(0))),
        };
        let core = SessionCore::new(
            CoreConfig::from_config(&cfg)?,
            keyring,
            service.as_ref().map(|s| s.plane()),
            metrics.clone(),
            rand::rngs::StdRng::from_os_rng(),
            Instant::now(),
        );
        let admission = Admission::new(cfg.admission.clone(), &metrics);
        Ok(Arc::new(Self {
            admission,
            cfg,
            metrics,
            fast_path: service,
            state: Mutex::new(Driven {
                core,
                links: HashMap::new(),
                sessions: HashMap::new(),
                bridge,
                armed: None,
            }),
            rearm: Notify::new(),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Driven> {
        // A panic while holding the lock must not take the whole relay down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core and carries out what it queued.
    pub fn input<R>(&self, f: impl FnOnce(&mut SessionCore) -> R) -> R {
        let mut d = self.lock();
        let r = f(&mut d.core);
        self.settle(d);
        r
    }

    fn settle(&self, mut d: MutexGuard<'_, Driven>) {
        d.apply(&self.metrics);
        let next = d.core.poll_timeout();
        let earlier = match (next, d.armed) {
            (Some(n), Some(a)) => n < a,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(d);
        if earlier {
            self.rearm.notify_one();
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// A connection is up: the core starts its join deadline.
    pub fn connect(&self, id: ConnId, link: Arc<Link>, remote: SocketAddr, accepted_at: Instant) {
        let mut d = self.lock();
        d.links.insert(id, link);
        d.core.handle_connected(id, remote, accepted_at);
        self.settle(d);
    }

    /// A connection is gone: the core hears it, then its link is forgotten.
    pub fn disconnect(&self, id: ConnId) {
        let mut d = self.lock();
        d.core.handle_conn_lost(id, Instant::now());
        d.apply(&self.metrics);
        d.links.remove(&id);
        self.settle(d);
    }

    pub fn session_count(&self) -> usize {
        self.lock().core.session_count()
    }

    pub fn endpoint_count(&self) -> usize {
        self.lock().core.endpoint_count()
    }

    pub fn is_draining(&self) -> bool {
        self.lock().core.is_draining()
    }

    /// Readiness off, new joins refused; live sessions end at the configured deadline.
    pub fn drain(&self) {
        self.drain_with(self.cfg.drain_deadline(), 0);
    }

    /// Readiness off, new joins refused, live endpoints told to move; the sessions left end
    /// after `deadline`, or once no more than `min_sessions` remain. False when already
    /// draining.
    pub fn drain_with(&self, deadline: Duration, min_sessions: usize) -> bool {
        let started = self.input(|core| core.drain_with(Instant::now(), deadline, min_sessions));
        if started {
            self.metrics.draining.set(1.0);
            tracing::info!(
                deadline_ms = deadline.as_millis() as u64,
                min_sessions,
                "draining: new joins refused, endpoints told to move"
            );
        }
        started
    }

    /// Back to serving; false when not draining.
    pub fn undrain(&self) -> bool {
        let stopped = self.input(|core| core.undrain());
        if stopped {
            self.metrics.draining.set(0.0);
            tracing::info!("drain undone: serving");
        }
        stopped
    }

    pub fn drain_status(&self) -> DrainStatus {
        self.lock().core.drain_status(Instant::now())
    }

    /// The Prometheus text, with the fast-path workers' counters brought up to date.
    pub fn render_metrics(&self) -> String {
        if let Some(fp) = &self.fast_path {
            self.metrics.fast_path.sync(&fp.totals());
        }
        self.metrics.render()
    }
}

/// Runs the core's timers until shutdown: sleeps until the next deadline, or until an
/// input moved it earlier.
pub(crate) async fn run_timers(driver: Arc<Driver>) {
    let mut stop = driver.shutdown.subscribe();
    loop {
        let next = {
            let mut d = driver.lock();
            let next = d.core.poll_timeout();
            d.armed = next;
            next
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = driver.rearm.notified() => {}
            _ = sleep => driver.input(|core| core.handle_timeout(Instant::now())),
        }
    }
}

/// How long `RelayHandle::drained` waits beyond the drain deadline for sessions to end.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(2);

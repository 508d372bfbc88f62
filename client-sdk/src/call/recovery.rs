//! Which link carries a call, and how it gets another: resume on the same node, a move to
//! another node of the token's list, and the task that does either by itself when the
//! connection is lost, reset or the relay drains (with `ConnectOptions::nodes`).
//!
//! Which recovery fits which loss: a stateless reset means the node restarted, so the same
//! node first; a relay gone silent (the `liveness` verdict, or the idle timeout) is
//! presumed dead, so straight to the token's next node, over a connection opened while the
//! link was only suspect; a drain notice, the next node. After a move for silence the
//! call checks the peer came too; if it did not and the old node answers again, the
//! outage was this endpoint's own and the call goes back (both endpoints then sit where
//! the peer never left).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use duet_proto::{NodeId, SessionId};

use super::link::{attach, Link};
use super::liveness::Health;
use super::{Core, Dial, Event, Joining};
use crate::client::Client;
use crate::error::{ResumeError, SdkError};

/// Which link carries the call, and how to get another: shared by the call and its
/// recovery task.
pub(crate) struct Attach {
    pub(super) core: Arc<Core>,
    pub(super) link: Mutex<Arc<Link>>,
    /// Serialises resumes and moves.
    pub(super) reattach: tokio::sync::Mutex<()>,
    pub(super) dial: Mutex<Dial>,
    /// The app left: a closed connection is not a loss.
    pub(super) leaving: AtomicBool,
    /// A connection to the next node, opened while the current link is suspect.
    pub(super) standby: Mutex<Option<Standby>>,
}

/// A QUIC connection (no join yet) to the node a move would go to.
pub(super) struct Standby {
    node: NodeId,
    connecting: tokio::task::JoinHandle<Result<Client, SdkError>>,
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.connecting.abort();
    }
}

/// Why the recovery task woke.
pub(super) enum Cause {
    /// The connection closed: reset by a restarted node, or timed out.
    Lost {
        reset: bool,
    },
    /// The liveness detector found the relay silent past its threshold.
    Silent,
    Draining,
}

/// Where the call was before a move for silence, to go back if the peer never left.
struct Before {
    node: NodeId,
    addr: SocketAddr,
    resume: duet_proto::ResumeSecret,
}

impl Attach {
    pub(super) fn link(&self) -> Arc<Link> {
        match self.link.lock() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn is_e2ee_session(&self) -> bool {
        self.core
            .engine
            .lock()
            .map(|e| e.is_e2ee_session())
            .unwrap_or(true)
    }

    fn session(&self) -> Option<SessionId> {
        self.core.engine.lock().ok().map(|e| e.session().clone())
    }

    /// A new connection to the current node with the resume secret. `strict`: the relay
    /// must resume this device's place; otherwise a fresh join there (a restarted node that
    /// lost the session) continues the call too.
    pub(super) async fn reconnect(&self, strict: bool) -> Result<(), SdkError> {
        let _one = self.reattach.lock().await;
        let dial = self.dial.lock().map_err(|_| SdkError::Closed)?.clone();
        let old = self.link();
        let e2ee = self.is_e2ee_session();
        let session = self.session().ok_or(SdkError::Closed)?;
        // The node just went silent: if it is alive it answers within a round trip, so give
        // it no longer than a silence that counts as dead, not the whole join timeout,
        // before the call moves on to the token's next node.
        let attempt = async {
            let client = Client::connect(dial.relay, dial.token.clone(), dial.opts.clone()).await?;
            client
                .join_link(session, Some(old.joined.resume.clone()), e2ee)
                .await
        };
        let j = tokio::time::timeout(dial.opts.idle_timeout.min(dial.opts.join_timeout), attempt)
            .await
            .map_err(|_| SdkError::Timeout("the silent node did not take the call back"))??;
        if j.joined.resumed && j.joined.slot != old.joined.slot {
            return Err(ResumeError::SlotChanged.into());
        }
        if strict && !j.joined.resumed {
            return Err(ResumeError::NotResumed.into());
        }
        self.replace_link(j, &dial, old.node.clone());
        Ok(())
    }

    pub(super) async fn migrate(&self, to: NodeId, addr: SocketAddr) -> Result<(), SdkError> {
        let _one = self.reattach.lock().await;
        let mut dial = self.dial.lock().map_err(|_| SdkError::Closed)?.clone();
        let claims = crate::secure::token_claims(&dial.token)?;
        if !claims.nodes.is_empty() && !claims.places_on(&to) {
            return Err(ResumeError::NodeNotListed(to).into());
        }
        let from = self.link().node.clone();
        let e2ee = self.is_e2ee_session();
        let session = self.session().ok_or(SdkError::Closed)?;
        dial.relay = addr;
        let client = match self.take_standby(&to) {
            Some(mut s) => match (&mut s.connecting).await {
                Ok(Ok(c)) if c.connection().close_reason().is_none() => c,
                _ => Client::connect(addr, dial.token.clone(), dial.opts.clone()).await?,
            },
            None => Client::connect(addr, dial.token.clone(), dial.opts.clone()).await?,
        };
        let j = client.join_link(session, None, e2ee).await?;
        self.replace_link(j, &dial, Some(to.clone()));
        if let Ok(mut d) = self.dial.lock() {
            *d = dial;
        }
        if let Some(from) = from.filter(|f| *f != to) {
            let (_, _) = self
                .core
                .step(|e| e.push_event(Event::Migrated { from, to }))?;
        }
        Ok(())
    }

    fn take_standby(&self, node: &NodeId) -> Option<Standby> {
        let mut g = self.standby.lock().ok()?;
        match g.take() {
            Some(s) if s.node == *node => Some(s),
            _ => None,
        }
    }

    /// The current link is suspect: open a connection to the node a move would go to
    /// (no join: the relay there sees a handshake only), unless one is open already.
    fn prepare_standby(&self) {
        let Ok(mut g) = self.standby.lock() else {
            return;
        };
        if g.as_ref().is_some_and(|s| !s.connecting.is_finished()) {
            return;
        }
        let Ok(dial) = self.dial.lock().map(|d| d.clone()) else {
            return;
        };
        let Some((node, addr)) = self
            .fallback_nodes()
            .into_iter()
            .find_map(|n| Some((n.clone(), dial.opts.node_addr(&n)?)))
        else {
            return;
        };
        if self.link().node.as_ref() == Some(&node) {
            return;
        }
        tracing::debug!(%node, "relay link suspect; connecting to the next node");
        let connecting = tokio::spawn(Client::connect(addr, dial.token, dial.opts));
        *g = Some(Standby { node, connecting });
    }

    fn drop_standby(&self) {
        if let Ok(mut g) = self.standby.lock() {
            g.take();
        }
    }

    fn before(&self) -> Option<Before> {
        let link = self.link();
        let node = link.node.clone()?;
        let addr = self.dial.lock().ok()?.opts.node_addr(&node)?;
        Some(Before {
            node,
            addr,
            resume: link.joined.resume.clone(),
        })
    }

    /// After a move for silence: if the peer has not come to the new node within
    /// `peer_wait` and the old node takes this device's place back (its resume secret),
    /// the outage was this endpoint's alone: the call goes back there. A dead old node does
    /// not answer within the silence threshold and the call stays.
    async fn back_if_alone(&self, before: Before) {
        let dial = match self.dial.lock() {
            Ok(d) => d.clone(),
            Err(_) => return,
        };
        let cfg = dial.opts.dead_relay;
        tokio::time::sleep(cfg.peer_wait).await;
        let link = self.link();
        if link
            .shared
            .peer_here
            .load(std::sync::atomic::Ordering::Relaxed)
            || link.shared.conn.close_reason().is_some()
        {
            return;
        }
        let _one = self.reattach.lock().await;
        let e2ee = self.is_e2ee_session();
        let Some(session) = self.session() else {
            return;
        };
        let attempt = async {
            let client =
                Client::connect(before.addr, dial.token.clone(), dial.opts.clone()).await?;
            client
                .join_link(session, Some(before.resume.clone()), e2ee)
                .await
        };
        // The call carries on where it is meanwhile: no hurry, a whole join may take.
        let j = match tokio::time::timeout(dial.opts.join_timeout, attempt).await {
            Ok(Ok(j)) => j,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the old node did not take the call back");
                return;
            }
            Err(_) => {
                tracing::debug!("the old node did not answer; staying");
                return;
            }
        };
        if !(j.joined.resumed && j.joined.peer_present) {
            tracing::debug!(
                resumed = j.joined.resumed,
                peer = j.joined.peer_present,
                "the peer is not on the old node either; staying"
            );
            // The peer is not there either: it is on its way along the same list. Give the
            // place back and stay.
            let conn = j.conn.clone();
            let (mut send, _, _) = j.streams;
            if let Ok(frame) = duet_proto::control::encode(&duet_proto::ClientMessage::Leave) {
                let _ = send.write_all(&frame).await;
                let _ = send.finish();
            }
            conn.close(0u32.into(), b"not needed");
            return;
        }
        tracing::info!(node = %before.node, "the peer never left the old node; going back");
        let from = link.node.clone();
        let mut d = dial;
        d.relay = before.addr;
        self.replace_link(j, &d, Some(before.node.clone()));
        if let Ok(mut g) = self.dial.lock() {
            *g = d;
        }
        if let Some(from) = from.filter(|f| *f != before.node) {
            let _ = self.core.step(|e| {
                e.push_event(Event::Migrated {
                    from,
                    to: before.node,
                })
            });
        }
    }

    pub(super) fn fallback_nodes(&self) -> Vec<NodeId> {
        let Ok(dial) = self.dial.lock().map(|d| d.clone()) else {
            return Vec::new();
        };
        let Ok(claims) = crate::secure::token_claims(&dial.token) else {
            return Vec::new();
        };
        let cur = self.link().node.clone();
        match cur
            .as_ref()
            .and_then(|c| claims.nodes.iter().position(|n| n == c))
        {
            Some(i) => {
                let mut v = claims.nodes[i + 1..].to_vec();
                v.push(claims.nodes[i].clone());
                v
            }
            None => claims.nodes,
        }
    }

    fn replace_link(&self, j: Joining, dial: &Dial, node: Option<NodeId>) {
        let link = Arc::new(attach(self.core.clone(), j, &dial.opts, node));
        let old = match self.link.lock() {
            Ok(mut l) => std::mem::replace(&mut *l, link.clone()),
            Err(p) => std::mem::replace(&mut *p.into_inner(), link.clone()),
        };
        drop(old);
        if let Ok(((), out)) = self.core.step(|e| e.begin_confirmation(Instant::now())) {
            let shared = link.shared.clone();
            tokio::spawn(async move {
                shared.deliver(out).await;
            });
        }
    }

    /// After a loss or a drain notice: the same node first (unless it drains), then the
    /// token's next nodes. Both endpoints walk the same list, so they meet again.
    /// `true` once the call is on a link again.
    async fn recover(&self, cause: Cause) -> bool {
        // A reset is a node that restarted: it answers, so resume there. A silence (or an
        // idle timeout, which is a longer silence) is a node presumed dead: asking it again
        // would only add its timeout to the gap.
        if let Cause::Lost { reset: true } = cause {
            tracing::debug!("connection reset; resuming on the same node");
            match self.reconnect(false).await {
                Ok(()) => return true,
                Err(e) => tracing::debug!(error = %e, "the same node did not take the call back"),
            }
        }
        let silent = matches!(cause, Cause::Silent | Cause::Lost { reset: false });
        let before = if silent { self.before() } else { None };
        let opts = match self.dial.lock() {
            Ok(d) => d.opts.clone(),
            Err(_) => return false,
        };
        let current = self.link().node.clone();
        for node in self.fallback_nodes() {
            let Some(addr) = opts.node_addr(&node) else {
                continue;
            };
            if current.as_ref() == Some(&node) {
                // The list came round to the silent node (the others did not take the
                // call): take the place back there, the way a reset would.
                match self.reconnect(false).await {
                    Ok(()) => return true,
                    Err(e) => tracing::debug!(%node, error = %e, "node did not take the call"),
                }
                continue;
            }
            match self.migrate(node.clone(), addr).await {
                Ok(()) => {
                    if let Some(b) = before.filter(|b| b.node != node) {
                        self.back_if_alone(b).await;
                    }
                    return true;
                }
                Err(e) => tracing::debug!(%node, error = %e, "node did not take the call"),
            }
        }
        false
    }
}

/// Recovery rounds before the call is given up (each walks the whole node list).
const RECOVERY_ROUNDS: u32 = 5;

/// Watches the current link; on a loss (or reset, or drain notice) recovers the call.
/// Holds the call only weakly: it ends when the call is dropped.
pub(super) async fn recover_task(att: std::sync::Weak<Attach>) {
    let mut failed = 0u32;
    loop {
        let Some(shared) = att.upgrade().map(|a| a.link().shared.clone()) else {
            return;
        };
        let mut health = shared.health.subscribe();
        let cause = loop {
            tokio::select! {
                e = shared.conn.closed() => break Cause::Lost {
                    reset: matches!(e, quinn::ConnectionError::Reset),
                },
                _ = shared.draining.notified() => break Cause::Draining,
                changed = health.changed() => {
                    if changed.is_err() {
                        // The link's detector ended with it: the link is being replaced.
                        health = shared.health.subscribe();
                        continue;
                    }
                    let h = *health.borrow_and_update();
                    let Some(a) = att.upgrade() else { return };
                    match h {
                        Health::Dead => break Cause::Silent,
                        Health::Suspect => a.prepare_standby(),
                        Health::Alive => a.drop_standby(),
                    }
                }
            }
        };
        let Some(a) = att.upgrade() else { return };
        if a.leaving.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if !Arc::ptr_eq(&a.link().shared, &shared) {
            // Already replaced by a resume the app asked for.
            continue;
        }
        drop(shared);
        if a.recover(cause).await {
            failed = 0;
            continue;
        }
        failed += 1;
        if failed >= RECOVERY_ROUNDS {
            let _ = a.core.step(|e| {
                e.push_event(Event::Disconnected(
                    "no node of the token's list took the call".into(),
                ))
            });
            return;
        }
        drop(a);
        // Back off between rounds (1, 2, 4, 8 s): every node may be restarting.
        tokio::time::sleep(std::time::Duration::from_secs(1 << (failed - 1))).await;
    }
}

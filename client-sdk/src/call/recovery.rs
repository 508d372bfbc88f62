//! Which link carries a call, and how it gets another: resume on the same node, a move to
//! another node of the token's list, and the task that does either by itself when the
//! connection is lost, reset or the relay drains (with `ConnectOptions::nodes`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use duet_proto::{NodeId, SessionId};

use super::link::{attach, Link};
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
}

/// Why the recovery task woke.
pub(super) enum Cause {
    Lost { reset: bool },
    Draining,
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
        let client = Client::connect(addr, dial.token.clone(), dial.opts.clone()).await?;
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
        if let Cause::Lost { reset } = cause {
            tracing::debug!(reset, "connection lost; recovering");
            match self.reconnect(false).await {
                Ok(()) => return true,
                Err(e) => tracing::debug!(error = %e, "the same node did not take the call back"),
            }
        }
        let opts = match self.dial.lock() {
            Ok(d) => d.opts.clone(),
            Err(_) => return false,
        };
        for node in self.fallback_nodes() {
            let Some(addr) = opts.node_addr(&node) else {
                continue;
            };
            match self.migrate(node.clone(), addr).await {
                Ok(()) => return true,
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
        let cause = tokio::select! {
            e = shared.conn.closed() => Cause::Lost {
                reset: matches!(e, quinn::ConnectionError::Reset),
            },
            _ = shared.draining.notified() => Cause::Draining,
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

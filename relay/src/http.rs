//! Serving an HTTP router (the ops endpoints, the admin API) within bounds, so no number of
//! slow or idle clients can starve `/healthz` or take the process's file descriptors.
//!
//! Owns the accept loop and the per-connection bounds: at most `http.max_connections`
//! connections per listener (a new one past the cap replaces the oldest connection that is
//! not in a request: an idle keep-alive or a client still sending its head, so a health
//! check always gets in), the request head within `http.header_timeout_ms` (hyper's header
//! read timeout), each request (body and answer) within `http.request_timeout_ms`, bodies
//! up to `http.max_body_bytes`. [`serve_on_thread`] runs the same loop on a thread and a
//! one-thread runtime of its own, for a listener that must answer however busy the process's
//! runtime is (the relay's ops listener). It does not own the routes (`ops`, the admin API).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower_service::Service;

use crate::config::HttpConfig;

/// One open connection, as the cap sees it.
struct Open {
    /// Requests in progress on it.
    busy: Arc<AtomicUsize>,
    /// Told when the connection must go.
    evict: Arc<Notify>,
}

/// The open connections of one listener, oldest first.
#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Open>,
}

impl Table {
    /// Room for one more: at the cap, the oldest connection not in a request is evicted.
    /// False when every connection is in a request.
    fn make_room(&mut self, cap: usize) -> bool {
        if self.open.len() < cap {
            return true;
        }
        let idle = self
            .open
            .iter()
            .find(|(_, o)| o.busy.load(Ordering::Relaxed) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(o) => {
                o.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listener served by [`serve_on_thread`]; dropping it stops the listener.
#[derive(Debug)]
pub struct ServeThread {
    stop: watch::Sender<bool>,
}

impl Drop for ServeThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// [`serve`] on a thread of its own (named `duet-{what}`) with a one-thread runtime, so its
/// answers do not queue behind the tasks of the caller's runtime. It stops when `stop` turns
/// true or the returned [`ServeThread`] is dropped, whichever is first.
pub fn serve_on_thread(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    limits: HttpConfig,
    stop: watch::Receiver<bool>,
) -> std::io::Result<ServeThread> {
    // The listener leaves the caller's reactor: readiness must not need the caller's workers.
    let listener = listener.into_std()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (own, own_rx) = watch::channel(false);
    std::thread::Builder::new()
        .name(format!("duet-{what}"))
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(listener = what, error = %e, "HTTP listener lost");
                        return;
                    }
                };
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    let (mut a, mut b) = (stop, own_rx);
                    // A dropped sender stops the listener too.
                    tokio::select! {
                        _ = a.wait_for(|v| *v) => {}
                        _ = b.wait_for(|v| *v) => {}
                    }
                    let _ = tx.send(true);
                });
                serve(what, listener, router, limits, rx).await;
            });
        })?;
    Ok(ServeThread { stop: own })
}

/// Serves `router` on `listener` within `limits` until `stop` turns true. `what` names the
/// listener in logs.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    limits: HttpConfig,
    mut stop: watch::Receiver<bool>,
) {
    let router = router.layer(DefaultBodyLimit::max(limits.max_body_bytes as usize));
    let table = Arc::new(Mutex::new(Table::default()));
    let cap = limits.max_connections as usize;
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept: wait a moment
                // instead of spinning.
                tracing::warn!(listener = what, error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = Arc::new(Notify::new());
        let id = {
            let mut t = lock(&table);
            if !t.make_room(cap) {
                continue; // every connection is in a request: this one is closed
            }
            let id = t.next;
            t.next += 1;
            t.open.insert(
                id,
                Open {
                    busy: busy.clone(),
                    evict: evict.clone(),
                },
            );
            id
        };
        let (table, router, timeout) = (table.clone(), router.clone(), limits.request_timeout());
        let header_timeout = limits.header_timeout();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                let busy = busy.clone();
                busy.fetch_add(1, Ordering::Relaxed);
                async move {
                    let answer = tokio::time::timeout(timeout, router.call(req.map(Body::new)));
                    let r = match answer.await {
                        Ok(Ok(r)) => r,
                        Ok(Err(never)) => match never {},
                        Err(_) => timed_out(),
                    };
                    busy.fetch_sub(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(r)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(16 * 1024);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = evict.notified() => {}
            }
            lock(&table).open.remove(&id);
        });
    }
}

fn timed_out() -> Response<Body> {
    let mut r = Response::new(Body::from("{\"error\":\"request_timeout\"}\n"));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_goes() {
        let mut t = Table::default();
        let add = |t: &mut Table, busy: usize| {
            let o = Open {
                busy: Arc::new(AtomicUsize::new(busy)),
                evict: Arc::new(Notify::new()),
            };
            let id = t.next;
            t.next += 1;
            t.open.insert(id, o);
        };
        add(&mut t, 1);
        add(&mut t, 0);
        add(&mut t, 0);
        assert!(t.make_room(3));
        assert_eq!(
            t.open.keys().copied().collect::<Vec<_>>(),
            [0, 2],
            "oldest idle went"
        );
        assert!(t.make_room(3), "under the cap");
        let mut full = Table::default();
        add(&mut full, 1);
        assert!(!full.make_room(1), "every connection in a request");
    }
}

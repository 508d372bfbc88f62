//! The ops HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! Owns the HTTP routes and what "healthy" and "ready" mean: healthy while the process
//! serves, ready while it takes new joins (not draining). It does not own the metrics
//! themselves (`metrics`) nor the drain (`session`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::quic::driver::Driver;

#[derive(Clone)]
pub(crate) struct OpsState {
    pub driver: Arc<Driver>,
    pub endpoint: quinn::Endpoint,
}

pub(crate) fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    let m = &s.driver.metrics;
    let st = s.endpoint.stats();
    m.quic_accepted_handshakes
        .set(st.accepted_handshakes as f64);
    m.quic_refused_handshakes.set(st.refused_handshakes as f64);
    m.quic_ignored_handshakes.set(st.ignored_handshakes as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.driver.render_metrics(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<OpsState>) -> (StatusCode, &'static str) {
    if s.driver.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

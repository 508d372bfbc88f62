//! The ops HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`, and the
//! operator's drain control: `POST /admin/drain`, `POST /admin/undrain`, `GET
//! /admin/status` (bearer credential from `ops_token_file`; absent without it).
//!
//! Owns the HTTP routes and what "healthy" and "ready" mean: healthy while the process
//! serves (process-local: never an outside store), ready while it takes new joins (not
//! draining). It does not own the metrics themselves (`metrics`), the drain (`session`),
//! nor the listener's bounds (`http`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::quic::driver::Driver;

#[derive(Clone)]
pub(crate) struct OpsState {
    pub driver: Arc<Driver>,
    pub endpoint: quinn::Endpoint,
    /// The drain endpoints' bearer credential; `None`: no drain endpoints.
    pub token: Option<Arc<str>>,
}

pub(crate) fn router(state: OpsState) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.token.is_some() {
        r = r
            .route("/admin/drain", post(drain))
            .route("/admin/undrain", post(undrain))
            .route("/admin/status", get(status));
    }
    r.with_state(state)
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

/// `POST /admin/drain` body; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainRequest {
    /// Live sessions end this long after the drain starts [default: `drain_deadline_ms`].
    pub deadline_ms: Option<u64>,
    /// Once no more than this many sessions remain, they are ended at once [default: 0].
    pub min_sessions: usize,
}

/// What the drain endpoints answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub draining: bool,
    /// False when the request changed nothing (already draining / already serving).
    pub changed: bool,
    pub sessions: usize,
    pub endpoints: usize,
    pub deadline_left_ms: Option<u64>,
    pub min_sessions: Option<usize>,
}

/// Longest drain deadline an operator may ask for (a week).
const MAX_DRAIN_DEADLINE_MS: u64 = 7 * 86_400_000;

fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code }))).into_response()
}

/// `None` when the request carries the credential, else the 401 to answer.
fn unauthorized(s: &OpsState, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = s
        .token
        .as_deref()
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())));
    (!ok).then(|| error(StatusCode::UNAUTHORIZED, "unauthorized"))
}

fn report(s: &OpsState, changed: bool) -> Json<DrainReport> {
    let st = s.driver.drain_status();
    Json(DrainReport {
        draining: st.draining,
        changed,
        sessions: st.sessions,
        endpoints: s.driver.endpoint_count(),
        deadline_left_ms: st.deadline_left.map(|d| d.as_millis() as u64),
        min_sessions: st.min_sessions,
    })
}

async fn drain(State(s): State<OpsState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(e) = unauthorized(&s, &headers) {
        return e;
    }
    let req: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request"),
        }
    };
    let deadline_ms = req.deadline_ms.unwrap_or(s.driver.cfg.drain_deadline_ms);
    if deadline_ms > MAX_DRAIN_DEADLINE_MS {
        return error(StatusCode::BAD_REQUEST, "deadline_too_long");
    }
    let changed = s
        .driver
        .drain_with(Duration::from_millis(deadline_ms), req.min_sessions);
    report(&s, changed).into_response()
}

async fn undrain(State(s): State<OpsState>, headers: HeaderMap) -> Response {
    if let Some(e) = unauthorized(&s, &headers) {
        return e;
    }
    let changed = s.driver.undrain();
    report(&s, changed).into_response()
}

async fn status(State(s): State<OpsState>, headers: HeaderMap) -> Response {
    if let Some(e) = unauthorized(&s, &headers) {
        return e;
    }
    report(&s, false).into_response()
}

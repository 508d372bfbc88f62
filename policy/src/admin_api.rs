//! The admin HTTP API: the same operations as the `policy`/`user` commands, as JSON over
//! HTTP, for an admin portal or a script. Endpoints and curl examples: `README-admin.md`.
//!
//! Owns: routes, the admin credential check, JSON bodies in and out, and the mapping of
//! every `PolicyError` to a status code and a stable error code. Does not own the rules
//! (`model`), durability or concurrency (`store`: the API and the commands may change the
//! same store at once), nor where the router is served (the relay binds it, on a loopback
//! or otherwise private address: the credential is a bearer token, so put TLS in front of
//! it before exposing it beyond the host).
//!
//! Authentication: `Authorization: Bearer <admin token>`, compared in constant time; any
//! other request gets 401 with a typed body. An empty admin token locks the API entirely
//! rather than accepting an empty credential. Changes are audited with actor
//! `api:<X-Duet-Actor header>` (default `api:admin`) so a portal can name the person.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::model::{user_id, CallingE2ee, Change, GroupName, ModelError, PolicyName};
use crate::file_store::{PolicyStore, StoreError};
use crate::PolicyError;

const ACTOR_HEADER: &str = "x-duet-actor";

struct AppState {
    store: PolicyStore,
    admin_token: String,
}

type Shared = Arc<AppState>;

/// The admin API router. Serve it with `axum::serve` on a listener of your choice.
pub fn router(store: PolicyStore, admin_token: String) -> Router {
    let state: Shared = Arc::new(AppState { store, admin_token });
    Router::new()
        .route("/v1/policies", get(list_policies))
        .route(
            "/v1/policies/{name}",
            get(show_policy).put(set_policy).delete(remove_policy),
        )
        .route("/v1/users/{user}", get(show_user))
        .route("/v1/users/{user}/effective", get(effective))
        .route(
            "/v1/users/{user}/policy",
            axum::routing::put(grant_user).delete(ungrant_user),
        )
        .route("/v1/users/{user}/e2ee", axum::routing::put(set_e2ee))
        .route(
            "/v1/users/{user}/compliance-recording",
            axum::routing::put(set_compliance),
        )
        .route("/v1/users/{user}/groups", axum::routing::put(set_groups))
        .route(
            "/v1/groups/{group}/policy",
            axum::routing::put(grant_group).delete(ungrant_group),
        )
        .route("/v1/audit", get(audit))
        .fallback(not_found)
        // Outermost, so unknown paths and wrong methods are also behind the credential
        // (no route discovery without it).
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// An API error: status, stable code, message. The body is
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        let status = match &e {
            PolicyError::Model(m) => match m {
                ModelError::UnknownPolicy(_) => StatusCode::NOT_FOUND,
                ModelError::PolicyInUse { .. }
                | ModelError::RankTaken { .. }
                | ModelError::GlobalIsPermanent => StatusCode::CONFLICT,
                ModelError::NameEmpty { .. }
                | ModelError::NameHasWhitespace { .. }
                | ModelError::NameBadChar { .. }
                | ModelError::NameTooLong { .. }
                | ModelError::NameReserved(_)
                | ModelError::InvalidUser(_)
                | ModelError::RankZero
                | ModelError::RankRequired => StatusCode::BAD_REQUEST,
            },
            PolicyError::InvalidId { .. } | PolicyError::BadTtl(_) => StatusCode::BAD_REQUEST,
            PolicyError::Store(StoreError::Corrupt { .. })
            | PolicyError::Store(_)
            | PolicyError::Token(_)
            | PolicyError::Clock
            | PolicyError::Output(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "admin API request failed");
        }
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        PolicyError::from(e).into()
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut resp = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"duet-admin\""),
            );
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

async fn authenticate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let expected = state.admin_token.as_bytes();
    // Constant time over the bytes, so timing does not reveal how much of a guess was
    // right (only the length can leak, which a random token makes worthless).
    let ok = !expected.is_empty() && bool::from(presented.ct_eq(expected));
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin credential: send Authorization: Bearer <admin token>",
        )
        .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Runs store I/O (file locks, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("store task failed: {e}"),
        )),
    }
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad JSON body: {e}"),
        )
    })
}

fn actor(headers: &HeaderMap) -> String {
    match headers.get(ACTOR_HEADER).and_then(|v| v.to_str().ok()) {
        Some(a) if !a.trim().is_empty() => format!("api:{}", a.trim()),
        _ => "api:admin".into(),
    }
}

/// Applies a change and answers `{"changed", "revision", "result"}`, `result` being the
/// touched part of the state afterwards (as in the audit log's `after`).
async fn apply(state: Shared, headers: &HeaderMap, change: Change) -> ApiResult {
    let actor = actor(headers);
    let (applied, result) = blocking(move || {
        let applied = state.store.apply(&actor, &change)?;
        let result = applied.state.subject(&change);
        Ok((applied, result))
    })
    .await?;
    Ok(Json(json!({
        "changed": applied.changed,
        "revision": applied.state.revision,
        "result": result,
    }))
    .into_response())
}

async fn list_policies(State(state): State<Shared>) -> ApiResult {
    let views = blocking(move || Ok(state.store.load()?.list())).await?;
    Ok(Json(json!({ "policies": views })).into_response())
}

async fn show_policy(
    State(state): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let name = PolicyName::new(name?.0)?;
    let view = blocking(move || Ok(state.store.load()?.view(&name)?)).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicyBody {
    calling_e2ee: CallingE2ee,
}

async fn set_policy(
    State(state): State<Shared>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let name = PolicyName::new(name?.0)?;
    let b: SetPolicyBody = parse_body(&body)?;
    apply(
        state,
        &headers,
        Change::SetPolicy {
            name,
            calling_e2ee: b.calling_e2ee,
        },
    )
    .await
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    unassign: bool,
}

async fn remove_policy(
    State(state): State<Shared>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let name = PolicyName::new(name?.0)?;
    let unassign = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?
        .0
        .unassign;
    apply(state, &headers, Change::RemovePolicy { name, unassign }).await
}

async fn show_user(
    State(state): State<Shared>,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let (rec, eff) = blocking(move || {
        let s = state.store.load()?;
        Ok((s.user(&user), s.effective(&user)))
    })
    .await?;
    Ok(Json(json!({ "user": eff.user, "record": rec, "effective": eff })).into_response())
}

async fn effective(
    State(state): State<Shared>,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let eff = blocking(move || Ok(state.store.load()?.effective(&user))).await?;
    Ok(Json(eff).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantUserBody {
    /// A policy name, or null (or "Global") to unassign.
    policy: Option<String>,
}

async fn grant_user(
    State(state): State<Shared>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: GrantUserBody = parse_body(&body)?;
    let policy = b.policy.map(PolicyName::new).transpose()?;
    apply(state, &headers, Change::GrantUser { user, policy }).await
}

async fn ungrant_user(
    State(state): State<Shared>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    apply(state, &headers, Change::GrantUser { user, policy: None }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantGroupBody {
    policy: Option<String>,
    rank: Option<u32>,
}

async fn grant_group(
    State(state): State<Shared>,
    headers: HeaderMap,
    group: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let group = GroupName::new(group?.0)?;
    let b: GrantGroupBody = parse_body(&body)?;
    let policy = b.policy.map(PolicyName::new).transpose()?;
    apply(
        state,
        &headers,
        Change::GrantGroup {
            group,
            policy,
            rank: b.rank,
        },
    )
    .await
}

async fn ungrant_group(
    State(state): State<Shared>,
    headers: HeaderMap,
    group: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let group = GroupName::new(group?.0)?;
    apply(
        state,
        &headers,
        Change::GrantGroup {
            group,
            policy: None,
            rank: None,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    on: bool,
}

async fn set_e2ee(
    State(state): State<Shared>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: SwitchBody = parse_body(&body)?;
    apply(state, &headers, Change::SetUserE2ee { user, on: b.on }).await
}

async fn set_compliance(
    State(state): State<Shared>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: SwitchBody = parse_body(&body)?;
    apply(
        state,
        &headers,
        Change::SetComplianceRecording { user, on: b.on },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsBody {
    groups: Vec<String>,
}

async fn set_groups(
    State(state): State<Shared>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: GroupsBody = parse_body(&body)?;
    let groups = b
        .groups
        .into_iter()
        .map(GroupName::new)
        .collect::<Result<BTreeSet<_>, _>>()?;
    apply(state, &headers, Change::SetUserGroups { user, groups }).await
}

#[derive(Deserialize)]
struct AuditQuery {
    /// Newest N records (default 100).
    limit: Option<usize>,
}

async fn audit(
    State(state): State<Shared>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let limit = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?
        .0
        .limit
        .unwrap_or(100);
    let mut records = blocking(move || Ok(state.store.audit()?)).await?;
    let skip = records.len().saturating_sub(limit);
    let records: Vec<_> = records.drain(skip..).collect();
    Ok(Json(json!({ "records": records })).into_response())
}

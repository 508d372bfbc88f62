//! The admin HTTP API (feature `admin-api`): the same operations as the `policy`/`user`
//! commands as JSON over HTTP, for an admin portal or a script, and the token endpoint for
//! app backends in any language. Endpoints and curl examples: docs/administering-e2ee.md.
//!
//! Owns: routes, credentials and roles, JSON bodies in and out, and the mapping of every
//! `PolicyError` to a status code and a stable error code; every error, including an
//! unknown path (404), a wrong method (405) and a too large body (413), is
//! `{"error": {"code", "message"}}`. Does not own the rules (`engine`), durability or
//! concurrency (`store`: the API and the commands may change the same store at once), nor
//! TLS (serve it on a private address or behind a TLS proxy: credentials are bearer tokens).
//!
//! Authentication: `Authorization: Bearer <secret>`. A secret is a named credential in the
//! store (`policy credential add --name N --role R`, only its SHA-256 is kept) or the
//! optional admin token file (the credential `admin`, role admin, compared in constant
//! time). Roles: `read-only` (every GET), `admin` (everything), `issuer` (only
//! `POST /v1/tokens`). Changes are audited with the credential's name and the actor
//! `api:<X-Duet-Actor header>` (default `api:<credential>`) so a portal can name the person.
//!
//! Size: ~750 lines: one handler per route of one API, with its error format; splitting
//! the routes would scatter the role checks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use duet_proto::{DeviceId, SessionId, SigningKey};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::issue::{CallDecision, Issuer};
use crate::model::{user_id, CallingE2ee, Change, GroupName, ModelError, PolicyName};
use crate::placement::NodeSet;
use crate::store::{secret_sha256, Actor, AuditQuery, Credential, Role, Store, StoreError};
use crate::PolicyError;

const ACTOR_HEADER: &str = "x-duet-actor";

/// Largest request body: a batch of 100,000 user ids fits with room to spare.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the API serves.
pub struct ApiConfig {
    pub store: Arc<dyn Store>,
    /// One more credential, named `admin` with role admin (the admin token file).
    pub admin_token: Option<String>,
    /// Enables `POST /v1/tokens`.
    pub signing_key: Option<Arc<SigningKey>>,
    pub nodes: Arc<NodeSet>,
    /// Longest lifetime `POST /v1/tokens` mints.
    pub max_ttl: Duration,
}

type Shared = Arc<ApiConfig>;

/// The admin API router over `store` with one admin credential (`admin_token`; an empty
/// one accepts nobody unless the store holds named credentials) and no token endpoint.
pub fn router(store: Arc<dyn Store>, admin_token: String) -> Router {
    router_with(ApiConfig {
        store,
        admin_token: Some(admin_token).filter(|t| !t.is_empty()),
        signing_key: None,
        nodes: Arc::new(NodeSet::none()),
        max_ttl: Duration::from_secs(3600),
    })
}

/// The router for a full configuration. Serve it with `axum::serve`.
pub fn router_with(cfg: ApiConfig) -> Router {
    let state: Shared = Arc::new(cfg);
    Router::new()
        .route("/v1/policies", get(list_policies))
        .route(
            "/v1/policies/{name}",
            get(show_policy).put(set_policy).delete(remove_policy),
        )
        .route("/v1/policies/{name}/users", put(grant_users))
        .route("/v1/users/{user}", get(show_user))
        .route("/v1/users/{user}/effective", get(effective))
        .route(
            "/v1/users/{user}/policy",
            put(grant_user).delete(ungrant_user),
        )
        .route("/v1/users/{user}/e2ee", put(set_e2ee))
        .route("/v1/users/{user}/compliance-recording", put(set_compliance))
        .route("/v1/users/{user}/groups", put(set_groups))
        .route(
            "/v1/groups/{group}/policy",
            put(grant_group).delete(ungrant_group),
        )
        .route("/v1/groups/{group}/members", put(set_members))
        .route("/v1/audit", get(audit))
        .route("/v1/tokens", post(mint))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
                ModelError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            },
            PolicyError::InvalidId { .. } | PolicyError::BadTtl(_) | PolicyError::Tenant(_) => {
                StatusCode::BAD_REQUEST
            }
            PolicyError::Store(StoreError::ReadOnly { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            PolicyError::Store(_)
            | PolicyError::Token(_)
            | PolicyError::Placement(_)
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

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                "payload_too_large",
                format!("request body larger than {MAX_BODY} bytes"),
            )
        } else {
            Self::new(status, "bad_request", e.body_text())
        }
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

/// Who is calling, as the authentication layer found it.
#[derive(Debug, Clone)]
struct Caller(Credential);

fn allowed(role: Role, method: &axum::http::Method, path: &str) -> bool {
    let token = path == "/v1/tokens";
    match role {
        Role::Admin => true,
        Role::Issuer => token,
        Role::ReadOnly => {
            !token && (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        }
    }
}

async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong credential: send Authorization: Bearer <secret>",
        )
        .into_response()
    };
    if presented.is_empty() {
        return unauthorized();
    }
    // Constant time over the bytes, so timing does not reveal how much of a guess was
    // right. Named credentials are looked up by the SHA-256 of the secret.
    let file_match = state
        .admin_token
        .as_deref()
        .is_some_and(|t| bool::from(presented.as_bytes().ct_eq(t.as_bytes())));
    let cred = if file_match {
        Some(Credential {
            name: "admin".into(),
            role: Role::Admin,
            created_ms: 0,
        })
    } else {
        let store = state.store.clone();
        let hash = secret_sha256(&presented);
        match tokio::task::spawn_blocking(move || store.credential_by_secret(&hash)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return ApiError::from(e).into_response(),
            Err(_) => None,
        }
    };
    let Some(cred) = cred else {
        return unauthorized();
    };
    if !allowed(cred.role, req.method(), req.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "credential {:?} has role {}, which may not {} {}",
                cred.name,
                cred.role.as_str(),
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller(cred));
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// Runs store I/O (SQLite, PostgreSQL) off the async workers.
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

fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad JSON body: {e}"),
        )
    })
}

fn actor(headers: &HeaderMap, caller: &Caller) -> Actor {
    let who = match headers.get(ACTOR_HEADER).and_then(|v| v.to_str().ok()) {
        Some(a) if !a.trim().is_empty() => format!("api:{}", a.trim()),
        _ => format!("api:{}", caller.0.name),
    };
    Actor::new(who, &caller.0.name)
}

/// What every changing handler extracts first: the store and the audit actor (from the
/// authenticated caller and its `X-Duet-Actor` header).
struct Writer {
    state: Shared,
    actor: Actor,
}

impl FromRequestParts<Shared> for Writer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        let Extension(caller) = Extension::<Caller>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Writer {
            state: state.clone(),
            actor: actor(&parts.headers, &caller),
        })
    }
}

impl Writer {
    /// Applies a change and answers `{"changed", "revision", "result"}`, `result` being the
    /// touched part of the state afterwards (as in the audit log's `after`).
    async fn apply(self, change: Change) -> ApiResult {
        let Writer { state, actor } = self;
        let applied = blocking(move || state.store.apply(&actor, &change)).await?;
        Ok(Json(json!({
            "changed": applied.changed,
            "revision": applied.revision,
            "result": applied.after,
        }))
        .into_response())
    }
}

async fn list_policies(State(state): State<Shared>) -> ApiResult {
    let views = blocking(move || state.store.list()).await?;
    Ok(Json(json!({ "policies": views })).into_response())
}

async fn show_policy(
    State(state): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let name = PolicyName::new(name?.0)?;
    let view = blocking(move || state.store.view(&name)).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicyBody {
    calling_e2ee: CallingE2ee,
}

async fn set_policy(
    w: Writer,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let name = PolicyName::new(name?.0)?;
    let b: SetPolicyBody = parse_body(body)?;
    w.apply(Change::SetPolicy {
        name,
        calling_e2ee: b.calling_e2ee,
    })
    .await
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    unassign: bool,
}

async fn remove_policy(
    w: Writer,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> ApiResult {
    let name = PolicyName::new(name?.0)?;
    let unassign = query?.0.unassign;
    w.apply(Change::RemovePolicy { name, unassign }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersBody {
    users: Vec<String>,
}

fn parse_users(users: Vec<String>) -> Result<Vec<duet_proto::UserId>, ApiError> {
    users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            user_id(u).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_user",
                    format!("users[{i}]: {e}"),
                )
            })
        })
        .collect()
}

async fn grant_users(
    w: Writer,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let policy = PolicyName::new(name?.0)?;
    let b: UsersBody = parse_body(body)?;
    let users = parse_users(b.users)?;
    w.apply(Change::GrantUsers {
        users,
        policy: Some(policy),
    })
    .await
}

async fn show_user(
    State(state): State<Shared>,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let (rec, eff) =
        blocking(move || Ok((state.store.user(&user)?, state.store.effective(&user)?))).await?;
    Ok(Json(json!({ "user": eff.user, "record": rec, "effective": eff })).into_response())
}

async fn effective(
    State(state): State<Shared>,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let eff = blocking(move || state.store.effective(&user)).await?;
    Ok(Json(eff).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantUserBody {
    /// A policy name, or null (or "Global") to unassign.
    policy: Option<String>,
}

async fn grant_user(
    w: Writer,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: GrantUserBody = parse_body(body)?;
    let policy = b.policy.map(PolicyName::new).transpose()?;
    w.apply(Change::GrantUser { user, policy }).await
}

async fn ungrant_user(w: Writer, user: Result<Path<String>, PathRejection>) -> ApiResult {
    let user = user_id(&user?.0)?;
    w.apply(Change::GrantUser { user, policy: None }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantGroupBody {
    policy: Option<String>,
    rank: Option<u32>,
}

async fn grant_group(
    w: Writer,
    group: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let group = GroupName::new(group?.0)?;
    let b: GrantGroupBody = parse_body(body)?;
    let policy = b.policy.map(PolicyName::new).transpose()?;
    w.apply(Change::GrantGroup {
        group,
        policy,
        rank: b.rank,
    })
    .await
}

async fn ungrant_group(w: Writer, group: Result<Path<String>, PathRejection>) -> ApiResult {
    let group = GroupName::new(group?.0)?;
    w.apply(Change::GrantGroup {
        group,
        policy: None,
        rank: None,
    })
    .await
}

async fn set_members(
    w: Writer,
    group: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let group = GroupName::new(group?.0)?;
    let b: UsersBody = parse_body(body)?;
    let users = parse_users(b.users)?;
    w.apply(Change::SetGroupMembers { group, users }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    on: bool,
}

async fn set_e2ee(
    w: Writer,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: SwitchBody = parse_body(body)?;
    w.apply(Change::SetUserE2ee { user, on: b.on }).await
}

async fn set_compliance(
    w: Writer,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: SwitchBody = parse_body(body)?;
    w.apply(Change::SetComplianceRecording { user, on: b.on })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsBody {
    groups: Vec<String>,
}

async fn set_groups(
    w: Writer,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let user = user_id(&user?.0)?;
    let b: GroupsBody = parse_body(body)?;
    let groups = b
        .groups
        .into_iter()
        .map(GroupName::new)
        .collect::<Result<BTreeSet<_>, _>>()?;
    w.apply(Change::SetUserGroups { user, groups }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Newest N records (default 100).
    limit: Option<usize>,
    user: Option<String>,
    /// Unix ms, or anything `policy audit --since` takes.
    since: Option<String>,
}

async fn audit(
    State(state): State<Shared>,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult {
    let q = query?.0;
    let since_ms = match q.since.as_deref() {
        None => None,
        Some(s) => Some(match s.parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => parse_since(s)?,
        }),
    };
    let query = AuditQuery {
        user: q.user.as_deref().map(user_id).transpose()?,
        since_ms,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    let records = blocking(move || state.store.audit(&query)).await?;
    Ok(Json(json!({ "records": records })).into_response())
}

#[cfg(feature = "cli")]
fn parse_since(s: &str) -> Result<u64, ApiError> {
    crate::cli::parse_since(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

#[cfg(not(feature = "cli"))]
fn parse_since(s: &str) -> Result<u64, ApiError> {
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("since {s:?}: give Unix milliseconds"),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintBody {
    user: String,
    device: String,
    session: String,
    /// The other party: the answer then says what the call will be.
    peer: Option<String>,
    /// Lifetime in seconds [default: 600, at most the server's max_ttl].
    ttl_secs: Option<u64>,
}

fn id_err(field: &'static str) -> impl Fn(duet_proto::IdError) -> ApiError {
    move |e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{field}: {e}"),
        )
    }
}

/// `POST /v1/tokens`: a signed join token for a user's device in a session, the policy's
/// decision and the placement.
async fn mint(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let b: MintBody = parse_body(body)?;
    let Some(key) = state.signing_key.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "tokens_disabled",
            "this server has no signing key (start it with --signing-key)",
        ));
    };
    let user = duet_proto::UserId::new(&b.user).map_err(id_err("user"))?;
    let device = DeviceId::new(&b.device).map_err(id_err("device"))?;
    let session = SessionId::new(&b.session).map_err(id_err("session"))?;
    let peer = b
        .peer
        .as_deref()
        .map(duet_proto::UserId::new)
        .transpose()
        .map_err(id_err("peer"))?;
    let ttl = Duration::from_secs(b.ttl_secs.unwrap_or(600));
    if ttl.is_zero() || ttl > state.max_ttl {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_ttl",
            format!("ttl_secs: between 1 and {}", state.max_ttl.as_secs()),
        ));
    }
    let (minted, peer_eff) = blocking(move || {
        let issuer = Issuer::new(&*state.store, &key, &state.nodes);
        let m = issuer.mint(session, user, device, ttl)?;
        let p = peer.map(|p| state.store.effective(&p)).transpose()?;
        Ok((m, p))
    })
    .await?;
    let decision = peer_eff
        .as_ref()
        .map(|p| CallDecision::between(minted.effective.claim, p.claim));
    Ok(Json(json!({
        "token": minted.token,
        "expires_at": minted.expires_at,
        "decision": {
            "claim": minted.effective.claim,
            "policy": minted.effective.policy,
            "source": minted.effective.source,
            "reason": minted.effective.reason(),
            "peer_claim": peer_eff.as_ref().map(|p| p.claim),
            "call": decision,
        },
        "placement": {
            "primary": minted.nodes.first(),
            "nodes": minted.nodes,
        },
    }))
    .into_response())
}

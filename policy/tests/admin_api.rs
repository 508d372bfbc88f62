//! The admin HTTP API over a real loopback socket: the same model as the commands, the
//! credentials and their roles, typed error bodies with their status codes (404, 405 and
//! 413 too), batch endpoints, and the token endpoint for backends.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use std::sync::Arc;

use duet_policy::store::secret_sha256;
use duet_policy::{router, Actor, AuditQuery, Credential, Role, SqliteStore, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "s3cret-admin-token-for-tests";

struct Api {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

async fn start() -> Result<Api> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("policy.db"))?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = router(store.clone(), TOKEN.to_owned());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Api {
        addr,
        _dir: dir,
        store,
    })
}

/// A minimal HTTP/1.1 client: one request per connection, `Connection: close`.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("X-Duet-Actor: portal-jane\r\n");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8(resp)?;
    let (head, rest) = text.split_once("\r\n\r\n").context("response head")?;
    let status: u16 = head.split(' ').nth(1).context("status")?.parse()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_owned()
    };
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).with_context(|| format!("JSON body: {body}"))?
    };
    Ok((status, json))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").context("chunk size")?;
        let len = usize::from_str_radix(len.trim(), 16)?;
        if len == 0 {
            return Ok(out);
        }
        out.push_str(&rest[..len]);
        s = &rest[len + 2..];
    }
}

impl Api {
    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        http(self.addr, "GET", path, Some(TOKEN), None).await
    }
    async fn put(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        http(self.addr, "PUT", path, Some(TOKEN), Some(body)).await
    }
    async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        http(self.addr, "DELETE", path, Some(TOKEN), None).await
    }
    async fn claim(&self, user: &str) -> Result<String> {
        let (st, v) = self.get(&format!("/v1/users/{user}/effective")).await?;
        assert_eq!(st, 200, "{v}");
        Ok(v["claim"].as_str().context("claim")?.to_owned())
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn the_whole_model_through_the_api() -> Result<()> {
    let api = start().await?;

    // Out of the box.
    let (st, v) = api.get("/v1/policies").await?;
    assert_eq!(st, 200);
    assert_eq!(v["policies"][0]["name"], "Global");
    assert_eq!(v["policies"][0]["calling_e2ee"], "disabled");
    assert_eq!(api.claim("alice").await?, "policy_disabled");

    // Enabling for the whole tenant, then the user's own switch.
    let (st, v) = api
        .put(
            "/v1/policies/Global",
            json!({"calling_e2ee": "disabled-user-override"}),
        )
        .await?;
    assert_eq!((st, &v["changed"]), (200, &json!(true)), "{v}");
    assert_eq!(api.claim("alice").await?, "user_not_enabled");
    let (st, _) = api.put("/v1/users/alice/e2ee", json!({"on": true})).await?;
    assert_eq!(st, 200);
    assert_eq!(api.claim("alice").await?, "allowed");

    // A named policy granted to one user; then unassigned.
    api.put("/v1/policies/Global", json!({"calling_e2ee": "disabled"}))
        .await?;
    api.put(
        "/v1/policies/Pilot",
        json!({"calling_e2ee": "disabled-user-override"}),
    )
    .await?;
    let (st, v) = api
        .put("/v1/users/alice/policy", json!({"policy": "Pilot"}))
        .await?;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["claim"], "allowed");
    assert_eq!(api.claim("bob").await?, "policy_disabled");
    let (st, v) = api.get("/v1/policies/Pilot").await?;
    assert_eq!((st, &v["users"]), (200, &json!(["alice"])));
    let (st, v) = api.delete("/v1/policies/Pilot").await?;
    assert_eq!((st, code(&v)), (409, "policy_in_use"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("alice"));
    let (st, _) = api.delete("/v1/users/alice/policy").await?;
    assert_eq!(st, 200);
    let (_, v) = api.get("/v1/users/alice/effective").await?;
    assert_eq!(v["policy"], "Global");
    assert_eq!(v["source"]["kind"], "global_default");

    // Group ranks.
    api.put("/v1/policies/Closed", json!({"calling_e2ee": "disabled"}))
        .await?;
    let (st, _) = api
        .put(
            "/v1/groups/eng/policy",
            json!({"policy": "Pilot", "rank": 1}),
        )
        .await?;
    assert_eq!(st, 200);
    api.put(
        "/v1/groups/legal/policy",
        json!({"policy": "Closed", "rank": 2}),
    )
    .await?;
    let (st, v) = api
        .put(
            "/v1/groups/hr/policy",
            json!({"policy": "Closed", "rank": 1}),
        )
        .await?;
    assert_eq!((st, code(&v)), (409, "rank_taken"));
    api.put(
        "/v1/users/carol/groups",
        json!({"groups": ["legal", "eng"]}),
    )
    .await?;
    api.put("/v1/users/carol/e2ee", json!({"on": true})).await?;
    let (_, v) = api.get("/v1/users/carol/effective").await?;
    assert_eq!(
        v["source"],
        json!({"kind": "group", "group": "eng", "rank": 1})
    );
    assert_eq!(v["claim"], "allowed");
    api.delete("/v1/groups/eng/policy").await?;
    assert_eq!(api.claim("carol").await?, "policy_disabled");

    // Compliance recording beats everything.
    api.put("/v1/users/carol/policy", json!({"policy": "Pilot"}))
        .await?;
    assert_eq!(api.claim("carol").await?, "allowed");
    api.put("/v1/users/carol/compliance-recording", json!({"on": true}))
        .await?;
    assert_eq!(api.claim("carol").await?, "compliance_recording");
    let (st, v) = api.get("/v1/users/carol").await?;
    assert_eq!(st, 200);
    assert_eq!(v["record"]["compliance_recording"], true);
    assert_eq!(v["effective"]["claim"], "compliance_recording");

    // Remove with unassign.
    let (st, v) = api.delete("/v1/policies/Pilot?unassign=true").await?;
    assert_eq!(st, 200, "{v}");
    let (st, v) = api.get("/v1/policies/Pilot").await?;
    assert_eq!((st, code(&v)), (404, "unknown_policy"));

    // The audit log names the portal's actor.
    let (st, v) = api.get("/v1/audit?limit=2").await?;
    assert_eq!(st, 200);
    let recs = v["records"].as_array().context("records")?;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["operation"]["op"], "remove_policy");
    assert_eq!(recs[0]["actor"], "api:portal-jane");
    assert_eq!(recs[0]["credential"], "admin");
    let all = api.store.audit(&AuditQuery {
        limit: 1000,
        ..Default::default()
    })?;
    assert_eq!(all.len() as u64, api.store.revision()?);
    Ok(())
}

#[tokio::test]
async fn credential_and_error_bodies() -> Result<()> {
    let api = start().await?;
    for auth in [
        None,
        Some("wrong"),
        Some(""),
        Some("s3cret-admin-token-for-test"),
    ] {
        let (st, v) = http(api.addr, "GET", "/v1/policies", auth, None).await?;
        assert_eq!((st, code(&v)), (401, "unauthorized"), "{auth:?}");
    }
    // Unknown endpoints are behind the credential too.
    let (st, _) = http(api.addr, "GET", "/v1/nope", None, None).await?;
    assert_eq!(st, 401);
    let (st, v) = api.get("/v1/nope").await?;
    assert_eq!((st, code(&v)), (404, "not_found"));

    let (st, v) = api
        .put(
            "/v1/policies/My%20Policy",
            json!({"calling_e2ee": "disabled"}),
        )
        .await?;
    assert_eq!((st, code(&v)), (400, "invalid_name"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("single tokens"));
    let (st, v) = api
        .put("/v1/policies/P", json!({"calling_e2ee": "enabled"}))
        .await?;
    assert_eq!((st, code(&v)), (400, "bad_request"));
    let (st, v) = http(api.addr, "PUT", "/v1/policies/P", Some(TOKEN), None).await?;
    assert_eq!((st, code(&v)), (400, "bad_request"), "empty body");
    let (st, v) = api
        .put("/v1/users/alice/policy", json!({"policy": "Nope"}))
        .await?;
    assert_eq!((st, code(&v)), (404, "unknown_policy"));
    let (st, v) = api.delete("/v1/policies/Global").await?;
    assert_eq!((st, code(&v)), (409, "global_is_permanent"));
    let (st, v) = api
        .put("/v1/groups/g/policy", json!({"policy": "Global"}))
        .await?;
    assert_eq!((st, code(&v)), (400, "invalid_rank"));
    let (st, v) = api.get("/v1/users/bad%20user/effective").await?;
    assert_eq!((st, code(&v)), (400, "invalid_user"));
    assert_eq!(
        api.store.revision()?,
        0,
        "no refused request changed anything"
    );

    // A router with an empty admin token accepts nobody.
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = router(
        Arc::new(SqliteStore::open(dir.path().join("p.db"))?),
        String::new(),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (st, _) = http(addr, "GET", "/v1/policies", Some(""), None).await?;
    assert_eq!(st, 401);
    Ok(())
}

async fn serve(cfg: duet_policy::ApiConfig) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = duet_policy::admin_api::router_with(cfg);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

fn add_cred(store: &dyn Store, name: &str, role: Role, secret: &str) -> Result<()> {
    store.put_credential(
        &Actor::new("test", "test"),
        &Credential {
            name: name.into(),
            role,
            created_ms: 0,
        },
        &secret_sha256(secret),
    )?;
    Ok(())
}

/// Named credentials: read-only reads, admin changes, issuer only mints; every change's
/// audit record names the credential. Wrong methods and too large bodies get the JSON
/// error body (they used to be axum's plain-text defaults: issue 16, finding 6).
#[tokio::test]
async fn roles_and_json_errors_for_every_status() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db"))?);
    add_cred(&*store, "auditor", Role::ReadOnly, "ro-secret-0123456789")?;
    add_cred(&*store, "portal", Role::Admin, "admin-secret-0123456789")?;
    add_cred(&*store, "backend", Role::Issuer, "issuer-secret-0123456789")?;
    let addr = serve(duet_policy::ApiConfig {
        store: store.clone(),
        admin_token: None,
        signing_key: Some(Arc::new(duet_proto::SigningKey::ed25519_from_seed(
            "k", &[9u8; 32],
        )?)),
        nodes: Arc::new(duet_policy::NodeSet::from_static(["r0", "r1", "r2", "r3"])?),
        max_ttl: std::time::Duration::from_secs(3600),
    })
    .await?;
    let ro = Some("ro-secret-0123456789");
    let admin = Some("admin-secret-0123456789");
    let issuer = Some("issuer-secret-0123456789");
    let on = Some(json!({"on": true}));

    let (st, _) = http(addr, "GET", "/v1/policies", ro, None).await?;
    assert_eq!(st, 200);
    let (st, v) = http(addr, "PUT", "/v1/users/ann/e2ee", ro, on.clone()).await?;
    assert_eq!((st, code(&v)), (403, "forbidden"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("read-only"),
        "{v}"
    );
    let (st, v) = http(addr, "GET", "/v1/policies", issuer, None).await?;
    assert_eq!((st, code(&v)), (403, "forbidden"));
    let (st, v) = http(addr, "PUT", "/v1/users/ann/e2ee", admin, on.clone()).await?;
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(
        addr,
        "GET",
        "/v1/policies",
        Some("nope-nope-nope-nope"),
        None,
    )
    .await?;
    assert_eq!((st, code(&v)), (401, "unauthorized"));

    let recs = store.audit(&AuditQuery::default())?;
    let change = recs
        .iter()
        .find(|r| r.op == "set_user_e2ee")
        .context("audited")?;
    assert_eq!(change.credential, "portal");

    // 405 and 413 in the JSON error format.
    let (st, v) = http(addr, "POST", "/v1/policies", admin, Some(json!({}))).await?;
    assert_eq!((st, code(&v)), (405, "method_not_allowed"));
    let huge: Vec<String> = (0..1_100_000).map(|i| format!("user-{i:08}")).collect();
    let (st, v) = http(
        addr,
        "PUT",
        "/v1/groups/g/members",
        admin,
        Some(json!({"users": huge})),
    )
    .await?;
    assert_eq!((st, code(&v)), (413, "payload_too_large"));
    Ok(())
}

/// `POST /v1/tokens`: a backend's credential gets a signed token, the decision (with the
/// peer's claim and what the call will be) and the placement (primary + 2 fallbacks).
#[tokio::test]
async fn the_token_endpoint_answers_token_decision_and_placement() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db"))?);
    add_cred(&*store, "backend", Role::Issuer, "issuer-secret-0123456789")?;
    let key = duet_proto::SigningKey::ed25519_from_seed("k", &[9u8; 32])?;
    let ring = duet_proto::TokenKeyring::new(vec![key.verifying_key()]);
    let addr = serve(duet_policy::ApiConfig {
        store: store.clone(),
        admin_token: Some(TOKEN.into()),
        signing_key: Some(Arc::new(key)),
        nodes: Arc::new(duet_policy::NodeSet::from_static(["r0", "r1", "r2", "r3"])?),
        max_ttl: std::time::Duration::from_secs(3600),
    })
    .await?;
    let issuer = Some("issuer-secret-0123456789");
    http(
        addr,
        "PUT",
        "/v1/policies/Secure",
        Some(TOKEN),
        Some(json!({"calling_e2ee": "required"})),
    )
    .await?;
    let (st, v) = http(
        addr,
        "PUT",
        "/v1/policies/Secure/users",
        Some(TOKEN),
        Some(json!({"users": ["rita", "sam"]})),
    )
    .await?;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["changed"], 2);

    let body = json!({"user": "rita", "device": "phone", "session": "call-1", "peer": "sam", "ttl_secs": 120});
    let (st, v) = http(addr, "POST", "/v1/tokens", issuer, Some(body)).await?;
    assert_eq!(st, 200, "{v}");
    let claims = ring.verify(
        v["token"].as_str().context("token")?,
        &duet_proto::VerifyOptions::at(duet_proto::clock::unix_now()),
    )?;
    assert_eq!(claims.e2ee, duet_proto::E2eeClaim::Required);
    assert_eq!(v["decision"]["claim"], "required");
    assert_eq!(v["decision"]["call"], "e2ee");
    let nodes: Vec<String> = claims.nodes.iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes.len(), 3);
    assert_eq!(v["placement"]["primary"], nodes[0].as_str());
    assert_eq!(v["placement"]["nodes"], json!(nodes));
    assert_eq!(
        nodes,
        duet_proto::placement::candidates("call-1", &["r0", "r1", "r2", "r3"], 3)
    );

    // A peer who cannot do E2EE: the call under `required` does not happen.
    let body =
        json!({"user": "rita", "device": "phone", "session": "call-2", "peer": "plain-pete"});
    let (_, v) = http(addr, "POST", "/v1/tokens", issuer, Some(body)).await?;
    assert_eq!(v["decision"]["peer_claim"], "policy_disabled");
    assert_eq!(v["decision"]["call"], "refused");

    // Bad input names the field.
    for (body, field) in [
        (
            json!({"user": "bad user", "device": "d", "session": "s"}),
            "user",
        ),
        (
            json!({"user": "u", "device": "d", "session": "s", "ttl_secs": 999999}),
            "ttl_secs",
        ),
        (
            json!({"user": "u", "device": "d d", "session": "s"}),
            "device",
        ),
    ] {
        let (st, v) = http(addr, "POST", "/v1/tokens", issuer, Some(body)).await?;
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with(field),
            "{v}"
        );
    }
    let (st, v) = http(
        addr,
        "POST",
        "/v1/tokens",
        issuer,
        Some(json!({"user": "u"})),
    )
    .await?;
    assert_eq!((st, code(&v)), (400, "bad_request"));
    Ok(())
}

/// A read-only store (a snapshot, read-only media) still answers reads and the token
/// endpoint; changes get 503 `store_read_only` in the JSON error format. The old file
/// store opened its lock file read-write even to read, so a read-only store stopped
/// minting too (issue 16, finding 6).
#[tokio::test]
async fn a_read_only_store_still_reads_and_mints_over_http() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.db");
    {
        let rw = SqliteStore::open(&path)?;
        add_cred(&rw, "backend", Role::Issuer, "issuer-secret-0123456789")?;
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_read_only(&path)?);
    let addr = serve(duet_policy::ApiConfig {
        store,
        admin_token: Some(TOKEN.into()),
        signing_key: Some(Arc::new(duet_proto::SigningKey::ed25519_from_seed(
            "k", &[9u8; 32],
        )?)),
        nodes: Arc::new(duet_policy::NodeSet::none()),
        max_ttl: std::time::Duration::from_secs(3600),
    })
    .await?;
    let (st, _) = http(addr, "GET", "/v1/users/ann/effective", Some(TOKEN), None).await?;
    assert_eq!(st, 200);
    let body = json!({"user": "ann", "device": "d", "session": "s"});
    let (st, v) = http(
        addr,
        "POST",
        "/v1/tokens",
        Some("issuer-secret-0123456789"),
        Some(body),
    )
    .await?;
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(
        addr,
        "PUT",
        "/v1/users/ann/e2ee",
        Some(TOKEN),
        Some(json!({"on": true})),
    )
    .await?;
    assert_eq!((st, code(&v)), (503, "store_read_only"));
    Ok(())
}

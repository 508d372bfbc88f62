//! The minter's node set from the Kubernetes EndpointSlices API (feature `kubernetes`),
//! through `--nodes-from k8s:duet/duet-relay:quic` and a kubeconfig, against an in-test
//! HTTP/1.1 server that answers the way the API server does: `discovery.k8s.io/v1`
//! EndpointSlice lists (items without kind, a list `resourceVersion`, the label selector
//! applied server-side) and a chunked watch stream of `{"type", "object"}` events.
//!
//! No Kubernetes API server can run on the machine this was written on (none is packaged
//! in Debian, no container registry is reachable), so this server stands in for it; the
//! JSON it serves is what `kubectl get endpointslices -o json` / `--watch` return.
//!
//! Checked: only ready, non-terminating endpoints become nodes, named after their pods;
//! a slice of another Service (filtered by the selector the client sends) and a slice
//! without the named port count for nothing; a watch event that removes an endpoint
//! removes the node, an added slice adds its node, a deleted slice removes its nodes; the
//! kubeconfig's bearer token is what the client authenticates with.
#![cfg(feature = "kubernetes")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use duet_policy::placement::NodeSource;
use duet_policy::NodeSet;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn endpoint(pod: &str, ip: &str, ready: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
        "hostname": pod,
        "nodeName": "worker-1",
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "duet", "uid": format!("uid-{pod}")}
    })
}

fn slice(name: &str, service: &str, rv: u32, endpoints: Vec<Value>, port: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "duet",
            "generateName": format!("{service}-"),
            "resourceVersion": rv.to_string(),
            "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-12-02T05:00:00Z",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "service.kubernetes.io/headless": ""
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": service,
                "uid": format!("uid-svc-{service}"), "controller": true, "blockOwnerDeletion": true
            }]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port, "port": 4433, "protocol": "UDP"}]
    })
}

/// What the fake API server saw.
#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    auth: Vec<String>,
}

struct FakeApi {
    items: Vec<Value>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    seen: Mutex<Seen>,
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(target: &str, key: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| url_decode(v))
    })
}

fn selected(item: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => item["metadata"]["labels"][k].as_str() == Some(v),
        None => true,
    })
}

impl FakeApi {
    async fn serve(self: Arc<Self>, listener: TcpListener) {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(self.clone().connection(conn));
        }
    }

    async fn connection(self: Arc<Self>, mut conn: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let head = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    break head;
                }
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let mut lines = head.lines();
            let target = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or("")
                .to_owned();
            {
                let mut seen = self.seen.lock().unwrap();
                seen.requests.push(target.clone());
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            seen.auth.push(v.trim().to_owned());
                        }
                    }
                }
            }
            let path = target.split('?').next().unwrap_or("");
            if path != "/apis/discovery.k8s.io/v1/namespaces/duet/endpointslices" {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"})
                .to_string();
                let _ = conn
                    .write_all(
                        format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await;
                continue;
            }
            let selector = query(&target, "labelSelector");
            if query(&target, "watch").as_deref() == Some("true") {
                self.watch(conn).await;
                return;
            }
            // The list: items carry no kind/apiVersion, the list has the resourceVersion
            // the watch starts from.
            let items: Vec<Value> = self
                .items
                .iter()
                .filter(|i| selected(i, selector.as_deref()))
                .map(|i| {
                    let mut i = i.clone();
                    if let Some(o) = i.as_object_mut() {
                        o.remove("kind");
                        o.remove("apiVersion");
                    }
                    i
                })
                .collect();
            let body = json!({
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": "105"},
                "items": items
            })
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// A watch: chunked, one JSON event per line, open until the test ends. Only the first
    /// watch gets the test's events; a later one (a re-watch) stays quiet.
    async fn watch(&self, mut conn: TcpStream) {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let rx = self.events.lock().unwrap().take();
        let Some(mut rx) = rx else {
            std::future::pending::<()>().await;
            return;
        };
        while let Some(ev) = rx.recv().await {
            let line = format!("{ev}\n");
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

async fn wait_for(set: &NodeSet, want: &[&str], what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Vec<String> = set.nodes().iter().map(|n| n.to_string()).collect();
        if now == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: the set is {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_set_follows_the_ready_endpoints_of_the_service() -> Result<()> {
    let a = slice(
        "duet-relay-abcde",
        "duet-relay",
        101,
        vec![
            endpoint("duet-relay-0", "10.0.0.10", true, false),
            endpoint("duet-relay-1", "10.0.0.11", true, false),
            // Starting (not ready yet) and terminating pods are never placed on.
            endpoint("duet-relay-2", "10.0.0.12", false, false),
            endpoint("duet-relay-5", "10.0.0.15", false, true),
        ],
        "quic",
    );
    let other = slice(
        "coturn-xyz12",
        "coturn",
        102,
        vec![endpoint("coturn-0", "10.0.1.10", true, false)],
        "quic",
    );
    let no_port = slice(
        "duet-relay-noport",
        "duet-relay",
        103,
        vec![endpoint("duet-relay-9", "10.0.0.19", true, false)],
        "metrics",
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let api = Arc::new(FakeApi {
        items: vec![a.clone(), other, no_port],
        events: Mutex::new(Some(rx)),
        seen: Mutex::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(api.clone().serve(listener));

    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: minter\n    namespace: duet\n\
             current-context: fake\nusers:\n- name: minter\n  user:\n    token: minter-sa-token\n"
        ),
    )?;
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("KUBECONFIG", &kubeconfig);

    let set = NodeSet::from_source(NodeSource::parse("k8s:duet/duet-relay:quic")?)
        .await
        .context("the first list")?;
    wait_for(&set, &["duet-relay-0", "duet-relay-1"], "after the list").await?;
    {
        let seen = api.seen.lock().unwrap();
        ensure!(
            seen.requests
                .iter()
                .all(|r| query(r, "labelSelector").as_deref()
                    == Some("kubernetes.io/service-name=duet-relay")),
            "requests without the Service's selector: {:?}",
            seen.requests
        );
        ensure!(
            seen.auth.iter().any(|a| a == "Bearer minter-sa-token"),
            "the kubeconfig's token was not sent: {:?}",
            seen.auth
        );
    }

    // duet-relay-1 leaves the slice (its pod went unready: the controller drops it).
    let mut a2 = a.clone();
    a2["metadata"]["resourceVersion"] = json!("106");
    a2["endpoints"] = json!([
        endpoint("duet-relay-0", "10.0.0.10", true, false),
        endpoint("duet-relay-2", "10.0.0.12", false, false),
    ]);
    tx.send(json!({"type": "MODIFIED", "object": a2}))?;
    wait_for(&set, &["duet-relay-0"], "after duet-relay-1 left").await?;

    // A second slice with a ready pod, then that slice deleted.
    let b = slice(
        "duet-relay-fghij",
        "duet-relay",
        107,
        vec![endpoint("duet-relay-3", "10.0.0.13", true, false)],
        "quic",
    );
    tx.send(json!({"type": "ADDED", "object": b.clone()}))?;
    wait_for(
        &set,
        &["duet-relay-0", "duet-relay-3"],
        "after a slice was added",
    )
    .await?;
    tx.send(json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": "108"}}}))?;
    tx.send(json!({"type": "DELETED", "object": b}))?;
    wait_for(&set, &["duet-relay-0"], "after the slice was deleted").await?;

    // Placement is over the watched set.
    let c = set.candidates(&duet_proto::SessionId::new("call-1")?);
    ensure!(
        c.iter().map(|n| n.to_string()).collect::<Vec<_>>() == ["duet-relay-0"],
        "{c:?}"
    );
    let watches = api
        .seen
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| query(r, "watch").as_deref() == Some("true"))
        .count();
    ensure!(watches >= 1, "no watch request");
    Ok(())
}

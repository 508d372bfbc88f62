//! The node set from the Kubernetes EndpointSlices API (feature `kubernetes`), for a minter
//! that runs in the cluster: list + watch the EndpointSlices of the relays' headless
//! Service (label `kubernetes.io/service-name`), keep only ready endpoints, name each node
//! after its pod (`targetRef` of kind Pod, else the endpoint's `hostname`, else its first
//! address), and replace the [`NodeSet`]'s nodes on every change. Credentials: the pod's
//! service account in the cluster, else the kubeconfig (`kube::Client::try_default`).
//!
//! Owns the reading of EndpointSlices; the set and its ranking are `placement`'s.
//! Tested against an in-test HTTP server serving real `discovery.k8s.io/v1` list and watch
//! responses (`policy/tests/kubernetes_nodes.rs`): no Kubernetes API server runs where
//! this was written.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use duet_proto::NodeId;
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use crate::placement::{NodeSet, PlacementError, ServiceRef};

/// How long the first list may take before the minter gives up starting.
pub const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(10);

fn err(svc: &ServiceRef, e: &dyn std::fmt::Display) -> PlacementError {
    PlacementError::Kubernetes {
        service: format!("{}/{}", svc.namespace, svc.service),
        detail: e.to_string(),
    }
}

/// Whether Kubernetes says the endpoint takes traffic. An absent `ready` means unknown,
/// which the API documents as to be taken for ready; a terminating pod is never placed on.
fn is_ready(ep: &Endpoint) -> bool {
    let c = ep.conditions.as_ref();
    c.and_then(|c| c.ready).unwrap_or(true) && !c.and_then(|c| c.terminating).unwrap_or(false)
}

fn node_name(ep: &Endpoint) -> Option<&str> {
    ep.target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.as_deref())
        .or(ep.hostname.as_deref())
        .or(ep.addresses.first().map(String::as_str))
}

/// The ready nodes one slice lists.
pub fn ready_nodes(slice: &EndpointSlice, port: Option<&str>) -> Vec<NodeId> {
    if let Some(p) = port {
        let has = slice
            .ports
            .iter()
            .flatten()
            .any(|sp| sp.name.as_deref() == Some(p));
        if !has {
            return Vec::new();
        }
    }
    slice
        .endpoints
        .iter()
        .filter(|ep| is_ready(ep))
        .filter_map(|ep| {
            let name = node_name(ep)?;
            match NodeId::new(name) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(name, error = %e, "endpoint name is not a node id; skipped");
                    None
                }
            }
        })
        .collect()
}

/// The slices seen so far, by name, and what the set is made of.
#[derive(Default)]
struct Slices(BTreeMap<String, Vec<NodeId>>);

impl Slices {
    fn apply(&mut self, s: &EndpointSlice, port: Option<&str>) {
        if let Some(name) = s.metadata.name.clone() {
            self.0.insert(name, ready_nodes(s, port));
        }
    }

    fn delete(&mut self, s: &EndpointSlice) {
        if let Some(name) = &s.metadata.name {
            self.0.remove(name);
        }
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.0.values().flatten().cloned().collect()
    }
}

fn publish(nodes: &RwLock<Arc<Vec<NodeId>>>, slices: &Slices, svc: &ServiceRef) {
    let mut v = slices.nodes();
    v.sort();
    v.dedup();
    if v.is_empty() {
        // As with DNS: an empty answer keeps the last set (a minter that places on
        // nothing would mint tokens any relay accepts).
        tracing::warn!(service = %svc.service, "no ready relay endpoint; keeping the last node set");
        return;
    }
    tracing::info!(service = %svc.service, nodes = v.len(), "node set from EndpointSlices");
    match nodes.write() {
        Ok(mut g) => *g = Arc::new(v),
        Err(p) => *p.into_inner() = Arc::new(v),
    }
}

/// Starts the list + watch with `client` and returns once the first list is in (at most
/// [`FIRST_LIST_TIMEOUT`]); the set follows every change from then on, for as long as the
/// returned [`NodeSet`] lives. Watch errors are retried with kube's default backoff,
/// keeping the last set.
pub async fn node_set(client: kube::Client, svc: ServiceRef) -> Result<NodeSet, PlacementError> {
    let api: Api<EndpointSlice> = Api::namespaced(client, &svc.namespace);
    let cfg =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", svc.service));
    let nodes: Arc<RwLock<Arc<Vec<NodeId>>>> = Arc::default();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let task = {
        let nodes = nodes.clone();
        let svc = svc.clone();
        tokio::spawn(async move {
            let port = svc.port.clone();
            let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
            let mut first = Some(first_tx);
            let mut slices = Slices::default();
            let mut relisting: Option<Slices> = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Init) => relisting = Some(Slices::default()),
                    Ok(Event::InitApply(s)) => {
                        if let Some(r) = relisting.as_mut() {
                            r.apply(&s, port.as_deref());
                        }
                    }
                    Ok(Event::InitDone) => {
                        slices = relisting.take().unwrap_or_default();
                        publish(&nodes, &slices, &svc);
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Apply(s)) => {
                        slices.apply(&s, port.as_deref());
                        publish(&nodes, &slices, &svc);
                    }
                    Ok(Event::Delete(s)) => {
                        slices.delete(&s);
                        publish(&nodes, &slices, &svc);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "EndpointSlice watch failed; retrying, keeping the last set");
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                }
            }
        })
    };
    let first = tokio::time::timeout(FIRST_LIST_TIMEOUT, first_rx).await;
    let fail = |e: &dyn std::fmt::Display| {
        task.abort();
        err(&svc, e)
    };
    match first {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(fail(&e)),
        Ok(Err(_)) => return Err(fail(&"the watch ended")),
        Err(_) => return Err(fail(&"no answer to the first list")),
    }
    Ok(NodeSet::watched(
        crate::placement::NodeSource::Kubernetes(svc),
        nodes,
        task,
    ))
}

/// [`node_set`] with the ambient credentials: the service account in a pod, else the
/// kubeconfig (`KUBECONFIG`, `~/.kube/config`).
pub async fn node_set_default(svc: ServiceRef) -> Result<NodeSet, PlacementError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| err(&svc, &e))?;
    node_set(client, svc).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("an EndpointSlice")
    }

    #[test]
    fn only_ready_endpoints_of_slices_with_the_port_count() {
        let s = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "duet-relay-x"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "duet-relay-0"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "duet-relay-1"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}, "hostname": "duet-relay-2"},
                {"addresses": ["10.0.0.4"], "conditions": {}, "hostname": "duet-relay-3"},
                {"addresses": ["10.0.0.5"]}
            ],
            "ports": [{"name": "quic", "port": 4433, "protocol": "UDP"}]
        }));
        let names: Vec<String> = ready_nodes(&s, Some("quic"))
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["duet-relay-0", "duet-relay-3", "10.0.0.5"]);
        assert!(ready_nodes(&s, Some("fastpath")).is_empty());
    }
}

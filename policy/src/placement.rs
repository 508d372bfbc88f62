//! The node set a token is placed over, and where it comes from.
//!
//! Owns the live node set of the minter: a static list, DNS records of the fleet's
//! headless Service (feature `dns`, `hickory-resolver`): SRV (a node is the first label of
//! each target, i.e. the pod name) or A/AAAA (a node is the address), or the Service's
//! EndpointSlices (feature `kubernetes`, watched by [`crate::kubernetes`]). DNS answers are
//! cached in the set and refreshed by [`NodeSet::refresh`] (the admin API server does it
//! periodically; `token mint` once), so minting never waits on DNS; an EndpointSlice watch
//! replaces the set itself on every change. Does not own the
//! ranking: [`duet_proto::placement`] (rendezvous hashing) is the one function relays,
//! SDKs, the load tester and this minter share.

use std::sync::{Arc, RwLock};

use duet_proto::{placement, IdError, NodeId, SessionId};

/// Nodes a token lists: the primary and two fallbacks (fewer if the fleet is smaller).
pub const CANDIDATES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("node id {0:?}: {1}")]
    BadNode(String, IdError),
    #[error("DNS lookup of {name} failed: {detail}")]
    Dns { name: String, detail: String },
    #[error("DNS name {0} has no records: no relay node is ready")]
    NoNodes(String),
    #[error("--nodes-from {0:?}: use static:<n1,n2,…>, dns-srv:<name>[@server:port], dns-a:<name>[@server:port] or k8s:<namespace>/<service>[:<port-name>]")]
    BadSource(String),
    #[error("EndpointSlices of {service}: {detail}")]
    Kubernetes { service: String, detail: String },
    #[error(
        "--nodes-from k8s:…: this build has no Kubernetes support (cargo feature `kubernetes`)"
    )]
    KubernetesNotBuilt,
}

/// Which Service's endpoints are the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub service: String,
    /// Only slices that publish a port of this name (`quic`) count.
    pub port: Option<String>,
}

impl ServiceRef {
    /// `<namespace>/<service>[:<port-name>]`.
    pub fn parse(s: &str) -> Option<Self> {
        let (namespace, rest) = s.split_once('/')?;
        let (service, port) = match rest.split_once(':') {
            Some((svc, p)) => (svc, Some(p.to_owned()).filter(|p| !p.is_empty())),
            None => (rest, None),
        };
        let ok = |x: &str| {
            !x.is_empty()
                && x.len() <= 253
                && x.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (ok(namespace) && ok(service)).then(|| Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            port,
        })
    }
}

/// Where the nodes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSource {
    /// A fixed list (`static:relay-0,relay-1,…`).
    Static(Vec<NodeId>),
    /// SRV records of `name` (`dns-srv:_duet._udp.duet-relay.ns.svc.cluster.local`).
    DnsSrv {
        name: String,
        server: Option<std::net::SocketAddr>,
    },
    /// A/AAAA records of `name` (`dns-a:duet-relay.ns.svc.cluster.local`).
    DnsA {
        name: String,
        server: Option<std::net::SocketAddr>,
    },
    /// The ready endpoints of a Service's EndpointSlices
    /// (`k8s:duet/duet-relay:quic`; feature `kubernetes`).
    Kubernetes(ServiceRef),
}

impl NodeSource {
    /// Parses `static:a,b,c`, `dns-srv:<name>[@ip:port]`, `dns-a:<name>[@ip:port]`,
    /// `k8s:<namespace>/<service>[:<port-name>]`.
    pub fn parse(s: &str) -> Result<Self, PlacementError> {
        let bad = || PlacementError::BadSource(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let dns = |rest: &str| -> Result<(String, Option<std::net::SocketAddr>), PlacementError> {
            match rest.rsplit_once('@') {
                Some((n, srv)) => Ok((n.to_owned(), Some(srv.parse().map_err(|_| bad())?))),
                None => Ok((rest.to_owned(), None)),
            }
        };
        match kind {
            "static" => Ok(Self::Static(parse_nodes(
                rest.split(',').filter(|n| !n.is_empty()),
            )?)),
            "dns-srv" => {
                let (name, server) = dns(rest)?;
                Ok(Self::DnsSrv { name, server })
            }
            "dns-a" => {
                let (name, server) = dns(rest)?;
                Ok(Self::DnsA { name, server })
            }
            "k8s" => ServiceRef::parse(rest)
                .map(Self::Kubernetes)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

fn parse_nodes<S: AsRef<str>>(
    it: impl IntoIterator<Item = S>,
) -> Result<Vec<NodeId>, PlacementError> {
    let mut v: Vec<NodeId> = it
        .into_iter()
        .map(|n| {
            NodeId::new(n.as_ref()).map_err(|e| PlacementError::BadNode(n.as_ref().to_owned(), e))
        })
        .collect::<Result<_, _>>()?;
    // A set: the ranking ignores order, duplicates would only repeat a node.
    v.sort();
    v.dedup();
    Ok(v)
}

/// The live node set. Cheap to read from many threads while a refresh replaces it.
#[derive(Debug)]
pub struct NodeSet {
    source: NodeSource,
    nodes: Arc<RwLock<Arc<Vec<NodeId>>>>,
    /// The task that keeps `nodes` current (an EndpointSlice watch); ends with the set.
    #[allow(dead_code)] // held for its Drop
    watch: Option<WatchTask>,
}

/// Aborts the watch task when the set is dropped.
#[derive(Debug)]
struct WatchTask(#[cfg(feature = "kubernetes")] tokio::task::JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        #[cfg(feature = "kubernetes")]
        self.0.abort();
    }
}

impl NodeSet {
    /// No placement: tokens list no node and any relay accepts them (a single relay).
    pub fn none() -> Self {
        Self::from_nodes(Vec::new())
    }

    pub fn from_static<S: AsRef<str>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> Result<Self, PlacementError> {
        Ok(Self::from_nodes(parse_nodes(nodes)?))
    }

    fn from_nodes(nodes: Vec<NodeId>) -> Self {
        Self {
            source: NodeSource::Static(nodes.clone()),
            nodes: Arc::new(RwLock::new(Arc::new(nodes))),
            watch: None,
        }
    }

    /// A set whose nodes `task` keeps current.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn watched(
        source: NodeSource,
        nodes: Arc<RwLock<Arc<Vec<NodeId>>>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self {
            source,
            nodes,
            watch: Some(WatchTask(task)),
        }
    }

    /// A set filled from `source` (DNS sources are resolved once here; an EndpointSlice
    /// source is listed here and watched for as long as the set lives).
    #[cfg(feature = "dns")]
    pub async fn from_source(source: NodeSource) -> Result<Self, PlacementError> {
        let initial = match &source {
            NodeSource::Static(v) => v.clone(),
            #[cfg(feature = "kubernetes")]
            NodeSource::Kubernetes(svc) => {
                return crate::kubernetes::node_set_default(svc.clone()).await
            }
            #[cfg(not(feature = "kubernetes"))]
            NodeSource::Kubernetes(_) => return Err(PlacementError::KubernetesNotBuilt),
            _ => Vec::new(),
        };
        let set = Self {
            source: source.clone(),
            nodes: Arc::new(RwLock::new(Arc::new(initial))),
            watch: None,
        };
        set.refresh().await?;
        Ok(set)
    }

    /// Where the nodes come from.
    pub fn source(&self) -> &NodeSource {
        &self.source
    }

    /// The nodes now.
    pub fn nodes(&self) -> Arc<Vec<NodeId>> {
        match self.nodes.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the set (a refresh, or an orchestrator pushing the ready nodes).
    pub fn replace(&self, nodes: Vec<NodeId>) {
        let mut nodes = nodes;
        nodes.sort();
        nodes.dedup();
        match self.nodes.write() {
            Ok(mut g) => *g = Arc::new(nodes),
            Err(p) => *p.into_inner() = Arc::new(nodes),
        }
    }

    /// The session's candidates, best first: what the token's `nodes` claim lists.
    pub fn candidates(&self, session: &SessionId) -> Vec<NodeId> {
        let nodes = self.nodes();
        placement::candidates(session.as_str(), &nodes, CANDIDATES)
    }

    /// Re-reads DNS (a static or watched set is left as is). Returns the number of nodes. On error
    /// the previous set stays: a DNS hiccup must not stop minting.
    #[cfg(feature = "dns")]
    pub async fn refresh(&self) -> Result<usize, PlacementError> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        use hickory_resolver::proto::xfer::Protocol;
        use hickory_resolver::Resolver;

        let (name, server, srv) = match &self.source {
            NodeSource::Static(_) | NodeSource::Kubernetes(_) => return Ok(self.nodes().len()),
            NodeSource::DnsSrv { name, server } => (name, server, true),
            NodeSource::DnsA { name, server } => (name, server, false),
        };
        let err = |e: &dyn std::fmt::Display| PlacementError::Dns {
            name: name.clone(),
            detail: e.to_string(),
        };
        let builder = match server {
            Some(addr) => {
                let mut cfg = ResolverConfig::new();
                cfg.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                Resolver::builder_with_config(cfg, TokioConnectionProvider::default())
            }
            None => Resolver::builder_tokio().map_err(|e| err(&e))?,
        };
        let mut builder = builder;
        // Ready pods come and go: never serve a stale set from the resolver's cache.
        builder.options_mut().cache_size = 0;
        let resolver = builder.build();
        let found: Vec<String> = if srv {
            let l = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| err(&e))?;
            l.iter()
                .filter_map(|r| {
                    r.target()
                        .iter()
                        .next()
                        .map(|label| String::from_utf8_lossy(label).into_owned())
                })
                .collect()
        } else {
            let l = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| err(&e))?;
            l.iter().map(|ip| ip.to_string()).collect()
        };
        if found.is_empty() {
            return Err(PlacementError::NoNodes(name.clone()));
        }
        let nodes = parse_nodes(found)?;
        let n = nodes.len();
        self.replace(nodes);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("relay-{i}")).collect()
    }

    #[test]
    fn tokens_list_a_primary_and_two_fallbacks() {
        let s = NodeSet::from_static(["relay-0", "relay-1", "relay-2", "relay-3"]).unwrap();
        let c = s.candidates(&SessionId::new("s1").unwrap());
        assert_eq!(c.len(), 3);
        let mut u = c.clone();
        u.dedup();
        assert_eq!(u.len(), 3, "distinct nodes");
        assert!(NodeSet::none()
            .candidates(&SessionId::new("s1").unwrap())
            .is_empty());
        assert!(matches!(
            NodeSource::parse("dns-srv:_duet._udp.relays@127.0.0.1:5353"),
            Ok(NodeSource::DnsSrv {
                server: Some(_),
                ..
            })
        ));
        assert!(NodeSource::parse("bogus").is_err());
        assert_eq!(
            NodeSource::parse("k8s:duet/duet-relay:quic").ok(),
            Some(NodeSource::Kubernetes(ServiceRef {
                namespace: "duet".into(),
                service: "duet-relay".into(),
                port: Some("quic".into())
            }))
        );
        assert!(NodeSource::parse("k8s:duet").is_err());
        assert!(NodeSet::from_static(["bad node"]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Adding or removing one of N nodes moves about 1/N of the primaries (rendezvous
        /// hashing), and only those whose primary is the node that came or went.
        #[test]
        fn one_node_more_or_less_moves_about_one_nth(n in 3usize..24, seed in 0u64..1000) {
            let before = NodeSet::from_static(set(n)).unwrap();
            let grown = NodeSet::from_static(set(n + 1)).unwrap();
            let shrunk = NodeSet::from_static(set(n).into_iter().skip(1)).unwrap();
            const SESSIONS: usize = 3000;
            let (mut moved_add, mut moved_remove) = (0usize, 0usize);
            for i in 0..SESSIONS {
                let s = SessionId::new(format!("s{seed}-{i}")).unwrap();
                let p = before.candidates(&s)[0].clone();
                let g = grown.candidates(&s)[0].clone();
                if p != g {
                    moved_add += 1;
                    prop_assert_eq!(g.as_str(), format!("relay-{n}"), "only onto the new node");
                }
                let r = shrunk.candidates(&s)[0].clone();
                if p != r {
                    moved_remove += 1;
                    prop_assert_eq!(p.as_str(), "relay-0", "only off the removed node");
                    // Its next candidate takes over: the token's first fallback.
                    prop_assert_eq!(&r, &before.candidates(&s)[1]);
                }
            }
            let expect_add = SESSIONS as f64 / (n + 1) as f64;
            let expect_remove = SESSIONS as f64 / n as f64;
            // Binomial spread: within 5 standard deviations plus a little slack.
            let tol = |e: f64| 5.0 * e.sqrt() + 10.0;
            prop_assert!((moved_add as f64 - expect_add).abs() < tol(expect_add),
                "add moved {} of {}, expected ~{}", moved_add, SESSIONS, expect_add);
            prop_assert!((moved_remove as f64 - expect_remove).abs() < tol(expect_remove),
                "remove moved {} of {}, expected ~{}", moved_remove, SESSIONS, expect_remove);
        }
    }
    #[test]
    fn service_refs_parse() {
        assert_eq!(
            ServiceRef::parse("duet/duet-relay:quic"),
            Some(ServiceRef {
                namespace: "duet".into(),
                service: "duet-relay".into(),
                port: Some("quic".into())
            })
        );
        assert_eq!(
            ServiceRef::parse("duet/duet-relay").and_then(|s| s.port),
            None
        );
        assert!(ServiceRef::parse("duet").is_none());
        assert!(ServiceRef::parse("/svc").is_none());
        assert!(ServiceRef::parse("Duet/svc").is_none());
    }
}

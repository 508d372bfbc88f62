//! Where the load goes: the relay nodes, how to trust them and how to mint their tokens;
//! or an embedded relay started in-process when no `--relay` is given.
//!
//! Owns `--relay [NODE=]ADDR` parsing and resolution (a name resolving to several addresses,
//! like a Kubernetes headless Service, gives one node per address), the embedded relay's
//! lifecycle (its own tokio runtime with threads named `duet-relay*`, so its CPU can be told
//! apart from the clients'; a temporary data directory; loopback ports chosen by the OS), and
//! token minting. It does not place calls (`duet_proto::placement`) or run them (`runner`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, JoinToken, NodeId, SessionId, SigningKey, UserId,
};
use duet_relay::{Config, Relay, RelayHandle};

use crate::resources::RELAY_THREAD_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--relay {0:?}: expected ADDR or NODE=ADDR (ADDR as host:port)")]
    BadRelay(String),
    #[error("--relay {spec:?}: node id: {source}")]
    BadNode {
        spec: String,
        source: duet_proto::IdError,
    },
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host:?} resolves to no address")]
    NoAddress { host: String },
    #[error("two nodes have the same name {0:?}")]
    DuplicateNode(String),
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token key file {0}: expected the hex Ed25519 seed (as `duet-relay` writes it in <data dir>/token-signing-key)")]
    KeyNotHex(PathBuf),
    #[error("the embedded relay's token key: {0}")]
    EmbeddedKey(#[from] duet_relay::ConfigError),
    #[error("token key: {0}")]
    Key(#[from] duet_proto::TokenError),
    #[error("{0} is required to reach an external relay")]
    Missing(&'static str),
    #[error("cannot start the embedded relay: {0}")]
    Embedded(String),
}

/// One `--relay` value before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    pub node: Option<NodeId>,
    pub host: String,
}

impl FromStr for RelaySpec {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, TargetError> {
        let (node, host) = match s.split_once('=') {
            Some((n, h)) => (
                Some(NodeId::new(n).map_err(|source| TargetError::BadNode {
                    spec: s.to_owned(),
                    source,
                })?),
                h,
            ),
            None => (None, s),
        };
        // host:port, [v6]:port, or an IP:port; the port is required.
        let port_ok = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(TargetError::BadRelay(s.to_owned()));
        }
        Ok(Self {
            node,
            host: host.to_owned(),
        })
    }
}

/// A relay node calls can be placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The rendezvous key and report label: the node id when given, else the address.
    pub name: String,
    pub addr: SocketAddr,
    /// Put in the tokens' `node` claim, so the relay refuses a misplaced call (`wrong_node`).
    pub claim: Option<NodeId>,
}

/// Resolves `--relay` values into nodes.
pub async fn resolve(specs: &[RelaySpec]) -> Result<Vec<Node>, TargetError> {
    let mut nodes: Vec<Node> = Vec::new();
    for spec in specs {
        let addrs: Vec<SocketAddr> = match spec.host.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => tokio::net::lookup_host(spec.host.as_str())
                .await
                .map_err(|source| TargetError::Resolve {
                    host: spec.host.clone(),
                    source,
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(TargetError::NoAddress {
                host: spec.host.clone(),
            });
        }
        match &spec.node {
            // A named node is one node: its first address.
            Some(id) => nodes.push(Node {
                name: id.to_string(),
                addr: addrs[0],
                claim: Some(id.clone()),
            }),
            None => nodes.extend(addrs.into_iter().map(|addr| Node {
                name: addr.to_string(),
                addr,
                claim: None,
            })),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for n in &nodes {
        if !seen.insert(n.name.clone()) {
            return Err(TargetError::DuplicateNode(n.name.clone()));
        }
    }
    Ok(nodes)
}

/// Reads a token signing key file: the Ed25519 seed in hex, as `duet-relay` writes it
/// (`<data dir>/token-signing-key`) or the token issuer keeps it.
pub fn read_token_key(id: &str, path: &Path) -> Result<SigningKey, TargetError> {
    let text = std::fs::read_to_string(path).map_err(|source| TargetError::Read {
        what: "token signing key file",
        path: path.to_owned(),
        source,
    })?;
    if duet_proto::hex::decode(&text).is_none() {
        return Err(TargetError::KeyNotHex(path.to_owned()));
    }
    Ok(SigningKey::ed25519_from_hex(id, &text)?)
}

/// What the generator needs to reach an external relay: trust in its certificate, the name
/// that certificate carries, and the key that mints its tokens.
pub struct RelayAccess {
    pub cert_pem: Vec<u8>,
    pub key: SigningKey,
    pub server_name: String,
}

impl RelayAccess {
    pub fn load(a: &crate::cli::RelayAccessArgs) -> Result<Self, TargetError> {
        let cert = a.cert.as_deref().ok_or(TargetError::Missing("--cert"))?;
        let key_file = a
            .token_key_file
            .as_deref()
            .ok_or(TargetError::Missing("--token-key-file"))?;
        Ok(Self {
            cert_pem: read_cert(cert)?,
            key: read_token_key(&a.token_key_id, key_file)?,
            server_name: a.server_name.clone(),
        })
    }
}

pub fn read_cert(path: &Path) -> Result<Vec<u8>, TargetError> {
    std::fs::read(path).map_err(|source| TargetError::Read {
        what: "certificate",
        path: path.to_owned(),
        source,
    })
}

/// Mints the join token of one endpoint: E2EE allowed, placed on `nodes` (primary first,
/// then the fallbacks both endpoints move to; empty: any node).
pub fn mint(
    key: &SigningKey,
    session: &SessionId,
    user: &UserId,
    device: &DeviceId,
    nodes: &[NodeId],
    ttl: Duration,
) -> String {
    let claims = JoinClaims::builder(session.clone(), user.clone(), device.clone())
        .ttl(ttl.max(Duration::from_secs(1)))
        .nodes(nodes.to_vec())
        .e2ee(E2eeClaim::Allowed)
        .build();
    match claims {
        Ok(c) => JoinToken::mint(key, &c),
        // Only an absurd TTL fails here; a token the relay refuses says so in the report.
        Err(_) => String::new(),
    }
}

/// Node id of the embedded relay.
pub const EMBEDDED_NODE: &str = "embedded";

/// A relay running inside this process on its own runtime.
pub struct EmbeddedRelay {
    rt: Option<tokio::runtime::Runtime>,
    handle: Option<Arc<RelayHandle>>,
    _dir: tempfile::TempDir,
}

impl EmbeddedRelay {
    /// Starts a relay on loopback with OS-chosen ports, room for `max_sessions`, and
    /// `threads` worker threads. Call from outside any runtime.
    pub fn start(threads: usize, max_sessions: u32) -> Result<Self, TargetError> {
        let dir = tempfile::Builder::new()
            .prefix("duet-loadtest-relay-")
            .tempdir()
            .map_err(|e| TargetError::Embedded(format!("temporary data directory: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(RELAY_THREAD_PREFIX)
            .enable_all()
            .build()
            .map_err(|e| TargetError::Embedded(format!("runtime: {e}")))?;
        let mut cfg = Config {
            node_id: EMBEDDED_NODE.to_owned(),
            ..Config::loopback(dir.path())
        };
        cfg.limits.max_sessions = cfg.limits.max_sessions.max(max_sessions);
        let handle = rt
            .block_on(Relay::start(cfg))
            .map_err(|e| TargetError::Embedded(e.to_string()))?;
        Ok(Self {
            rt: Some(rt),
            handle: Some(Arc::new(handle)),
            _dir: dir,
        })
    }

    pub fn handle(&self) -> Arc<RelayHandle> {
        // Present from start until shutdown, which consumes self.
        self.handle
            .clone()
            .unwrap_or_else(|| unreachable!("embedded relay used after shutdown"))
    }

    /// The key tokens for this relay are minted with: the key pair it generated in its
    /// data directory (the relay itself holds only the public half).
    pub fn signing_key(&self) -> Result<SigningKey, TargetError> {
        Ok(self.handle().config().load_signing_key(None, None)?)
    }

    pub fn node(&self) -> Node {
        let h = self.handle();
        Node {
            name: EMBEDDED_NODE.to_owned(),
            addr: h.quic_addr(),
            claim: Some(h.node_id().clone()),
        }
    }

    /// Stops the relay and its runtime (bounded: a few seconds at most).
    pub fn shutdown(mut self) {
        let (Some(rt), Some(handle)) = (self.rt.take(), self.handle.take()) else {
            return;
        };
        if let Ok(h) = Arc::try_unwrap(handle) {
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(3), h.shutdown()).await;
            });
        }
        rt.shutdown_timeout(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_specs_parse() {
        let s: RelaySpec = "relay-0=10.0.0.1:4433".parse().unwrap();
        assert_eq!(s.node.unwrap().as_str(), "relay-0");
        assert_eq!(s.host, "10.0.0.1:4433");
        let s: RelaySpec = "duet-relay.duet.svc:4433".parse().unwrap();
        assert_eq!(s.node, None);
        assert!("[::1]:4433".parse::<RelaySpec>().is_ok());
        assert!("127.0.0.1".parse::<RelaySpec>().is_err());
        assert!("bad node=1.2.3.4:1".parse::<RelaySpec>().is_err());
        assert!(":4433".parse::<RelaySpec>().is_err());
    }

    #[tokio::test]
    async fn resolves_and_refuses_duplicates() {
        let specs: Vec<RelaySpec> = vec![
            "a=127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let nodes = resolve(&specs).await.unwrap();
        assert_eq!(nodes[0].name, "a");
        assert_eq!(nodes[1].name, "127.0.0.1:2");
        assert!(nodes[1].claim.is_none());
        let dup: Vec<RelaySpec> = vec![
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        assert!(matches!(
            resolve(&dup).await,
            Err(TargetError::DuplicateNode(_))
        ));
    }
}

//! [`Fleet`]: several `duet-relay` processes on loopback that form one fleet as an operator
//! would run it: node ids `n1`, `n2`, ..., one token key (every node trusts the public half;
//! the test mints with the private one) and one certificate (so one PEM trusts them all),
//! each node with its own data directory, ports and ops listener with a drain credential.
//!
//! It does not place calls (`duet_proto::placement`, the policy crate's minter) or move them
//! (the SDK's failover).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use duet_proto::{NodeId, SigningKey};

use crate::process::{RelayProcess, RelayProcessBuilder};
use crate::relay::RelayUnderTest;

/// The bearer credential every node's `/admin/` endpoints take (`ops_token_file`).
pub const OPS_TOKEN: &str = "fleet-test-ops-token-0123456789";

/// Files a node copies from the first node's data directory: the shared identity.
const SHARED: [&str; 4] = ["token-signing-key", "token-key.pub", "cert.pem", "key.pem"];

/// Makes the relay whose data directory is `to` (created if missing) one fleet with the
/// relay whose data directory is `from`: the same certificate and key, the same token
/// issuer. [`Fleet`] does this for relay processes; in-process relays
/// ([`crate::TestRelay`]) call it from their config hook.
pub fn share_identity(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for f in SHARED {
        std::fs::copy(from.join(f), to.join(f))
            .with_context(|| format!("sharing {f} with {}", to.display()))?;
    }
    Ok(())
}

pub struct Fleet {
    dir: tempfile::TempDir,
    pub nodes: Vec<RelayProcess>,
}

impl Fleet {
    /// Starts `n` nodes, each built by `tweak` from a builder that already has its data
    /// directory, node id and ops credential.
    pub fn start(
        n: usize,
        tweak: impl Fn(RelayProcessBuilder) -> RelayProcessBuilder,
    ) -> Result<Fleet> {
        let dir = tempfile::tempdir()?;
        let token = dir.path().join("ops-token");
        std::fs::write(&token, format!("{OPS_TOKEN}\n"))?;
        let mut nodes: Vec<RelayProcess> = Vec::with_capacity(n);
        for i in 1..=n {
            let data = dir.path().join(format!("n{i}"));
            match nodes.first() {
                Some(first) => share_identity(first.data_dir(), &data)?,
                None => std::fs::create_dir_all(&data)?,
            }
            let b = RelayProcess::builder()
                .data_dir(&data)
                .arg("--node-id")
                .arg(format!("n{i}"))
                .arg("--ops-token-file")
                .arg(&token);
            nodes.push(
                tweak(b)
                    .start()
                    .with_context(|| format!("starting node n{i}"))?,
            );
        }
        Ok(Fleet { dir, nodes })
    }

    /// Node `i`'s id (`n1` for index 0).
    pub fn id(i: usize) -> NodeId {
        NodeId::new(format!("n{}", i + 1)).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// The address book: every node's id and QUIC address.
    pub fn address_book(&self) -> Vec<(NodeId, SocketAddr)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (Self::id(i), n.quic_addr()))
            .collect()
    }

    /// The node ids, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        (0..self.nodes.len()).map(Self::id).collect()
    }

    /// The certificate every node serves.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.nodes[0].cert_pem()
    }

    /// The key the fleet's tokens are minted with.
    pub fn signer(&self) -> SigningKey {
        self.nodes[0].signer()
    }

    /// The ops credential file (for `duet-relay drain --token-file`, `duet-loadtest
    /// --ops-token-file`).
    pub fn ops_token_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ops-token")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

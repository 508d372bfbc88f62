//! [`FleetDns`]: a real DNS server (hickory-server, in this process, on loopback UDP) that
//! answers for a relay fleet the way a Kubernetes headless Service does: one SRV record per
//! ready node under `_duet._udp.<zone>` (target `<node>.duet-relay.<zone>`, the node's QUIC
//! port), an A record per target, and the zone's own name answering every node's address. Nodes can be added or removed while it runs, as pods
//! become ready or go away.
//!
//! It owns no resolver: the minter's (`duet_policy::placement`, hickory-resolver) reads it.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;

/// The zone the fleet's names live in.
pub const ZONE: &str = "fleet.test.";
/// The SRV name a minter reads the node set from.
pub const SRV_NAME: &str = "_duet._udp.fleet.test.";

fn name(s: &str) -> Result<Name> {
    Name::from_str(s).with_context(|| format!("DNS name {s:?}"))
}

pub struct FleetDns {
    addr: SocketAddr,
    zone: Arc<InMemoryAuthority>,
    serial: std::sync::atomic::AtomicU32,
    task: tokio::task::JoinHandle<()>,
}

impl FleetDns {
    /// Starts the server with `nodes` (node id, QUIC address) ready.
    pub async fn start(nodes: &[(String, SocketAddr)]) -> Result<FleetDns> {
        let mut zone = InMemoryAuthority::empty(name(ZONE)?, ZoneType::Primary, false);
        let soa = SOA::new(
            name(&format!("ns.{ZONE}"))?,
            name(&format!("admin.{ZONE}"))?,
            1,
            60,
            60,
            60,
            5,
        );
        zone.upsert_mut(Record::from_rdata(name(ZONE)?, 60, RData::SOA(soa)), 1);
        for (node, addr) in nodes {
            for r in records(node, *addr)? {
                zone.upsert_mut(r, 1);
            }
        }
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&name(ZONE)?), vec![zone.clone()]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let mut server = ServerFuture::new(catalog);
        server.register_socket(socket);
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        Ok(FleetDns {
            addr,
            zone,
            serial: 2.into(),
            task,
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The minter's node source for this fleet, as `token mint --nodes-from` takes it.
    pub fn srv_source(&self) -> String {
        format!("dns-srv:{SRV_NAME}@{}", self.addr)
    }

    /// The same from A records: nodes named by their addresses.
    pub fn a_source(&self) -> String {
        format!("dns-a:{ZONE}@{}", self.addr)
    }

    /// A node became ready.
    pub async fn add(&self, node: &str, addr: SocketAddr) -> Result<()> {
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for r in records(node, addr)? {
            self.zone.upsert(r, serial).await;
        }
        Ok(())
    }
}

fn records(node: &str, addr: SocketAddr) -> Result<Vec<Record>> {
    let target = name(&format!("{node}.duet-relay.{ZONE}"))?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    };
    Ok(vec![
        Record::from_rdata(
            name(SRV_NAME)?,
            5,
            RData::SRV(SRV::new(0, 10, addr.port(), target.clone())),
        ),
        Record::from_rdata(target, 5, RData::A(A(ip))),
        Record::from_rdata(name(ZONE)?, 5, RData::A(A(ip))),
    ])
}

impl Drop for FleetDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Placement from the orchestrator's DNS: a real DNS server (hickory-server, in-process on
//! loopback UDP) answers SRV and A records for the relay fleet as a Kubernetes headless
//! Service would; the minter's node set reads them with hickory-resolver, tokens list the
//! session's primary and two fallbacks by rendezvous hashing, and a refresh picks up a
//! node that became ready.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use duet_policy::placement::NodeSource;
use duet_policy::{Issuer, NodeSet, SqliteStore};
use duet_proto::{DeviceId, SessionId, SigningKey, UserId};
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;

const ZONE: &str = "relays.test.";
const SRV_NAME: &str = "_duet._udp.relays.test.";

fn name(s: &str) -> Name {
    Name::from_str(s).expect("dns name")
}

fn srv(node: &str) -> Record {
    Record::from_rdata(
        name(SRV_NAME),
        5,
        RData::SRV(SRV::new(
            0,
            10,
            4433,
            name(&format!("{node}.duet-relay.{ZONE}")),
        )),
    )
}

async fn dns_server(nodes: &[&str]) -> Result<(SocketAddr, Arc<InMemoryAuthority>)> {
    let mut zone = InMemoryAuthority::empty(name(ZONE), ZoneType::Primary, false);
    zone.upsert_mut(
        Record::from_rdata(
            name(ZONE),
            60,
            RData::SOA(SOA::new(
                name(&format!("ns.{ZONE}")),
                name(&format!("admin.{ZONE}")),
                1,
                60,
                60,
                60,
                5,
            )),
        ),
        1,
    );
    for n in nodes {
        zone.upsert_mut(srv(n), 1);
    }
    for last in [1u8, 2, 3] {
        zone.upsert_mut(
            Record::from_rdata(name(ZONE), 5, RData::A(A(Ipv4Addr::new(127, 0, 0, last)))),
            1,
        );
    }
    let zone = Arc::new(zone);
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&name(ZONE)), vec![zone.clone()]);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let mut server = ServerFuture::new(catalog);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    Ok((addr, zone))
}

#[tokio::test]
async fn srv_records_are_the_node_set_and_tokens_carry_primary_and_fallbacks() -> Result<()> {
    let (addr, zone) = dns_server(&["relay-0", "relay-1", "relay-2", "relay-3"]).await?;
    let src = NodeSource::parse(&format!("dns-srv:{SRV_NAME}@{addr}"))?;
    let set = NodeSet::from_source(src).await?;
    let nodes: Vec<String> = set.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["relay-0", "relay-1", "relay-2", "relay-3"]);

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("p.db"))?;
    let key = SigningKey::ed25519_from_seed("k", &[2u8; 32])?;
    let s = SessionId::new("call-7")?;
    let m = Issuer::new(&store, &key, &set).mint(
        s.clone(),
        UserId::new("alice")?,
        DeviceId::new("phone")?,
        Duration::from_secs(60),
    )?;
    let listed: Vec<String> = m.nodes.iter().map(|n| n.to_string()).collect();
    assert_eq!(listed.len(), 3, "primary + two fallbacks");
    assert_eq!(
        listed,
        duet_proto::placement::candidates("call-7", &nodes, 3),
        "the one placement function, over the DNS node set"
    );

    // A fifth pod becomes ready: the next refresh sees it.
    zone.upsert(srv("relay-4"), 2).await;
    assert_eq!(set.refresh().await?, 5);
    assert!(set.nodes().iter().any(|n| n.as_str() == "relay-4"));
    Ok(())
}

#[tokio::test]
async fn a_records_name_nodes_by_address_and_a_missing_name_keeps_the_last_set() -> Result<()> {
    let (addr, _zone) = dns_server(&["relay-0"]).await?;
    let set = NodeSet::from_source(NodeSource::parse(&format!("dns-a:{ZONE}@{addr}"))?).await?;
    let nodes: Vec<String> = set.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);

    // A name with no records is an error, and minting keeps its set.
    let gone = NodeSet::from_source(NodeSource::parse(&format!(
        "dns-srv:_none._udp.{ZONE}@{addr}"
    ))?)
    .await;
    assert!(gone.is_err());
    assert_eq!(set.nodes().len(), 3);
    Ok(())
}

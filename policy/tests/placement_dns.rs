//! Placement from the orchestrator's DNS: a real DNS server (hickory-server, in-process on
//! loopback UDP) answers SRV and A records for the relay fleet as a Kubernetes headless
//! Service would; the minter's node set reads them with hickory-resolver, tokens list the
//! session's primary and two fallbacks by rendezvous hashing, and a refresh picks up a
//! node that became ready.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use duet_policy::placement::NodeSource;
use duet_policy::{Issuer, NodeSet, SqliteStore};
use duet_proto::{DeviceId, SessionId, SigningKey, UserId};
use duet_testkit::dns::FleetDns;

/// Ready pods `nodes`, each at 127.0.0.<i+1>:4433.
async fn dns_server(nodes: &[&str]) -> Result<FleetDns> {
    let ready: Vec<(String, SocketAddr)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.to_string(),
                SocketAddr::from(([127, 0, 0, i as u8 + 1], 4433)),
            )
        })
        .collect();
    FleetDns::start(&ready).await
}

#[tokio::test]
async fn srv_records_are_the_node_set_and_tokens_carry_primary_and_fallbacks() -> Result<()> {
    let dns = dns_server(&["relay-0", "relay-1", "relay-2", "relay-3"]).await?;
    let src = NodeSource::parse(&dns.srv_source())?;
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
    dns.add("relay-4", SocketAddr::from(([127, 0, 0, 5], 4433)))
        .await?;
    assert_eq!(set.refresh().await?, 5);
    assert!(set.nodes().iter().any(|n| n.as_str() == "relay-4"));
    Ok(())
}

#[tokio::test]
async fn a_records_name_nodes_by_address_and_a_missing_name_keeps_the_last_set() -> Result<()> {
    let dns = dns_server(&["relay-0", "relay-1", "relay-2"]).await?;
    let set = NodeSet::from_source(NodeSource::parse(&dns.a_source())?).await?;
    let nodes: Vec<String> = set.nodes().iter().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);

    // A name with no records is an error, and minting keeps its set.
    let gone = NodeSet::from_source(NodeSource::parse(&format!(
        "dns-srv:_none._udp.{}@{}",
        duet_testkit::dns::ZONE,
        dns.addr()
    ))?)
    .await;
    assert!(gone.is_err());
    assert_eq!(set.nodes().len(), 3);
    Ok(())
}

//! External-relay mode: two relay nodes (started in this test process through the relay
//! library, each with its own self-signed certificate, both trusting one token key), calls spread
//! over them by rendezvous hashing, tokens carrying the node claim, metrics scraped over HTTP.

mod common;

use std::net::SocketAddr;

use duet_loadtest::report::Report;
use duet_proto::placement;
use duet_relay::{Config, Relay, TokenKeyConfig};

#[test]
fn calls_spread_over_two_relays_as_placement_says() {
    let dir = tempfile::tempdir().unwrap();
    // The load tester mints with the signing key; the relays hold only its public half.
    let signing = duet_proto::SigningKey::ed25519_from_seed("k1", &[0x5a; 32]).unwrap();
    let key = dir.path().join("k1.seed");
    std::fs::write(&key, signing.seed_hex().unwrap().as_str()).unwrap();
    let public = dir.path().join("k1.pub");
    std::fs::write(&public, signing.verifying_key().public_hex().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = |node: &str| {
        let cfg = Config {
            data_dir: dir.path().join(node),
            node_id: node.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_keys: vec![TokenKeyConfig {
                id: "k1".into(),
                public_key_file: Some(public.clone()),
                secret_file: None,
            }],
            ..Config::default()
        };
        rt.block_on(Relay::start(cfg)).unwrap()
    };
    let (r1, r2) = (start("n1"), start("n2"));
    // One PEM trusting both self-signed certificates.
    let pem = dir.path().join("relays.pem");
    std::fs::write(&pem, [r1.cert_pem(), r2.cert_pem()].concat()).unwrap();
    let report = dir.path().join("r.json");
    let calls = 8u64;
    let out = common::bin()
        .args([
            "--calls",
            &calls.to_string(),
            "--duration",
            "1s",
            "--profile",
            "audio",
        ])
        .args(["--run-id", "ext1", "--progress", "off"])
        .arg("--relay")
        .arg(format!("n1={}", r1.quic_addr()))
        .arg("--relay")
        .arg(format!("n2={}", r2.quic_addr()))
        .arg("--relay-metrics")
        .arg(r1.ops_addr().to_string())
        .arg("--relay-metrics")
        .arg(r2.ops_addr().to_string())
        .arg("--cert")
        .arg(&pem)
        .arg("--token-key-file")
        .arg(&key)
        .args(["--token-key-id", "k1", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r.calls.established, calls, "{:?}", r.calls);
    assert!(!r.config.embedded_relay);

    // Exactly where rendezvous hashing puts each session (a misplaced token would have been
    // refused with wrong_node).
    let nodes = ["n1", "n2"];
    let mut want = std::collections::BTreeMap::new();
    for i in 0..calls {
        let n = placement::place(&format!("lt-ext1-{i}"), &nodes).unwrap();
        *want.entry(nodes[n].to_owned()).or_insert(0u64) += 1;
    }
    assert_eq!(r.calls.per_node, want);

    // Both relays' metrics were scraped; they forwarded what was placed on them.
    assert_eq!(r.relays.len(), 2);
    for (obs, name) in r.relays.iter().zip(["n1", "n2"]) {
        assert_eq!(obs.source, "metrics");
        if want.get(name).copied().unwrap_or(0) > 0 {
            assert!(obs.forwarded_packets.unwrap_or(0) > 0, "{obs:?}");
        }
    }
    assert!(r.media.audio.frames_received > 0);
    assert!(r.media.audio.loss_ratio < 0.02);
    rt.block_on(async {
        r1.shutdown().await;
        r2.shutdown().await;
    });
}

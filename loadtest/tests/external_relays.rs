//! External-relay mode: two relay nodes (started in this test process through the relay
//! library, each with its own self-signed certificate and a shared token key), calls spread
//! over them by rendezvous hashing, tokens carrying the node claim, metrics scraped over HTTP.

mod common;

use std::net::SocketAddr;

use duet_loadtest::placement;
use duet_loadtest::report::Report;
use duet_relay::{Config, Relay, TokenKeyConfig};

#[test]
fn calls_spread_over_two_relays_as_placement_says() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k1.hex");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
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
                secret_file: key.clone(),
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

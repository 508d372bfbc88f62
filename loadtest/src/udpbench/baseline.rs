//! The `baseline` target: the C `fwd` protocol (8-byte session id; the first two source
//! addresses of a session pair up). Hellos from every A, then every B, like `loadgen.c`,
//! so B's hello comes back at A and proves the pair; then the shared raw window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{bind_net, finish_raw, random_base, relay_sample, Measured, SetupReport};
use crate::cli::UdpArgs;
use crate::udp::{self, RecvStats};
use crate::udpgen::Endpoints;

/// A hello packet: the probe with the hello sequence number.
fn hello(prefix: &[u8], size: usize) -> Vec<u8> {
    let mut b = vec![0x5a; size];
    b[..prefix.len()].copy_from_slice(prefix);
    udp::write_probe(&mut b, prefix.len(), udp::now_ns(), udp::HELLO_SEQ);
    b
}

pub(super) fn run(a: &UdpArgs) -> anyhow::Result<Measured> {
    let nep = 2 * a.pairs as usize;
    let size = a.size as usize;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let net = bind_net(a, nep)?;
    let base = random_base();
    let prefixes: Vec<Vec<u8>> = (0..nep)
        .map(|e| (base + (e / 2) as u64).to_be_bytes().to_vec())
        .collect();
    let dest = udp::v4(a.target.addr)?;
    let dests = vec![dest; nep];
    // Hellos: every A, then every B, so the relay pairs them (B's hello reaches A).
    let mut hello_fail = 0u64;
    for pass in 0..2 {
        for e in (pass..nep).step_by(2) {
            if net
                .send_to(e, &hello(&prefixes[e], size), SocketAddr::V4(dest))
                .is_err()
            {
                hello_fail += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Count the hellos that came back (they sit in the A endpoints' socket buffers).
    let mut hellos = RecvStats::default();
    let mut buf = [0u8; udp::MAX_PACKET];
    for s in 0..net.sockets() {
        while let Ok(Some(r)) = net.recv_from(s, &mut buf) {
            match r.endpoint {
                Some(e) => hellos.on_packet(&buf[..r.len], &prefixes[e], udp::now_ns()),
                None => hellos.bad += 1,
            }
        }
    }
    let mut setup = SetupReport {
        pairs_ready: hellos.hellos.min(u64::from(a.pairs)) as u32,
        pairs_failed: 0,
        failures: BTreeMap::new(),
        hellos_back: Some(hellos.hellos),
        binds_confirmed: None,
        channels_bound: None,
        setup_s: t.elapsed().as_secs_f64(),
    };
    setup.pairs_failed = a.pairs - setup.pairs_ready;
    if hello_fail > 0 {
        setup.failures.insert("hello_send".into(), hello_fail);
    }
    let mut warnings = Vec::new();
    if hellos.hellos < u64::from(a.pairs) {
        warnings.push(format!(
            "only {} of {} hellos came back: is the forwarder running at {}?",
            hellos.hellos, a.pairs, a.target.addr
        ));
    }
    let eps = Endpoints {
        net,
        active: (0..nep).collect(),
        dests,
        expect: Arc::new(prefixes.clone()),
        prefixes,
    };
    finish_raw(a, eps, setup, None, rss0, warnings)
}

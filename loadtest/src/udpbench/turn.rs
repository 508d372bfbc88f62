//! The `turn` target: a TURN server (coturn in `benches/run-system.sh`) relaying both
//! endpoints of each pair, the way a 1:1 call runs when both sides are behind TURN. Each
//! endpoint allocates a relayed address with `--turn-user`, permits and binds a channel to
//! its peer's relayed address ([`crate::turnctl`]), then sends ChannelData to the server's
//! listener and receives its peer's as ChannelData: `--size` bytes on the client legs, a
//! 4-byte header and the same probe as every other target. So each forwarded packet
//! crosses the server twice (client leg in, relayed address to relayed address, client leg
//! out), which is what TURN costs for such a call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{bind_net, finish_raw, relay_sample, Measured, SetupReport};
use crate::cli::UdpArgs;
use crate::turnctl::{self, CHANNEL_HEADER_LEN};
use crate::udp;
use crate::udpgen::Endpoints;

/// Longest `--duration` for this target: permissions last 300 s (RFC 8656 §9) and the
/// bench does not refresh them during the window.
const MAX_DURATION: Duration = Duration::from_secs(240);

pub(super) fn validate(a: &UdpArgs) -> Result<(), String> {
    if a.turn_user.is_none() {
        return Err("--target turn: --turn-user USER:PASSWORD is required".into());
    }
    if a.duration > MAX_DURATION {
        return Err(
            "--target turn: --duration is at most 4m (TURN permissions last 5 minutes and are not refreshed)"
                .into(),
        );
    }
    Ok(())
}

pub(super) fn run(a: &UdpArgs) -> anyhow::Result<Measured> {
    let cred = a
        .turn_user
        .as_ref()
        .context("--turn-user is required for --target turn")?;
    let nep = 2 * a.pairs as usize;
    let size = a.size as usize;
    let (_, rss0) = relay_sample(a.relay_pid);
    let t = Instant::now();
    let net = bind_net(a, nep)?;
    let server = a.target.addr;
    let (session, results) = turnctl::setup_pairs(&net, server, cred, size - CHANNEL_HEADER_LEN);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut active = Vec::with_capacity(nep);
    for p in 0..a.pairs as usize {
        match (&results[2 * p], &results[2 * p + 1]) {
            (Ok(_), Ok(_)) => active.extend([2 * p, 2 * p + 1]),
            (Err(e), _) | (_, Err(e)) => *failures.entry(e.label().into()).or_default() += 1,
        }
    }
    let bound = results.iter().filter(|r| r.is_ok()).count() as u64;
    let mut warnings = Vec::new();
    if bound < nep as u64 {
        warnings.push(format!(
            "{} of {nep} endpoints got no TURN channel (see setup.failures): is the TURN server at {server} running, with --turn-user's credential and loopback peers allowed?",
            nep as u64 - bound
        ));
    }
    let setup = SetupReport {
        pairs_ready: (active.len() / 2) as u32,
        pairs_failed: a.pairs - (active.len() / 2) as u32,
        failures,
        hellos_back: None,
        binds_confirmed: None,
        channels_bound: Some(bound),
        setup_s: t.elapsed().as_secs_f64(),
    };
    // Only the ready pairs send; the server frames a relayed payload with the receiver's
    // own channel number, so an endpoint receives its own header.
    let prefixes: Vec<Vec<u8>> = results
        .iter()
        .map(|r| r.as_ref().map(|b| b.header.to_vec()).unwrap_or_default())
        .collect();
    let eps = Endpoints {
        net: net.clone(),
        active,
        dests: vec![udp::v4(server)?; nep],
        expect: Arc::new(prefixes.clone()),
        prefixes,
    };
    let m = finish_raw(a, eps, setup, None, rss0, warnings);
    session.release(&net);
    m
}

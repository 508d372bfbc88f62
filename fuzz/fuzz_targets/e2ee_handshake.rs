//! The SDK's end-to-end handshake, fed what a hostile relay may put in `Signal`s: both
//! roles, every message a sequence of `u16 BE length | bytes` pieces, plus the relay's
//! `PeerE2eeUnavailable` token. Nothing may panic; every outcome is typed.
#![no_main]
use std::sync::{Arc, OnceLock};

use duet_proto::E2eeClaim;
use duet_sdk::e2ee::test_support::config;
use duet_sdk::e2ee::{Handshake, IdentityKey, Role, Start};
use libfuzzer_sys::fuzz_target;

fn identity() -> &'static Arc<IdentityKey> {
    static ID: OnceLock<Arc<IdentityKey>> = OnceLock::new();
    ID.get_or_init(|| Arc::new(IdentityKey::from_seed(&[5; 32]).expect("a key")))
}

fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        out.push(&data[2..2 + n]);
        data = &data[2 + n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let role = if which & 1 == 0 {
        Role::Responder
    } else {
        Role::Initiator
    };
    let cfg = config(role, identity(), "fuzz-session", E2eeClaim::Allowed);
    let Ok(Start::Proceed { mut handshake, .. }) = Handshake::start(cfg) else {
        return;
    };
    if which & 2 != 0 {
        let _ = handshake.on_peer_unavailable(&String::from_utf8_lossy(rest));
        return;
    }
    for m in pieces(rest) {
        if handshake.on_signal(m).is_err() {
            break;
        }
    }
});

//! The SDK's SFrame opener and what sits on top of it (the padding trailer, the key
//! confirmation), fed frames a hostile relay may forge: a sequence of `u16 BE length |
//! bytes` frames (media, key confirmations, hybrid-rekey messages) opened in order under one receiver, the first byte of each choosing the
//! media kind (its SFrame metadata). Nothing may panic; nothing forged may open.
#![no_main]
use std::time::{Duration, Instant};

use duet_sdk::e2ee::{pcs, CipherSuite, Direction, FrameOpener, RekeyPolicy};
use duet_sdk::engine::{confirm, padding};
use libfuzzer_sys::fuzz_target;

/// The root the seeds were sealed under (see client-sdk/tests/fuzz_seeds.rs).
pub const ROOT: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let root = zeroize_root();
    let Ok(mut opener) = FrameOpener::new(
        CipherSuite::default(),
        Direction::AtoB,
        root,
        RekeyPolicy::default(),
    ) else {
        return;
    };
    let now = Instant::now();
    let mut rest = data;
    let mut i = 0u64;
    while rest.len() >= 2 {
        let n = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let frame = &rest[2..2 + n];
        rest = &rest[2 + n..];
        let t = now + Duration::from_millis(i * 10);
        i += 1;
        if confirm::is_confirm(frame) {
            let _ = confirm::open(&mut opener, t, frame);
            continue;
        }
        if pcs::is_pcs(frame) {
            let _ = pcs::open(&mut opener, t, frame);
            continue;
        }
        let Some((&kind, body)) = frame.split_first() else {
            continue;
        };
        let mut out = Vec::new();
        if opener.open_with_metadata_into(t, &[kind], body, &mut out).is_ok() {
            let _ = padding::unpad(&out);
        }
    }
});

fn zeroize_root() -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(ROOT.to_vec())
}

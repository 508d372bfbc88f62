//! Token verification on attacker-chosen strings.
#![no_main]
use duet_proto::{TokenKey, TokenKeyring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(key) = TokenKey::new("k1", &[7u8; 32]) else { return };
    let ring = TokenKeyring::new(vec![key]);
    let _ = ring.verify(s, 1_700_000_000, 30);
});

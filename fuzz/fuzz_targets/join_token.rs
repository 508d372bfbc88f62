//! Token verification and the SDK's unverified read on attacker-chosen strings, under both
//! an Ed25519 key and a legacy HMAC key.
#![no_main]
use duet_proto::{JoinToken, SigningKey, TokenKeyring, VerifyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (Ok(ed), Ok(hmac)) = (
        SigningKey::ed25519_from_seed("k1", &[7u8; 32]),
        SigningKey::legacy_hmac("k2", &[7u8; 32]),
    ) else {
        return;
    };
    let ring = TokenKeyring::new(vec![ed.verifying_key(), hmac.verifying_key()]);
    let _ = ring.verify(s, &VerifyOptions::at(1_700_000_000));
    let _ = JoinToken::peek(s);
});

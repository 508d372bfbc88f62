//! The relay's configuration file on attacker-chosen (or typo-ridden) TOML: parsing and
//! validation must refuse with a typed error naming the field, never panic.
#![no_main]
use std::path::Path;

use duet_relay::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = Config::from_toml(text, Path::new("fuzz.toml")) {
        let _ = cfg.validate();
        let _ = cfg.fast_path.listen_addr(cfg.listen);
    }
});

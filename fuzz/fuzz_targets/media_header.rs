//! The one per-packet parse the relay does.
#![no_main]
use duet_proto::MediaHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, payload)) = MediaHeader::parse(data) {
        assert_eq!(h.to_bytes().len() + payload.len(), data.len());
    }
});

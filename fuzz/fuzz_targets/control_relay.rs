//! What the SDK parses from a relay: length-prefixed RelayMessage frames.
#![no_main]
use duet_proto::{FrameDecoder, RelayMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::default();
    dec.extend(data);
    while let Ok(Some(_)) = dec.next_message::<RelayMessage>() {}
});

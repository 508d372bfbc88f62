//! What the relay parses from an endpoint: length-prefixed ClientMessage frames.
#![no_main]
use duet_proto::{ClientMessage, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::default();
    // Feed in two halves so partial-frame handling is exercised too.
    let (a, b) = data.split_at(data.len() / 2);
    dec.extend(a);
    while let Ok(Some(_)) = dec.next_message::<ClientMessage>() {}
    dec.extend(b);
    while let Ok(Some(_)) = dec.next_message::<ClientMessage>() {}
});

//! The SDK's reassembly of media pieces from datagrams the relay forwarded.
#![no_main]
use std::time::{Duration, Instant};

use duet_sdk::fragment::Reassembler;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(Duration::from_millis(500));
    let now = Instant::now();
    // Treat the input as a sequence of datagrams, each prefixed by one length byte.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let _ = r.push(bytes::Bytes::copy_from_slice(&tail[..n]), now);
        rest = &tail[n..];
    }
    r.expire(now + Duration::from_secs(1));
});

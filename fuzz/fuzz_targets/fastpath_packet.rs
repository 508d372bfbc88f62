//! Every fast-path datagram the relay parses: the header, then (for BIND) the ticket,
//! under a fixed key, from a fixed source. Must never panic; a parsed header re-encodes to
//! the same bytes; a ticket that verifies re-encodes to the same bytes.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use duet_proto::fastpath::{FastPathHeader, FastPathKey, FastPathTicket, PacketType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((h, payload)) = FastPathHeader::parse(data) else {
        return;
    };
    assert_eq!(h.to_bytes()[..], data[..data.len() - payload.len()]);
    if h.ty == PacketType::Bind {
        let Ok(key) = FastPathKey::new(&[7u8; 32]) else {
            return;
        };
        let src = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if let Ok(t) = FastPathTicket::verify(payload, &key, src, 0) {
            assert_eq!(&t.encode(&key)[..], payload);
        }
    }
});

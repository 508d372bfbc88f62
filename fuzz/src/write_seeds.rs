//! Writes the seed corpus every fuzz target starts from, `fuzz/seeds/<target>/`, built from
//! real messages of the current wire formats, so a short CI smoke run already exercises the
//! deep paths (a valid Join, a valid ticket, a token with every claim) instead of spending
//! its seconds finding the first valid length prefix. Run from `fuzz/`:
//! `cargo run --bin write_seeds`. Targets owned elsewhere (the SDK's handshake and SFrame
//! targets) write their seeds from their own tests.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use duet_proto::control::encode;
use duet_proto::fastpath::{FastPathHeader, FastPathKey, FastPathTicket, PacketType};
use duet_proto::{
    ChannelId, ClientMessage, DeviceId, E2eeClaim, Feature, JoinClaims, JoinToken, MediaHeader,
    MediaKind, NodeId, RefusalReason, RelayMessage, ResumeSecret, SessionId, SigningKey, UserId,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).expect("create the seed directory");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn frames(msgs: &[impl serde::Serialize]) -> Vec<u8> {
    msgs.iter()
        .flat_map(|m| encode(m).expect("encodes").to_vec())
        .collect()
}

fn main() {
    let sid = SessionId::new("call-1").expect("id");
    let claims = JoinClaims::builder(
        sid.clone(),
        UserId::new("alice").expect("id"),
        DeviceId::new("phone").expect("id"),
    )
    .issued_at(1_700_000_000)
    .ttl(Duration::from_secs(600))
    .nodes(vec![
        NodeId::new("relay-0").expect("id"),
        NodeId::new("relay-1").expect("id"),
    ])
    .e2ee(E2eeClaim::Allowed)
    .identity_key(Some([9; 32]))
    .build()
    .expect("claims");
    // The key the join_token target trusts.
    let ed = SigningKey::ed25519_from_seed("k1", &[7u8; 32]).expect("key");
    let hmac = SigningKey::legacy_hmac("k2", &[7u8; 32]).expect("key");
    let token = JoinToken::mint(&ed, &claims);
    write("join_token", "ed25519", token.as_bytes());
    write(
        "join_token",
        "legacy",
        JoinToken::mint(&hmac, &claims).as_bytes(),
    );

    let join = ClientMessage::Join {
        session: sid.clone(),
        token: token.clone(),
        resume: Some(ResumeSecret([3; 32])),
        e2ee: true,
    };
    write(
        "control_client",
        "session",
        &frames(&[
            join,
            ClientMessage::Signal(Bytes::from_static(b"handshake bytes")),
            ClientMessage::Request(Feature::Recording),
            ClientMessage::Ping(7),
            ClientMessage::FastPathTicket,
            ClientMessage::FastPathUnbind,
            ClientMessage::Leave,
        ]),
    );
    write(
        "control_relay",
        "session",
        &frames(&[
            RelayMessage::PeerJoined,
            RelayMessage::Signal(Bytes::from_static(b"handshake bytes")),
            RelayMessage::FeatureRefused {
                feature: Feature::Transfer,
                reason: RefusalReason::PlaintextRequired,
            },
            RelayMessage::PeerE2eeUnavailable {
                claim: E2eeClaim::ComplianceRecording,
                token: token.clone(),
            },
            RelayMessage::FastPathBound {
                channel: ChannelId(0x1_0000_0002),
                addr: "127.0.0.1:5000".parse().expect("addr"),
            },
            RelayMessage::Draining {
                deadline_ms: 30_000,
            },
            RelayMessage::Pong(7),
        ]),
    );

    for kind in MediaKind::ALL {
        let mut d = MediaHeader::new(kind).to_bytes().to_vec();
        d.extend_from_slice(b"opaque sealed payload");
        write("media_header", kind.as_str(), &d);
    }

    let key = FastPathKey::new(&[7u8; 32]).expect("key");
    let ticket = FastPathTicket {
        channel: ChannelId(0x2_0000_0004),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        expires_unix: 1_800_000_000,
        seq: 1,
    };
    write("fastpath_packet", "bind", &ticket.bind_packet(&key));
    let mut media = FastPathHeader::new(PacketType::Media(MediaKind::Audio), ticket.channel)
        .to_bytes()
        .to_vec();
    media.extend_from_slice(b"opaque sealed payload");
    write("fastpath_packet", "media", &media);

    // The channel table: operations of 4 bytes (op, a, b, c; see the target), then raw
    // datagrams inline. A call's life: allocate, both sides bind, media both ways, a NAT
    // move with a fresh ticket, a stale replay, a spoofed sender, a raw media datagram for
    // the first channel, unbind, release, media after release, then allocate past capacity.
    let first = ChannelId(1 << 32);
    let mut raw = FastPathHeader::new(PacketType::Media(MediaKind::Audio), first)
        .to_bytes()
        .to_vec();
    raw.extend_from_slice(b"0123456789");
    let mut ops: Vec<u8> = [
        [0, 0, 0, 0],
        [2, 0, 0, 2],
        [2, 0, 2, 3],
        [3, 0, 0, 0],
        [3, 0, 2, 1],
        [2, 0, 1, 4],
        [2, 0, 0, 2],
        [3, 0, 4, 0],
        [3, 0, 1, 6],
    ]
    .concat();
    ops.extend_from_slice(&[5, 20, 1, 0]);
    ops.extend_from_slice(&raw);
    ops.extend_from_slice(&[[4, 0, 2, 1], [3, 0, 2, 1], [1, 0, 0, 0], [3, 0, 1, 0]].concat());
    ops.extend_from_slice(&[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]].concat());
    write("fastpath_table", "call", &ops);
    // Expired tickets and tickets for another address (op flags 0x80, 0x40), and IPv6.
    write(
        "fastpath_table",
        "refused_binds",
        &[
            [0, 0, 0, 0],
            [0x82, 0, 0, 2],
            [0x42, 2, 0, 2],
            [2, 0, 3, 2],
            [3, 0, 3, 0],
        ]
        .concat(),
    );

    // Fragment reassembly: length-prefixed datagrams as the target reads them.
    let mut pieces = Vec::new();
    for d in [&media[..], &[1u8, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0][..]] {
        pieces.push(u8::try_from(d.len()).unwrap_or(u8::MAX));
        pieces.extend_from_slice(d);
    }
    write("fragment", "two", &pieces);

    write(
        "config",
        "example",
        include_bytes!("../../relay/duet-relay.example.toml"),
    );
    write(
        "config",
        "keys",
        b"node_id = \"n1\"\n[[token_keys]]\nid = \"k1\"\npublic_key_file = \"/k\"\n[limits]\nmax_sessions = 3\n[fast_path]\nworkers = 2\n",
    );
    println!("seeds written under fuzz/seeds/");
}

//! Writes the seeds of the SDK's fuzz targets (`fuzz/seeds/e2ee_handshake/`,
//! `fuzz/seeds/sframe_open/`) from real messages of the current wire format, so a short
//! smoke run reaches the deep paths (a verifying token, a frame that opens). Run after a
//! wire change: `DUET_WRITE_SEEDS=1 cargo test -p duet-sdk --test fuzz_seeds -- --ignored`.
//! Without the variable, checks that the committed seeds exist.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use duet_proto::{E2eeClaim, MediaKind};
use duet_sdk::e2ee::test_support::{config, token};
use duet_sdk::e2ee::{
    CipherSuite, Direction, FrameSealer, Handshake, IdentityKey, RekeyPolicy, Role, Start, Step,
};
use duet_sdk::engine::confirm::{self, Confirm, ConfirmKind};
use duet_sdk::engine::padding::{self, Padding};

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir(target)).unwrap();
    std::fs::write(dir(target).join(name), bytes).unwrap();
}

fn pieces(ms: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in ms {
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

#[test]
fn the_committed_seeds_exist() {
    for t in ["e2ee_handshake", "sframe_open"] {
        let n = std::fs::read_dir(dir(t)).map(|d| d.count()).unwrap_or(0);
        assert!(n > 0, "no seeds for {t}: run this file's writer");
    }
}

#[test]
#[ignore = "writes fuzz/seeds; run with DUET_WRITE_SEEDS=1"]
fn write_seeds() {
    if std::env::var_os("DUET_WRITE_SEEDS").is_none() {
        return;
    }
    // Handshake: what a responder gets first (a Commit, a Decline), what an initiator gets
    // (a Hello), with tokens the fuzz target's test issuer verifies.
    let id = |s| Arc::new(IdentityKey::from_seed(&[s; 32]).unwrap());
    let s = "fuzz-session";
    let Start::Proceed {
        handshake: mut a,
        send: Some(commit),
    } = Handshake::start(config(Role::Initiator, &id(1), s, E2eeClaim::Allowed)).unwrap()
    else {
        panic!()
    };
    let Start::Proceed {
        handshake: mut b, ..
    } = Handshake::start(config(Role::Responder, &id(2), s, E2eeClaim::Allowed)).unwrap()
    else {
        panic!()
    };
    let Step::Send(hello) = b.on_signal(&commit).unwrap() else {
        panic!()
    };
    let Step::Send(reveal) = a.on_signal(&hello).unwrap() else {
        panic!()
    };
    let Start::Declined { send: decline, .. } = Handshake::start(config(
        Role::Responder,
        &id(3),
        s,
        E2eeClaim::ComplianceRecording,
    ))
    .unwrap() else {
        panic!()
    };
    // Byte 0: bit 0 = initiator, bit 1 = the relay's PeerE2eeUnavailable token.
    let seed = |role: u8, ms: &[&[u8]]| [vec![role], pieces(ms)].concat();
    write("e2ee_handshake", "responder-commit", &seed(0, &[&commit]));
    write(
        "e2ee_handshake",
        "responder-commit-reveal",
        &seed(0, &[&commit, &reveal]),
    );
    write("e2ee_handshake", "initiator-hello", &seed(1, &[&hello]));
    write("e2ee_handshake", "initiator-decline", &seed(1, &[&decline]));
    let forbidding = token(s, "bob", E2eeClaim::ComplianceRecording);
    write(
        "e2ee_handshake",
        "relay-notice",
        &[vec![3u8], forbidding.into_bytes()].concat(),
    );

    // SFrame: frames sealed under the fuzz target's root, in order, then a confirmation.
    let now = Instant::now();
    let root = zeroize::Zeroizing::new(vec![0x42u8; 32]);
    let mut sealer = FrameSealer::new(
        CipherSuite::default(),
        Direction::AtoB,
        root,
        RekeyPolicy::default(),
    )
    .unwrap();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for (i, mode) in [Padding::Off, Padding::Buckets, Padding::ConstantAudio(160)]
        .into_iter()
        .enumerate()
    {
        let mut plain = Vec::new();
        padding::pad(
            mode,
            MediaKind::Audio,
            &vec![i as u8; 40 + i * 300],
            &mut plain,
        );
        let mut f = vec![MediaKind::Audio as u8];
        sealer
            .seal_with_metadata_into(now, &[MediaKind::Audio as u8], &plain, &mut f)
            .unwrap();
        frames.push(f);
    }
    sealer.rekey(now).unwrap();
    let mut f = vec![MediaKind::Video as u8];
    sealer
        .seal_with_metadata_into(now, &[MediaKind::Video as u8], &[0, 0], &mut f)
        .unwrap();
    frames.push(f);
    frames.push(
        confirm::seal(
            &mut sealer,
            now,
            Confirm {
                kind: ConfirmKind::Request,
                nonce: [1; confirm::NONCE_LEN],
            },
        )
        .unwrap(),
    );
    let (_, offer) = duet_sdk::e2ee::pcs::offer(&mut sealer, now, 1 << 20).unwrap();
    frames.push(offer);
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    write("sframe_open", "sealed-in-order", &pieces(&refs));
    write(
        "sframe_open",
        "replayed",
        &pieces(&[refs[0], refs[0], refs[1]]),
    );
}

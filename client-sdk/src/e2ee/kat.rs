//! Known-answer vectors: fixed inputs (seeds, shares, nonces, tokens, the ML-KEM values)
//! to every derived value of a handshake and its first frames, computed with the code the
//! SDK runs (wire encoders, key schedule, signatures, SFrame). The vectors live in
//! `docs/e2ee-vectors.json` next to `docs/protocol.md`, so a second implementation can be
//! checked from the document alone; this test replays them.
//!
//! ML-KEM-768's own randomness cannot be fixed through aws-lc-rs, so the vectors give its
//! encapsulation key, ciphertext and shared secret as inputs (FIPS 203 has ML-KEM's own
//! vectors). Ed25519 signatures are deterministic, so they are outputs.
//!
//! Regenerate (only when the protocol changes on purpose):
//! `DUET_WRITE_VECTORS=1 cargo test -p duet-sdk --lib e2ee::kat -- --ignored`.

use std::time::Instant;

use aws_lc_rs::agreement::{self, PrivateKey, X25519};
use duet_proto::hex;
use duet_proto::MediaKind;
use serde_json::{json, Map, Value};

use super::code::SecurityCode;
use super::identity::IdentityKey;
use super::keys::{Direction, FrameSealer, RekeyPolicy};
use super::schedule::{commitment_of, mac, schedule, sha256, th_code};
use super::sframe::{self, CipherSuite};
use super::wire::*;
use crate::engine::confirm::{self, Confirm, ConfirmKind};
use crate::engine::padding::{self, Padding};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/e2ee-vectors.json");

fn h(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap_or_else(|| panic!("input {k}")))
        .unwrap_or_else(|| panic!("hex {k}"))
}

fn arr32(v: &Value, k: &str) -> [u8; 32] {
    h(v, k)
        .try_into()
        .unwrap_or_else(|_| panic!("{k}: 32 bytes"))
}

fn x25519_pub(sk: &[u8]) -> Vec<u8> {
    let k = PrivateKey::from_private_key(&X25519, sk).unwrap();
    k.compute_public_key().unwrap().as_ref().to_vec()
}

fn x25519(sk: &[u8], peer: &[u8]) -> Vec<u8> {
    let k = PrivateKey::from_private_key(&X25519, sk).unwrap();
    agreement::agree(
        &k,
        agreement::UnparsedPublicKey::new(&X25519, peer),
        (),
        |ss| Ok(ss.to_vec()),
    )
    .unwrap()
}

/// Every output from `inputs`.
fn compute(i: &Value) -> Value {
    let suite_id = i["suite"].as_u64().unwrap() as u16;
    let suite = CipherSuite::from_id(suite_id).unwrap();
    let session = i["session"].as_str().unwrap();
    let (token_a, token_b) = (
        i["token_a"].as_str().unwrap(),
        i["token_b"].as_str().unwrap(),
    );
    let ik_a = IdentityKey::from_seed(&arr32(i, "identity_seed_a")).unwrap();
    let ik_b = IdentityKey::from_seed(&arr32(i, "identity_seed_b")).unwrap();
    let (xa, xb) = (h(i, "x25519_private_a"), h(i, "x25519_private_b"));
    let (xa_pub, xb_pub) = (x25519_pub(&xa), x25519_pub(&xb));
    let (n_a, n_b) = (h(i, "nonce_a"), h(i, "nonce_b"));
    let (ek, ct, ss_kem) = (
        h(i, "mlkem_ek_b"),
        h(i, "mlkem_ct"),
        h(i, "mlkem_shared_secret"),
    );
    let plaintext = h(i, "frame_plaintext");

    let a_hello = encode_a_hello(suite_id, &ik_a.public_key(), &xa_pub, &n_a);
    let commitment = commitment_of(&a_hello);
    let commit = encode_commit(suite_id, &commitment, token_a);
    let hello = encode_hello(suite_id, &ik_b.public_key(), &xb_pub, &n_b, &ek, token_b);
    let ss_x = x25519(&xa, &xb_pub);
    assert_eq!(ss_x, x25519(&xb, &xa_pub), "X25519 agrees both ways");
    let th = th_code(session.as_bytes(), &commit, &hello, &a_hello);
    let sec = schedule(suite, &th, &ct, &ss_kem, &ss_x).unwrap();
    let sig_a = ik_a.sign(b"duet-e2ee/1 sig A", &sec.th_a);
    let mac_a = mac(&sec.fin_a, &sec.th_a);
    let reveal = encode_reveal(&a_hello, &ct, &sig_a, &mac_a);
    let th_full = sha256(&[&sec.th_a, &sig_a, &mac_a]);
    let sig_b = ik_b.sign(b"duet-e2ee/1 sig B", &th_full);
    let mac_b = mac(&sec.fin_b, &th_full);
    let finished = encode_finished(&sig_b, &mac_b);
    let code = SecurityCode::from_transcript(&th);

    // A's first audio frame (padding off: the 2-byte trailer) and its first key
    // confirmation request, both under epoch 0 of A->B; then B's first frame.
    let now = Instant::now();
    let root_ab = zeroize::Zeroizing::new(sec.roots.a_to_b.to_vec());
    let root_ba = zeroize::Zeroizing::new(sec.roots.b_to_a.to_vec());
    let mut sealer_a = FrameSealer::new(
        suite,
        Direction::AtoB,
        root_ab.clone(),
        RekeyPolicy::default(),
    )
    .unwrap();
    let mut sealer_b = FrameSealer::new(
        suite,
        Direction::BtoA,
        root_ba.clone(),
        RekeyPolicy::default(),
    )
    .unwrap();
    let mut padded = Vec::new();
    padding::pad(Padding::Off, MediaKind::Audio, &plaintext, &mut padded);
    let mut frame_a0 = Vec::new();
    sealer_a
        .seal_with_metadata_into(now, &[MediaKind::Audio as u8], &padded, &mut frame_a0)
        .unwrap();
    let confirm_a1 = confirm::seal(
        &mut sealer_a,
        now,
        Confirm {
            kind: ConfirmKind::Request,
            nonce: [0x77; confirm::NONCE_LEN],
        },
    )
    .unwrap();
    let mut frame_b0 = Vec::new();
    sealer_b
        .seal_with_metadata_into(now, &[MediaKind::Audio as u8], &padded, &mut frame_b0)
        .unwrap();
    let e = |b: &[u8]| Value::String(hex::encode(b));
    json!({
        "identity_public_a": e(&ik_a.public_key()),
        "identity_public_b": e(&ik_b.public_key()),
        "x25519_public_a": e(&xa_pub),
        "x25519_public_b": e(&xb_pub),
        "hello_a": e(&a_hello),
        "commitment": e(&commitment),
        "commit": e(&commit),
        "hello": e(&hello),
        "x25519_shared_secret": e(&ss_x),
        "th_code": e(&th),
        "th_a": e(&sec.th_a),
        "finished_key_a": e(&sec.fin_a),
        "finished_key_b": e(&sec.fin_b),
        "root_a_to_b": e(&sec.roots.a_to_b),
        "root_b_to_a": e(&sec.roots.b_to_a),
        "chain": e(&sec.roots.chain),
        "sig_a": e(&sig_a),
        "mac_a": e(&mac_a),
        "reveal": e(&reveal),
        "th_full": e(&th_full),
        "sig_b": e(&sig_b),
        "mac_b": e(&mac_b),
        "finished": e(&finished),
        "security_code": code.to_string(),
        "kid_a_to_b_epoch0": Direction::AtoB.kid(0),
        "kid_b_to_a_epoch0": Direction::BtoA.kid(0),
        "kid_a_to_b_epoch1": Direction::AtoB.kid(1),
        "root_a_to_b_epoch1": e(&sframe::ratchet(suite, &root_ab).unwrap()),
        "frame_a_to_b_ctr0": e(&frame_a0),
        "confirm_request_a_to_b_ctr1": e(&confirm_a1),
        "frame_b_to_a_ctr0": e(&frame_b0),
    })
}

fn inputs() -> Value {
    use aws_lc_rs::kem::{DecapsulationKey, ML_KEM_768};
    use duet_proto::E2eeClaim;
    let dk = DecapsulationKey::generate(&ML_KEM_768).unwrap();
    let ek = dk.encapsulation_key().unwrap();
    let (ct, ss) = ek.encapsulate().unwrap();
    let e = |b: &[u8]| Value::String(hex::encode(b));
    json!({
        "suite": CipherSuite::default().id(),
        "session": "kat-session",
        "token_a": super::test_support::token("kat-session", "alice", E2eeClaim::Allowed),
        "token_b": super::test_support::token("kat-session", "bob", E2eeClaim::Allowed),
        "identity_seed_a": e(&[0x11; 32]),
        "identity_seed_b": e(&[0x12; 32]),
        "x25519_private_a": e(&[0x21; 32]),
        "x25519_private_b": e(&[0x22; 32]),
        "nonce_a": e(&[0x31; 32]),
        "nonce_b": e(&[0x32; 32]),
        "mlkem_ek_b": e(ek.key_bytes().unwrap().as_ref()),
        "mlkem_ct": e(ct.as_ref()),
        "mlkem_shared_secret": e(ss.as_ref()),
        "frame_plaintext": e(b"20 ms of audio"),
    })
}

#[test]
fn replays_the_known_answer_vectors() {
    let text = std::fs::read_to_string(PATH).expect("docs/e2ee-vectors.json");
    let v: Value = serde_json::from_str(&text).expect("vectors are JSON");
    assert_eq!(
        v["version"], HANDSHAKE_VERSION as u64,
        "vectors for this wire version"
    );
    let got = compute(&v["inputs"]);
    let want: &Map<String, Value> = v["outputs"].as_object().expect("outputs");
    let got = got.as_object().unwrap();
    assert_eq!(got.len(), want.len(), "same set of outputs");
    for (k, w) in want {
        assert_eq!(got.get(k), Some(w), "output {k}");
    }
    // The messages parse as the handshake parses them.
    for k in ["commit", "hello", "reveal", "finished"] {
        let m = hex::decode(want[k].as_str().unwrap()).unwrap();
        assert!(parse(&m).is_ok(), "{k} parses");
    }
}

#[test]
#[ignore = "writes docs/e2ee-vectors.json; run with DUET_WRITE_VECTORS=1"]
fn write_vectors() {
    if std::env::var_os("DUET_WRITE_VECTORS").is_none() {
        return;
    }
    let inputs = inputs();
    let outputs = compute(&inputs);
    let doc = json!({
        "description": "Duet E2EE known-answer vectors: see docs/protocol.md. Hex unless noted; kids are integers; the security code is its display form.",
        "version": HANDSHAKE_VERSION,
        "inputs": inputs,
        "outputs": outputs,
    });
    std::fs::write(PATH, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
}

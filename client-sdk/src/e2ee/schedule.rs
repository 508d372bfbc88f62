//! The hybrid key schedule: from the X25519 and ML-KEM-768 shared secrets and the
//! transcript to the confirmation keys and the two per-direction media roots.
//!
//! Owns hashing, HKDF labels, the transcript hash the code is computed from, commitments
//! and MACs. Does not own message layout (`wire.rs`) nor when each step runs
//! (`handshake.rs`). Labels and inputs are listed in `docs/protocol.md`.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, X25519};
use aws_lc_rs::rand::{self, SystemRandom};
use aws_lc_rs::{digest, hkdf, hmac};
use zeroize::Zeroizing;

use super::handshake::HandshakeError;
use super::sframe::CipherSuite;
use super::wire::{HASH_LEN, MAC_LEN, X_LEN};

pub(super) struct Roots {
    pub(super) a_to_b: Zeroizing<Vec<u8>>,
    pub(super) b_to_a: Zeroizing<Vec<u8>>,
    /// The secret in-call hybrid rekeys chain from (`pcs.rs`).
    pub(super) chain: Zeroizing<Vec<u8>>,
}

pub(super) fn random<const N: usize>() -> Result<[u8; N], HandshakeError> {
    let mut b = [0u8; N];
    rand::fill(&mut b)?;
    Ok(b)
}

pub(super) fn x25519_keypair() -> Result<(EphemeralPrivateKey, [u8; X_LEN]), HandshakeError> {
    let sk = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())?;
    let mut pk = [0u8; X_LEN];
    pk.copy_from_slice(sk.compute_public_key()?.as_ref());
    Ok((sk, pk))
}

pub(super) fn x25519(
    sk: EphemeralPrivateKey,
    peer: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
    // aws-lc rejects an all-zero result (low-order peer point), RFC 7748 section 6.1.
    agreement::agree_ephemeral(
        sk,
        agreement::UnparsedPublicKey::new(&X25519, peer),
        HandshakeError::BadKeyShare,
        |ss| Ok(Zeroizing::new(ss.to_vec())),
    )
}

pub(super) fn sha256(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(super) fn commitment_of(a_hello: &[u8]) -> [u8; HASH_LEN] {
    sha256(&[b"duet-e2ee/1 commit", a_hello])
}

pub(super) fn th_code(
    context: &[u8],
    commit: &[u8],
    hello: &[u8],
    a_hello: &[u8],
) -> [u8; HASH_LEN] {
    let ctx_len = (context.len() as u32).to_be_bytes();
    sha256(&[
        b"duet-e2ee/1 transcript",
        &ctx_len,
        context,
        commit,
        hello,
        a_hello,
    ])
}

pub(super) struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

pub(super) fn expand(
    prk: &hkdf::Prk,
    label: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    prk.expand(&[label], Len(len))?.fill(&mut out)?;
    Ok(out)
}

pub(super) struct Secrets {
    pub(super) th_a: [u8; HASH_LEN],
    pub(super) fin_a: Zeroizing<Vec<u8>>,
    pub(super) fin_b: Zeroizing<Vec<u8>>,
    pub(super) roots: Roots,
}

/// The hybrid key schedule (see the module doc).
pub(super) fn schedule(
    suite: CipherSuite,
    th_code: &[u8; HASH_LEN],
    ct: &[u8],
    ss_kem: &[u8],
    ss_x: &[u8],
) -> Result<Secrets, HandshakeError> {
    let th_a = sha256(&[th_code, ct]);
    let mut ikm = Zeroizing::new(Vec::with_capacity(ss_kem.len() + ss_x.len()));
    ikm.extend_from_slice(ss_kem);
    ikm.extend_from_slice(ss_x);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &th_a).extract(&ikm);
    let nh = suite.hash_len();
    Ok(Secrets {
        th_a,
        fin_a: expand(&prk, b"duet-e2ee/1 finished A", MAC_LEN)?,
        fin_b: expand(&prk, b"duet-e2ee/1 finished B", MAC_LEN)?,
        roots: Roots {
            a_to_b: expand(&prk, b"duet-e2ee/1 media A->B", nh)?,
            b_to_a: expand(&prk, b"duet-e2ee/1 media B->A", nh)?,
            chain: expand(&prk, b"duet-e2ee/1 chain", HASH_LEN)?,
        },
    })
}

pub(super) fn mac(key: &[u8], th: &[u8; HASH_LEN]) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), th).as_ref());
    out
}

pub(super) fn verify_mac(
    key: &[u8],
    th: &[u8; HASH_LEN],
    tag: &[u8],
) -> Result<(), HandshakeError> {
    // Constant-time comparison inside aws-lc.
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), th, tag)
        .map_err(|_| HandshakeError::BadConfirmation)
}

pub(super) fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

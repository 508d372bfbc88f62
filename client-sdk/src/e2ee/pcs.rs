//! In-call post-compromise rekey: a fresh hybrid (X25519 + ML-KEM-768) exchange, carried
//! in `Signal`s sealed under the current media keys, mixed with the call's chain secret
//! into new roots for both directions.
//!
//! Owns the three messages, their sealing and parsing, and the derivation. Does not own
//! when an exchange runs, glare, or switching (the engine's `hybrid` module).
//!
//! ```text
//! payload   = 2 | 7 | SFrame_seal(current key, metadata "duet-e2ee/1 hybrid rekey", body)
//! Offer     = 1 | id(16) | epoch(8) | X_O(32) | EK_O(1184)    epoch: the offerer's new one
//! Answer    = 2 | id(16) | epoch(8) | X_W(32) | CT(1088)      epoch: the answerer's new one
//! Done      = 3 | id(16)                                      sealed under the offerer's new key
//! th        = H("duet-e2ee/1 hybrid rekey" | Offer | Answer)
//! prk       = HKDF-Extract(salt = chain, ikm = ss_kem | ss_x | th)
//! chain'    = HKDF-Expand(prk, "duet-e2ee/1 pcs chain", 32)
//! root_AB'  = HKDF-Expand(prk, "duet-e2ee/1 pcs A->B", Nh);  root_BA' likewise "B->A"
//! ```
//!
//! A key leaked at minute 1 (current keys and chain) does not give the roots after the
//! next exchange to a passive attacker: they need the exchange's fresh X25519 or ML-KEM
//! secrets. Each new root is used from an announced epoch far ahead
//! ([`EPOCH_JUMP`]), so it never collides with the ratchet's epochs.

use std::time::Instant;

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, X25519};
use aws_lc_rs::hkdf;
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use aws_lc_rs::rand::SystemRandom;
use zeroize::Zeroizing;

use super::keys::{FrameOpener, FrameSealer, OpenError, SealError};
use super::schedule::{expand, sha256};
use super::sframe::CipherSuite;
use super::wire::{CT_LEN, EK_LEN, HANDSHAKE_VERSION, X_LEN};

/// Handshake message type of a hybrid-rekey message.
pub const T_PCS: u8 = 7;
/// The SFrame metadata hybrid-rekey messages are sealed under.
pub const PCS_AAD: &[u8] = b"duet-e2ee/1 hybrid rekey";
/// Bytes of an exchange id.
pub const ID_LEN: usize = 16;
/// How far a rerooted epoch jumps ahead of the sender's current one.
pub const EPOCH_JUMP: u64 = 1 << 20;

const OFFER: u8 = 1;
const ANSWER: u8 = 2;
const DONE: u8 = 3;

/// Why a hybrid-rekey message was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PcsError {
    #[error("hybrid rekey message did not open: {0}")]
    Open(#[from] OpenError),
    #[error("hybrid rekey message is malformed")]
    Malformed,
    #[error("hybrid rekey: a key share was rejected")]
    BadShare,
    #[error("hybrid rekey: sealing failed: {0}")]
    Seal(#[from] SealError),
    #[error("hybrid rekey: cryptographic operation failed")]
    Crypto,
}

impl From<aws_lc_rs::error::Unspecified> for PcsError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto
    }
}

/// One opened message.
#[derive(Debug)]
pub enum PcsMsg {
    Offer {
        id: [u8; ID_LEN],
        epoch: u64,
        x: Vec<u8>,
        ek: Vec<u8>,
        body: Vec<u8>,
    },
    Answer {
        id: [u8; ID_LEN],
        epoch: u64,
        x: Vec<u8>,
        ct: Vec<u8>,
        body: Vec<u8>,
    },
    Done {
        id: [u8; ID_LEN],
    },
}

/// What the offerer keeps until the answer.
pub struct PendingOffer {
    pub id: [u8; ID_LEN],
    pub epoch: u64,
    x: EphemeralPrivateKey,
    dk: DecapsulationKey,
    body: Vec<u8>,
}

/// New secrets from one exchange.
pub struct NewKeys {
    pub chain: Zeroizing<Vec<u8>>,
    pub a_to_b: Zeroizing<Vec<u8>>,
    pub b_to_a: Zeroizing<Vec<u8>>,
}

/// Whether a signal payload is a hybrid-rekey message.
pub fn is_pcs(payload: &[u8]) -> bool {
    payload.len() >= 2 && payload[0] == HANDSHAKE_VERSION && payload[1] == T_PCS
}

fn seal(sealer: &mut FrameSealer, now: Instant, body: &[u8]) -> Result<Vec<u8>, PcsError> {
    let mut out = Vec::with_capacity(2 + body.len() + 64);
    out.extend_from_slice(&[HANDSHAKE_VERSION, T_PCS]);
    sealer.seal_with_metadata_into(now, PCS_AAD, body, &mut out)?;
    Ok(out)
}

fn x25519_share() -> Result<(EphemeralPrivateKey, Vec<u8>), PcsError> {
    let sk = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())?;
    let pk = sk.compute_public_key()?.as_ref().to_vec();
    Ok((sk, pk))
}

fn agree(sk: EphemeralPrivateKey, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, PcsError> {
    agreement::agree_ephemeral(
        sk,
        agreement::UnparsedPublicKey::new(&X25519, peer),
        PcsError::BadShare,
        |ss| Ok(Zeroizing::new(ss.to_vec())),
    )
}

fn derive(
    suite: CipherSuite,
    chain: &[u8],
    ss_kem: &[u8],
    ss_x: &[u8],
    offer: &[u8],
    answer: &[u8],
) -> Result<NewKeys, PcsError> {
    let th = sha256(&[b"duet-e2ee/1 hybrid rekey", offer, answer]);
    let mut ikm = Zeroizing::new(Vec::with_capacity(ss_kem.len() + ss_x.len() + th.len()));
    ikm.extend_from_slice(ss_kem);
    ikm.extend_from_slice(ss_x);
    ikm.extend_from_slice(&th);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, chain).extract(&ikm);
    let nh = suite.hash_len();
    let e = |label: &[u8], n| expand(&prk, label, n).map_err(|_| PcsError::Crypto);
    Ok(NewKeys {
        chain: e(b"duet-e2ee/1 pcs chain", 32)?,
        a_to_b: e(b"duet-e2ee/1 pcs A->B", nh)?,
        b_to_a: e(b"duet-e2ee/1 pcs B->A", nh)?,
    })
}

/// Starts an exchange: the sealed Offer and what to keep. `epoch` is the epoch this side
/// will send under its new root.
pub fn offer(
    sealer: &mut FrameSealer,
    now: Instant,
    epoch: u64,
) -> Result<(PendingOffer, Vec<u8>), PcsError> {
    let mut id = [0u8; ID_LEN];
    aws_lc_rs::rand::fill(&mut id)?;
    let (x, x_pub) = x25519_share()?;
    let dk = DecapsulationKey::generate(&ML_KEM_768)?;
    let ek = dk.encapsulation_key()?.key_bytes()?;
    let mut body = Vec::with_capacity(1 + ID_LEN + 8 + X_LEN + EK_LEN);
    body.push(OFFER);
    body.extend_from_slice(&id);
    body.extend_from_slice(&epoch.to_be_bytes());
    body.extend_from_slice(&x_pub);
    body.extend_from_slice(ek.as_ref());
    let msg = seal(sealer, now, &body)?;
    Ok((
        PendingOffer {
            id,
            epoch,
            x,
            dk,
            body,
        },
        msg,
    ))
}

/// Answers an offer: the sealed Answer and the new secrets. `epoch` is the epoch this side
/// will send under its new root.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    sealer: &mut FrameSealer,
    now: Instant,
    suite: CipherSuite,
    chain: &[u8],
    id: [u8; ID_LEN],
    peer_x: &[u8],
    peer_ek: &[u8],
    offer_body: &[u8],
    epoch: u64,
) -> Result<(Vec<u8>, NewKeys), PcsError> {
    let ek = EncapsulationKey::new(&ML_KEM_768, peer_ek).map_err(|_| PcsError::BadShare)?;
    let (ct, ss_kem) = ek.encapsulate().map_err(|_| PcsError::BadShare)?;
    let (x, x_pub) = x25519_share()?;
    let ss_x = agree(x, peer_x)?;
    let mut body = Vec::with_capacity(1 + ID_LEN + 8 + X_LEN + CT_LEN);
    body.push(ANSWER);
    body.extend_from_slice(&id);
    body.extend_from_slice(&epoch.to_be_bytes());
    body.extend_from_slice(&x_pub);
    body.extend_from_slice(ct.as_ref());
    let keys = derive(suite, chain, ss_kem.as_ref(), &ss_x, offer_body, &body)?;
    Ok((seal(sealer, now, &body)?, keys))
}

/// The offerer's side of an answer: the new secrets.
pub fn finish(
    pending: PendingOffer,
    suite: CipherSuite,
    chain: &[u8],
    peer_x: &[u8],
    ct: &[u8],
    answer_body: &[u8],
) -> Result<NewKeys, PcsError> {
    let ss_kem = pending
        .dk
        .decapsulate(Ciphertext::from(ct))
        .map_err(|_| PcsError::BadShare)?;
    let ss_x = agree(pending.x, peer_x)?;
    derive(
        suite,
        chain,
        ss_kem.as_ref(),
        &ss_x,
        &pending.body,
        answer_body,
    )
}

/// The sealed Done (seal it with the offerer's *new* key).
pub fn done(sealer: &mut FrameSealer, now: Instant, id: [u8; ID_LEN]) -> Result<Vec<u8>, PcsError> {
    let mut body = Vec::with_capacity(1 + ID_LEN);
    body.push(DONE);
    body.extend_from_slice(&id);
    seal(sealer, now, &body)
}

/// Opens and parses a hybrid-rekey message from the peer.
pub fn open(opener: &mut FrameOpener, now: Instant, payload: &[u8]) -> Result<PcsMsg, PcsError> {
    if !is_pcs(payload) {
        return Err(PcsError::Malformed);
    }
    let mut body = Vec::new();
    opener.open_with_metadata_into(now, PCS_AAD, &payload[2..], &mut body)?;
    let (&kind, rest) = body.split_first().ok_or(PcsError::Malformed)?;
    if rest.len() < ID_LEN {
        return Err(PcsError::Malformed);
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&rest[..ID_LEN]);
    let rest = &rest[ID_LEN..];
    let epoch_and = |n: usize| -> Result<(u64, Vec<u8>, Vec<u8>), PcsError> {
        if rest.len() != 8 + X_LEN + n {
            return Err(PcsError::Malformed);
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&rest[..8]);
        Ok((
            u64::from_be_bytes(e),
            rest[8..8 + X_LEN].to_vec(),
            rest[8 + X_LEN..].to_vec(),
        ))
    };
    match kind {
        OFFER => {
            let (epoch, x, ek) = epoch_and(EK_LEN)?;
            Ok(PcsMsg::Offer {
                id,
                epoch,
                x,
                ek,
                body: body.clone(),
            })
        }
        ANSWER => {
            let (epoch, x, ct) = epoch_and(CT_LEN)?;
            Ok(PcsMsg::Answer {
                id,
                epoch,
                x,
                ct,
                body: body.clone(),
            })
        }
        DONE if rest.is_empty() => Ok(PcsMsg::Done { id }),
        _ => Err(PcsError::Malformed),
    }
}

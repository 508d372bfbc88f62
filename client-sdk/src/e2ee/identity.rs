//! A user's long-term identity: the Ed25519 key the app keeps across calls, its
//! signatures over transcripts and their verification.
//!
//! Owns key generation, PKCS#8 import/export and signing with a domain label. Does not own
//! fingerprints and pinning (`code.rs`) nor what is signed (`handshake.rs`).

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

use super::code::PeerIdentity;
use super::handshake::HandshakeError;
use super::wire::{HASH_LEN, PK_LEN, SIG_LEN};

/// Error creating or loading an identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("identity key rejected")]
pub struct IdentityKeyError;

/// A user's long-term Ed25519 identity key, kept by the app across calls (PKCS#8).
/// Its private half never leaves aws-lc (cleansed on drop); it only signs transcripts.
pub struct IdentityKey(Ed25519KeyPair);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey({:?})", self.identity())
    }
}

impl IdentityKey {
    pub fn generate() -> Result<Self, IdentityKeyError> {
        Ed25519KeyPair::generate()
            .map(Self)
            .map_err(|_| IdentityKeyError)
    }

    /// From a raw 32-byte Ed25519 seed (the known-answer vectors use fixed seeds; apps
    /// store PKCS#8).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, IdentityKeyError> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(Self)
            .map_err(|_| IdentityKeyError)
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, IdentityKeyError> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(Self)
            .map_err(|_| IdentityKeyError)
    }

    /// PKCS#8 v2 document to store (zeroized when dropped).
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, IdentityKeyError> {
        self.0
            .to_pkcs8()
            .map(|d| Zeroizing::new(d.as_ref().to_vec()))
            .map_err(|_| IdentityKeyError)
    }

    pub fn public_key(&self) -> [u8; PK_LEN] {
        let mut pk = [0u8; PK_LEN];
        pk.copy_from_slice(self.0.public_key().as_ref());
        pk
    }

    /// This key's fingerprint, as the peer will see it.
    pub fn identity(&self) -> PeerIdentity {
        PeerIdentity::of_public_key(&self.public_key())
    }

    pub(super) fn sign(&self, label: &[u8], th: &[u8; HASH_LEN]) -> [u8; SIG_LEN] {
        let mut msg = Vec::with_capacity(label.len() + HASH_LEN);
        msg.extend_from_slice(label);
        msg.extend_from_slice(th);
        let mut sig = [0u8; SIG_LEN];
        sig.copy_from_slice(self.0.sign(&msg).as_ref());
        sig
    }
}

pub(super) fn verify_sig(
    pk: &[u8; PK_LEN],
    label: &[u8],
    th: &[u8; HASH_LEN],
    sig: &[u8],
) -> Result<(), HandshakeError> {
    let mut msg = Vec::with_capacity(label.len() + HASH_LEN);
    msg.extend_from_slice(label);
    msg.extend_from_slice(th);
    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
        .verify(&msg, sig)
        .map_err(|_| HandshakeError::BadSignature)
}

//! Token keys: the issuer's [`SigningKey`] (Ed25519, or a legacy HMAC secret) and the
//! [`VerifyingKey`] relays and SDKs hold. Not which keys are trusted (`TokenKeyring`).

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use aws_lc_rs::{hmac, rand};
use zeroize::Zeroizing;

use super::{
    check_kid, TokenError, ED25519_PUBLIC_LEN, ED25519_SEED_LEN, MIN_KEY_LEN, PREFIX_ED25519,
    PREFIX_HMAC,
};

/// How a token is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAlg {
    /// `duet2`: Ed25519, public-key verification. The default and the only one minted by
    /// the issuer unless told otherwise.
    Ed25519,
    /// `duet1`: HMAC-SHA256 under a shared secret (whoever verifies can also mint). Legacy,
    /// off unless explicitly configured.
    LegacyHmac,
}

impl TokenAlg {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Self::Ed25519 => PREFIX_ED25519,
            Self::LegacyHmac => PREFIX_HMAC,
        }
    }

    pub(super) fn from_prefix(p: &str) -> Option<Self> {
        match p {
            PREFIX_ED25519 => Some(Self::Ed25519),
            PREFIX_HMAC => Some(Self::LegacyHmac),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum Signer {
    Ed25519 {
        pair: Ed25519KeyPair,
        seed: Zeroizing<[u8; ED25519_SEED_LEN]>,
    },
    // Boxed: an HMAC key is far larger than the Ed25519 variant, and legacy keys are rare.
    Hmac(Box<hmac::Key>),
}

/// A key tokens are minted with: an Ed25519 private key (or a legacy HMAC secret) and its id.
/// Held by the issuer only; relays and SDKs get its [`VerifyingKey`].
#[derive(Clone)]
pub struct SigningKey {
    pub(super) id: String,
    signer: Signer,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, {:?})", self.id, self.alg())
    }
}

impl SigningKey {
    /// A fresh Ed25519 key from the system's secure random source.
    pub fn generate(id: impl Into<String>) -> Result<Self, TokenError> {
        let mut seed = Zeroizing::new([0u8; ED25519_SEED_LEN]);
        rand::fill(seed.as_mut()).map_err(|_| TokenError::BadKey("no secure random source"))?;
        Self::ed25519_from_seed(id, seed.as_ref())
    }

    /// An Ed25519 key from its 32-byte seed.
    pub fn ed25519_from_seed(id: impl Into<String>, seed: &[u8]) -> Result<Self, TokenError> {
        let id = id.into();
        check_kid(&id)?;
        let seed: [u8; ED25519_SEED_LEN] = seed
            .try_into()
            .map_err(|_| TokenError::BadKey("an Ed25519 seed is 32 bytes"))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| TokenError::BadKey("the Ed25519 seed was rejected"))?;
        Ok(Self {
            id,
            signer: Signer::Ed25519 {
                pair,
                seed: Zeroizing::new(seed),
            },
        })
    }

    /// An Ed25519 key from the hex of its seed (the signing key file format).
    pub fn ed25519_from_hex(id: impl Into<String>, hex: &str) -> Result<Self, TokenError> {
        let seed = Zeroizing::new(
            crate::hex::decode(hex).ok_or(TokenError::BadKey("the signing key is not hex"))?,
        );
        Self::ed25519_from_seed(id, &seed)
    }

    /// A legacy HMAC-SHA256 key (`duet1` tokens).
    pub fn legacy_hmac(id: impl Into<String>, secret: &[u8]) -> Result<Self, TokenError> {
        let id = id.into();
        check_kid(&id)?;
        if secret.len() < MIN_KEY_LEN {
            return Err(TokenError::KeyTooShort(secret.len()));
        }
        Ok(Self {
            id,
            signer: Signer::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret))),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn alg(&self) -> TokenAlg {
        match self.signer {
            Signer::Ed25519 { .. } => TokenAlg::Ed25519,
            Signer::Hmac(_) => TokenAlg::LegacyHmac,
        }
    }

    /// The hex of the Ed25519 seed, to write the signing key file (`None` for HMAC keys,
    /// whose secret the caller already holds).
    pub fn seed_hex(&self) -> Option<Zeroizing<String>> {
        match &self.signer {
            Signer::Ed25519 { seed, .. } => Some(Zeroizing::new(crate::hex::encode(seed.as_ref()))),
            Signer::Hmac(_) => None,
        }
    }

    /// The key relays and SDKs verify this key's tokens with.
    pub fn verifying_key(&self) -> VerifyingKey {
        let verifier = match &self.signer {
            Signer::Ed25519 { pair, .. } => {
                let mut public = [0u8; ED25519_PUBLIC_LEN];
                public.copy_from_slice(pair.public_key().as_ref());
                Verifier::Ed25519(public)
            }
            Signer::Hmac(key) => Verifier::Hmac(key.clone()),
        };
        VerifyingKey {
            id: self.id.clone(),
            verifier,
        }
    }

    pub(super) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Ed25519 { pair, .. } => pair.sign(msg).as_ref().to_vec(),
            Signer::Hmac(key) => hmac::sign(key, msg).as_ref().to_vec(),
        }
    }
}

#[derive(Clone)]
enum Verifier {
    Ed25519([u8; ED25519_PUBLIC_LEN]),
    Hmac(Box<hmac::Key>),
}

/// A key tokens are verified with, and its id: an Ed25519 public key (or, legacy, an HMAC
/// secret). This is all a relay or an SDK holds.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(super) id: String,
    verifier: Verifier,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.verifier {
            Verifier::Ed25519(p) => {
                write!(
                    f,
                    "VerifyingKey({:?}, ed25519 {})",
                    self.id,
                    crate::hex::encode(p)
                )
            }
            Verifier::Hmac(_) => write!(f, "VerifyingKey({:?}, legacy hmac)", self.id),
        }
    }
}

impl VerifyingKey {
    /// An Ed25519 public key (32 bytes).
    pub fn ed25519(id: impl Into<String>, public: &[u8]) -> Result<Self, TokenError> {
        let id = id.into();
        check_kid(&id)?;
        let public: [u8; ED25519_PUBLIC_LEN] = public
            .try_into()
            .map_err(|_| TokenError::BadKey("an Ed25519 public key is 32 bytes"))?;
        Ok(Self {
            id,
            verifier: Verifier::Ed25519(public),
        })
    }

    /// An Ed25519 public key from its hex (the verifying key file format).
    pub fn ed25519_from_hex(id: impl Into<String>, hex: &str) -> Result<Self, TokenError> {
        let public =
            crate::hex::decode(hex).ok_or(TokenError::BadKey("the public key is not hex"))?;
        Self::ed25519(id, &public)
    }

    /// A legacy HMAC-SHA256 key: verifies `duet1` tokens (and could mint them).
    pub fn legacy_hmac(id: impl Into<String>, secret: &[u8]) -> Result<Self, TokenError> {
        Ok(SigningKey::legacy_hmac(id, secret)?.verifying_key())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn alg(&self) -> TokenAlg {
        match self.verifier {
            Verifier::Ed25519(_) => TokenAlg::Ed25519,
            Verifier::Hmac(_) => TokenAlg::LegacyHmac,
        }
    }

    /// The Ed25519 public key (`None` for a legacy HMAC key).
    pub fn public_key(&self) -> Option<&[u8; ED25519_PUBLIC_LEN]> {
        match &self.verifier {
            Verifier::Ed25519(p) => Some(p),
            Verifier::Hmac(_) => None,
        }
    }

    /// The hex of the public key, to write the verifying key file.
    pub fn public_hex(&self) -> Option<String> {
        self.public_key().map(|p| crate::hex::encode(p))
    }

    pub(super) fn verify(&self, alg: TokenAlg, msg: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        match (&self.verifier, alg) {
            (Verifier::Ed25519(public), TokenAlg::Ed25519) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, public)
                    .verify(msg, sig)
                    .map_err(|_| TokenError::BadSignature)
            }
            (Verifier::Hmac(key), TokenAlg::LegacyHmac) => {
                hmac::verify(key, msg, sig).map_err(|_| TokenError::BadSignature)
            }
            _ => Err(TokenError::WrongKeyKind(self.id.clone())),
        }
    }
}

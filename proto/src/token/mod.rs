//! Join tokens: who may join which session, on which nodes, with which E2EE decision.
//!
//! Minted by the app's backend (the policy crate's issuer, or `token mint`), verified by the
//! relay and read by the peer's SDK (which checks the signature too: the handshake binds
//! both tokens). Format, URL-safe ASCII:
//!
//! ```text
//! duet2.<kid>.<base64url(JSON claims)>.<base64url(Ed25519 signature)>
//! ```
//!
//! The signature covers everything before the last dot, under the key named by `kid` (keys
//! rotate by id). Relays and SDKs hold only the public half, so no relay can mint. The key
//! id sits outside the claims so the signature is checked before any JSON is parsed.
//!
//! Legacy: `duet1.<kid>.<claims>.<HMAC-SHA256>` tokens verify only under a key explicitly
//! configured as a legacy HMAC key for that id; a key of one kind never verifies a token of
//! the other (no algorithm confusion).
//!
//! This module owns the format, minting and verification; [`claims`](JoinClaims) what a
//! token says, `keys` the signing and verifying keys. Not where keys live (config files,
//! the issuer's secret store) nor what the policy is (the policy crate).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

use crate::refusal::RefusalReason;

mod claims;
mod keys;
#[cfg(test)]
mod tests;

pub use claims::{ClaimsBuilder, JoinClaims};
pub use keys::{SigningKey, TokenAlg, VerifyingKey};

const PREFIX_ED25519: &str = "duet2";
const PREFIX_HMAC: &str = "duet1";
/// Longest token accepted before any work is done on it.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shortest legacy HMAC key accepted, bytes.
pub const MIN_KEY_LEN: usize = 32;
/// Ed25519 seed (private key) length, bytes.
pub const ED25519_SEED_LEN: usize = 32;
/// Ed25519 public key length, bytes.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// Most nodes a token may list (primary and fallbacks).
pub const MAX_NODES: usize = 8;
/// The clock skew a verifier allows for `iat` unless told otherwise, seconds.
pub const DEFAULT_SKEW_SECS: u64 = 60;
/// The longest token lifetime a verifier accepts unless told otherwise, seconds (one day).
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 86_400;
const MAX_KID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
    #[error("token key id {0:?} is not trusted here")]
    UnknownKey(String),
    #[error("token signature does not verify")]
    BadSignature,
    /// A `duet2` (Ed25519) token under a legacy HMAC key id, or the other way round.
    #[error("token key {0:?} is of another kind than the token's signature")]
    WrongKeyKind(String),
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token issued at {iat}, in the future (now {now})")]
    NotYetValid { iat: u64, now: u64 },
    #[error("token lives {lifetime} s; at most {max} s are accepted")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("key id {0:?} must be 1..=64 of A-Z a-z 0-9 _ -")]
    BadKeyId(String),
    #[error("token key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    KeyTooShort(usize),
    #[error("token key material is invalid: {0}")]
    BadKey(&'static str),
}

impl TokenError {
    /// The stable refusal code a relay answers a join with.
    pub fn refusal(&self) -> RefusalReason {
        match self {
            Self::Malformed(_)
            | Self::BadClaims(_)
            | Self::BadKeyId(_)
            | Self::KeyTooShort(_)
            | Self::BadKey(_) => RefusalReason::BadToken,
            Self::UnknownKey(_) => RefusalReason::UnknownKey,
            Self::BadSignature | Self::WrongKeyKind(_) => RefusalReason::BadSignature,
            Self::Expired { .. } => RefusalReason::TokenExpired,
            Self::NotYetValid { .. } => RefusalReason::TokenNotYetValid,
            Self::LifetimeTooLong { .. } => RefusalReason::TokenLifetimeTooLong,
        }
    }
}

fn check_kid(kid: &str) -> Result<(), TokenError> {
    let ok = !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadKeyId(kid.to_owned()))
    }
}

/// What a verifier checks besides the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Unix seconds now.
    pub now: u64,
    /// Allowed clock difference for `iat`, seconds.
    pub skew_secs: u64,
    /// Longest accepted `exp - iat`, seconds.
    pub max_lifetime_secs: u64,
}

impl VerifyOptions {
    /// At `now` with the default skew and maximum lifetime.
    pub fn at(now: u64) -> Self {
        Self {
            now,
            skew_secs: DEFAULT_SKEW_SECS,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }
}

/// The keys a relay (or an SDK) trusts, by id.
#[derive(Debug, Clone, Default)]
pub struct TokenKeyring {
    keys: Vec<VerifyingKey>,
}

/// A token split into its parts, nothing verified.
struct Parts<'a> {
    alg: TokenAlg,
    kid: &'a str,
    signed: &'a str,
    claims_b64: &'a str,
    sig_b64: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than 4096 bytes"));
    }
    let (signed, sig_b64) = token
        .rsplit_once('.')
        .ok_or(TokenError::Malformed("no signature part"))?;
    let mut parts = signed.splitn(3, '.');
    let (Some(prefix), Some(kid), Some(claims_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected duet2.<kid>.<claims>.<sig>"));
    };
    let alg = TokenAlg::from_prefix(prefix).ok_or(TokenError::Malformed("not a duet token"))?;
    check_kid(kid)?;
    Ok(Parts {
        alg,
        kid,
        signed,
        claims_b64,
        sig_b64,
    })
}

fn parse_claims(claims_b64: &str) -> Result<JoinClaims, TokenError> {
    let json = B64
        .decode(claims_b64)
        .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
    let claims: JoinClaims =
        serde_json::from_slice(&json).map_err(|e| TokenError::BadClaims(e.to_string()))?;
    claims.check()?;
    Ok(claims)
}

impl TokenKeyring {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        Self { keys }
    }

    pub fn get(&self, id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// Verifies `token`: shape, key id, signature (before any JSON is parsed), then the
    /// claims, expiry, issue time (within the skew) and lifetime.
    pub fn verify(&self, token: &str, opts: &VerifyOptions) -> Result<JoinClaims, TokenError> {
        let p = split(token)?;
        let key = self
            .get(p.kid)
            .ok_or_else(|| TokenError::UnknownKey(p.kid.to_owned()))?;
        let sig = B64
            .decode(p.sig_b64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        key.verify(p.alg, p.signed.as_bytes(), &sig)?;
        let claims = parse_claims(p.claims_b64)?;
        if claims.exp <= opts.now {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now: opts.now,
            });
        }
        if claims.iat > opts.now.saturating_add(opts.skew_secs) {
            return Err(TokenError::NotYetValid {
                iat: claims.iat,
                now: opts.now,
            });
        }
        if claims.lifetime_secs() > opts.max_lifetime_secs {
            return Err(TokenError::LifetimeTooLong {
                lifetime: claims.lifetime_secs(),
                max: opts.max_lifetime_secs,
            });
        }
        Ok(claims)
    }
}

/// A token read without checking its signature: what an SDK learns from its own token
/// before joining (the relay, and the peer's SDK, verify it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedToken {
    pub alg: TokenAlg,
    pub kid: String,
    pub claims: JoinClaims,
}

/// Minting and reading tokens.
pub struct JoinToken;

impl JoinToken {
    /// Signs `claims` with `key` (`duet2` for Ed25519 keys, `duet1` for legacy HMAC keys).
    pub fn mint(key: &SigningKey, claims: &JoinClaims) -> String {
        // Serializing plain data into a Vec cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{}.{}.{}", key.alg().prefix(), key.id, B64.encode(json));
        let sig = key.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig))
    }

    /// Reads a token's parts and claims without verifying anything but their shape.
    pub fn peek(token: &str) -> Result<UnverifiedToken, TokenError> {
        let p = split(token)?;
        Ok(UnverifiedToken {
            alg: p.alg,
            kid: p.kid.to_owned(),
            claims: parse_claims(p.claims_b64)?,
        })
    }
}

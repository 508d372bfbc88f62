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
//! This module owns the format, minting, verification and the claims; not where keys live
//! (config files, the issuer's secret store) nor what the policy is (the policy crate).

use std::time::Duration;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use aws_lc_rs::{hmac, rand};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ids::{DeviceId, NodeId, SessionId, UserId};
use crate::refusal::{E2eeClaim, RefusalReason};

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

/// What a token says. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    pub session: SessionId,
    pub user: UserId,
    pub device: DeviceId,
    /// Issued at.
    pub iat: u64,
    /// Expires at: the token is refused from this second on.
    pub exp: u64,
    /// The relay nodes the session is placed on, primary first, then the fallbacks in the
    /// order both endpoints try them. Empty lets any node accept it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeId>,
    /// The E2EE decision made at minting. Missing or unknown reads as
    /// [`E2eeClaim::Unknown`], which allows nothing.
    #[serde(default)]
    pub e2ee: E2eeClaim,
    /// The user's E2EE identity key (Ed25519 public key), when the backend knows it: the
    /// peer's SDK then accepts only that key in the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_key_b64")]
    pub identity_key: Option<[u8; ED25519_PUBLIC_LEN]>,
}

mod opt_key_b64 {
    use super::{B64, ED25519_PUBLIC_LEN};
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        v: &Option<[u8; ED25519_PUBLIC_LEN]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(k) => s.serialize_str(&B64.encode(k)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; ED25519_PUBLIC_LEN]>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let bytes = B64
            .decode(s)
            .map_err(|_| serde::de::Error::custom("identity_key is not base64url"))?;
        bytes
            .try_into()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("identity_key is not 32 bytes"))
    }
}

impl JoinClaims {
    /// Starts claims for `user` on `device` in `session`; see [`ClaimsBuilder`].
    pub fn builder(session: SessionId, user: UserId, device: DeviceId) -> ClaimsBuilder {
        ClaimsBuilder {
            session,
            user,
            device,
            issued_at: None,
            ttl: Duration::from_secs(600),
            nodes: Vec::new(),
            e2ee: E2eeClaim::Unknown,
            identity_key: None,
        }
    }

    /// `exp - iat`, seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.exp.saturating_sub(self.iat)
    }

    /// Whether a relay node named `node` may accept this token: it is listed, or the token
    /// lists no node at all.
    pub fn places_on(&self, node: &NodeId) -> bool {
        self.nodes.is_empty() || self.nodes.contains(node)
    }

    /// Checks what serde cannot: the expiry follows the issue time, at most [`MAX_NODES`]
    /// nodes, none twice.
    pub fn check(&self) -> Result<(), TokenError> {
        if self.exp <= self.iat {
            return Err(TokenError::BadClaims("exp must be after iat".into()));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(TokenError::BadClaims(format!(
                "{} nodes listed; at most {MAX_NODES}",
                self.nodes.len()
            )));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if self.nodes[..i].contains(n) {
                return Err(TokenError::BadClaims(format!("node {n} listed twice")));
            }
        }
        Ok(())
    }
}

/// Builds [`JoinClaims`] with the checks every minter needs. Defaults: issued now, valid
/// ten minutes, any node, E2EE claim `unknown` (allows nothing: a minter states the
/// decision with [`ClaimsBuilder::e2ee`]).
#[derive(Debug, Clone)]
pub struct ClaimsBuilder {
    session: SessionId,
    user: UserId,
    device: DeviceId,
    issued_at: Option<u64>,
    ttl: Duration,
    nodes: Vec<NodeId>,
    e2ee: E2eeClaim,
    identity_key: Option<[u8; ED25519_PUBLIC_LEN]>,
}

impl ClaimsBuilder {
    /// Issue time, Unix seconds (default: the clock now).
    pub fn issued_at(mut self, unix_secs: u64) -> Self {
        self.issued_at = Some(unix_secs);
        self
    }

    /// Lifetime, at least one second (whole seconds; a fraction is rounded down).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The nodes the session is placed on, primary first.
    pub fn nodes(mut self, nodes: Vec<NodeId>) -> Self {
        self.nodes = nodes;
        self
    }

    pub fn e2ee(mut self, claim: E2eeClaim) -> Self {
        self.e2ee = claim;
        self
    }

    pub fn identity_key(mut self, key: Option<[u8; ED25519_PUBLIC_LEN]>) -> Self {
        self.identity_key = key;
        self
    }

    pub fn build(self) -> Result<JoinClaims, TokenError> {
        let ttl = self.ttl.as_secs();
        if ttl == 0 {
            return Err(TokenError::BadClaims(
                "a token must live at least one second".into(),
            ));
        }
        let iat = self.issued_at.unwrap_or_else(crate::clock::unix_now);
        let exp = iat
            .checked_add(ttl)
            .ok_or_else(|| TokenError::BadClaims(format!("a lifetime of {ttl} s overflows")))?;
        let claims = JoinClaims {
            session: self.session,
            user: self.user,
            device: self.device,
            iat,
            exp,
            nodes: self.nodes,
            e2ee: self.e2ee,
            identity_key: self.identity_key,
        };
        claims.check()?;
        Ok(claims)
    }
}

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
    fn prefix(self) -> &'static str {
        match self {
            Self::Ed25519 => PREFIX_ED25519,
            Self::LegacyHmac => PREFIX_HMAC,
        }
    }

    fn from_prefix(p: &str) -> Option<Self> {
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
    id: String,
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

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
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
    id: String,
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

    fn verify(&self, alg: TokenAlg, msg: &[u8], sig: &[u8]) -> Result<(), TokenError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> JoinClaims {
        JoinClaims::builder(
            SessionId::new("s1").unwrap(),
            UserId::new("alice").unwrap(),
            DeviceId::new("phone").unwrap(),
        )
        .issued_at(1000)
        .ttl(Duration::from_secs(600))
        .e2ee(E2eeClaim::Allowed)
        .build()
        .unwrap()
    }

    fn opts(now: u64) -> VerifyOptions {
        VerifyOptions {
            now,
            skew_secs: 30,
            max_lifetime_secs: 3600,
        }
    }

    fn ring() -> (SigningKey, TokenKeyring) {
        let k = SigningKey::ed25519_from_seed("k1", &[7u8; 32]).unwrap();
        let ring = TokenKeyring::new(vec![k.verifying_key()]);
        (k, ring)
    }

    #[test]
    fn mint_then_verify() {
        let (k, ring) = ring();
        let t = JoinToken::mint(&k, &claims());
        assert!(t.starts_with("duet2.k1."));
        assert_eq!(ring.verify(&t, &opts(1200)).unwrap(), claims());
        let peeked = JoinToken::peek(&t).unwrap();
        assert_eq!(peeked.claims, claims());
        assert_eq!(peeked.kid, "k1");
        assert_eq!(peeked.alg, TokenAlg::Ed25519);
    }

    #[test]
    fn keys_roundtrip_through_their_hex_files() {
        let k = SigningKey::generate("k9").unwrap();
        let again = SigningKey::ed25519_from_hex("k9", &k.seed_hex().unwrap()).unwrap();
        let vk =
            VerifyingKey::ed25519_from_hex("k9", &k.verifying_key().public_hex().unwrap()).unwrap();
        let t = JoinToken::mint(&again, &claims());
        assert!(TokenKeyring::new(vec![vk]).verify(&t, &opts(1200)).is_ok());
        assert!(matches!(
            VerifyingKey::ed25519_from_hex("k", "zz"),
            Err(TokenError::BadKey(_))
        ));
        assert!(matches!(
            SigningKey::ed25519_from_seed("k", &[1; 31]),
            Err(TokenError::BadKey(_))
        ));
    }

    #[test]
    fn each_failure_has_its_error() {
        let (k, ring) = ring();
        let t = JoinToken::mint(&k, &claims());
        assert_eq!(
            ring.verify(&t, &opts(1600)),
            Err(TokenError::Expired {
                exp: 1600,
                now: 1600
            })
        );
        assert_eq!(
            ring.verify(&t, &opts(900)),
            Err(TokenError::NotYetValid {
                iat: 1000,
                now: 900
            })
        );
        assert!(ring.verify(&t, &opts(980)).is_ok(), "within skew");
        let mut short = opts(1200);
        short.max_lifetime_secs = 300;
        assert_eq!(
            ring.verify(&t, &short),
            Err(TokenError::LifetimeTooLong {
                lifetime: 600,
                max: 300
            })
        );

        let other = SigningKey::ed25519_from_seed("k2", &[8u8; 32]).unwrap();
        let t2 = JoinToken::mint(&other, &claims());
        assert_eq!(
            ring.verify(&t2, &opts(1200)),
            Err(TokenError::UnknownKey("k2".into()))
        );

        // Same key id, different key: a forgery.
        let impostor = SigningKey::ed25519_from_seed("k1", &[9u8; 32]).unwrap();
        let t3 = JoinToken::mint(&impostor, &claims());
        assert_eq!(ring.verify(&t3, &opts(1200)), Err(TokenError::BadSignature));

        // Tampered claims.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c = claims();
        c.user = UserId::new("mallory").unwrap();
        parts[2] = B64.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            ring.verify(&parts.join("."), &opts(1200)),
            Err(TokenError::BadSignature)
        );

        for bad in ["garbage", "jwt.k1.e30.AAAA", &"a".repeat(5000)] {
            assert!(matches!(
                ring.verify(bad, &opts(1200)),
                Err(TokenError::Malformed(_))
            ));
        }
        assert_eq!(
            ring.verify(&t, &opts(1600)).unwrap_err().refusal(),
            RefusalReason::TokenExpired
        );
    }

    #[test]
    fn no_algorithm_confusion() {
        // An HMAC token whose secret is the Ed25519 public key (public knowledge) must not
        // verify under the Ed25519 key of the same id, nor the other way round.
        let (k, ring) = ring();
        let public = k.verifying_key().public_key().copied().unwrap();
        let forger = SigningKey::legacy_hmac("k1", &public).unwrap();
        let forged = JoinToken::mint(&forger, &claims());
        assert!(forged.starts_with("duet1.k1."));
        assert_eq!(
            ring.verify(&forged, &opts(1200)),
            Err(TokenError::WrongKeyKind("k1".into()))
        );
        let legacy = SigningKey::legacy_hmac("old", &[3u8; 32]).unwrap();
        let ring = TokenKeyring::new(vec![legacy.verifying_key()]);
        let t = JoinToken::mint(&legacy, &claims());
        assert!(
            ring.verify(&t, &opts(1200)).is_ok(),
            "legacy keys still work"
        );
        // Rename the prefix of a legacy token: the Ed25519 path must refuse it.
        let renamed = t.replacen("duet1", "duet2", 1);
        assert_eq!(
            ring.verify(&renamed, &opts(1200)),
            Err(TokenError::WrongKeyKind("old".into()))
        );
    }

    #[test]
    fn claims_fail_closed_and_are_checked() {
        let (k, ring) = ring();
        // A token minted without an e2ee claim allows nothing.
        let mut c = claims();
        c.e2ee = E2eeClaim::Unknown;
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["e2ee"], "unknown");
        let mut obj = json.as_object().unwrap().clone();
        obj.remove("e2ee");
        let signed = format!("duet2.k1.{}", B64.encode(serde_json::to_vec(&obj).unwrap()));
        let KeyPairFor { pair } = KeyPairFor::new(&k);
        let t = format!(
            "{signed}.{}",
            B64.encode(pair.sign(signed.as_bytes()).as_ref())
        );
        assert_eq!(
            ring.verify(&t, &opts(1200)).unwrap().e2ee,
            E2eeClaim::Unknown
        );

        let b = || {
            JoinClaims::builder(
                SessionId::new("s").unwrap(),
                UserId::new("u").unwrap(),
                DeviceId::new("d").unwrap(),
            )
            .issued_at(10)
        };
        assert!(matches!(
            b().ttl(Duration::ZERO).build(),
            Err(TokenError::BadClaims(_))
        ));
        assert!(matches!(
            b().issued_at(u64::MAX).build(),
            Err(TokenError::BadClaims(_))
        ));
        let n = |s: &str| NodeId::new(s).unwrap();
        assert!(matches!(
            b().nodes(vec![n("a"), n("a")]).build(),
            Err(TokenError::BadClaims(_))
        ));
        let c = b().nodes(vec![n("a"), n("b")]).build().unwrap();
        assert!(c.places_on(&n("b")) && !c.places_on(&n("c")));
        assert!(b().build().unwrap().places_on(&n("anything")));
        let c = b().identity_key(Some([5; 32])).build().unwrap();
        let back: JoinClaims = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back.identity_key, Some([5; 32]));
    }

    /// Test access to the raw key pair, to sign hand-made claims.
    struct KeyPairFor<'a> {
        pair: &'a Ed25519KeyPair,
    }

    impl<'a> KeyPairFor<'a> {
        fn new(k: &'a SigningKey) -> Self {
            match &k.signer {
                Signer::Ed25519 { pair, .. } => Self { pair },
                Signer::Hmac(_) => unreachable!("an Ed25519 key"),
            }
        }
    }

    #[test]
    fn signed_garbage_claims_are_bad_claims() {
        let (k, ring) = ring();
        let signed = format!("duet2.k1.{}", B64.encode(b"{\"session\":\"a b\"}"));
        let t = format!(
            "{signed}.{}",
            B64.encode(KeyPairFor::new(&k).pair.sign(signed.as_bytes()).as_ref())
        );
        let e = ring.verify(&t, &opts(1200)).unwrap_err();
        assert!(matches!(e, TokenError::BadClaims(_)));
        assert_eq!(e.refusal(), RefusalReason::BadToken);
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(
            SigningKey::legacy_hmac("k1", &[0; 16]).unwrap_err(),
            TokenError::KeyTooShort(16)
        );
        assert!(matches!(
            SigningKey::legacy_hmac("k.1", &[0; 32]),
            Err(TokenError::BadKeyId(_))
        ));
        assert!(matches!(
            SigningKey::generate("k 1"),
            Err(TokenError::BadKeyId(_))
        ));
    }

    proptest! {
        #[test]
        fn verify_and_peek_never_panic(s in ".{0,300}") {
            let (_, ring) = ring();
            let _ = ring.verify(&s, &opts(1200));
            let _ = JoinToken::peek(&s);
        }

        #[test]
        fn any_single_byte_flip_is_rejected(pos in 0usize..600, bit in 0u8..8) {
            let (k, ring) = ring();
            let t = JoinToken::mint(&k, &claims());
            let mut b = t.into_bytes();
            let i = pos % b.len();
            b[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(b) {
                prop_assert!(ring.verify(&s, &opts(1200)).is_err());
            }
        }
    }
}

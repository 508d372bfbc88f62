//! Join tokens: who may join which session, on which node, with which E2EE decision.
//!
//! Minted by the app's backend (or `duet-relay token mint`), verified by the relay.
//! Format, URL-safe ASCII: `duet1.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`,
//! the MAC over everything before the last dot, under the key named by `kid` so keys can
//! rotate. The key id sits outside the claims so the relay checks the MAC before it parses
//! any JSON. This module owns the format and the checks; it does not own where keys live
//! or what the policy is (the relay's config and the policy store decide those).

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, NodeId, SessionId, UserId};
use crate::refusal::{E2eeClaim, RefusalReason};

const PREFIX: &str = "duet1";
/// Longest token accepted before any work is done on it.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shortest HMAC key accepted, bytes.
pub const MIN_KEY_LEN: usize = 32;
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
    /// The relay node the session is placed on; `None` lets any node accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The E2EE decision made at minting.
    #[serde(default)]
    pub e2ee: E2eeClaim,
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
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token issued at {iat}, in the future (now {now})")]
    NotYetValid { iat: u64, now: u64 },
    #[error("key id {0:?} must be 1..=64 of A-Z a-z 0-9 _ -")]
    BadKeyId(String),
    #[error("token key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    KeyTooShort(usize),
}

impl TokenError {
    /// The stable refusal code a relay answers a join with.
    pub fn refusal(&self) -> RefusalReason {
        match self {
            Self::Malformed(_) | Self::BadClaims(_) | Self::BadKeyId(_) | Self::KeyTooShort(_) => {
                RefusalReason::BadToken
            }
            Self::UnknownKey(_) => RefusalReason::UnknownKey,
            Self::BadSignature => RefusalReason::BadSignature,
            Self::Expired { .. } => RefusalReason::TokenExpired,
            Self::NotYetValid { .. } => RefusalReason::TokenNotYetValid,
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

/// An HMAC-SHA256 token key with its id.
#[derive(Clone)]
pub struct TokenKey {
    id: String,
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({:?})", self.id)
    }
}

impl TokenKey {
    pub fn new(id: impl Into<String>, secret: &[u8]) -> Result<Self, TokenError> {
        let id = id.into();
        check_kid(&id)?;
        if secret.len() < MIN_KEY_LEN {
            return Err(TokenError::KeyTooShort(secret.len()));
        }
        Ok(Self {
            id,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The keys a relay trusts, by id.
#[derive(Debug, Clone, Default)]
pub struct TokenKeyring {
    keys: Vec<TokenKey>,
}

impl TokenKeyring {
    pub fn new(keys: Vec<TokenKey>) -> Self {
        Self { keys }
    }

    pub fn get(&self, id: &str) -> Option<&TokenKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Verifies `token` at time `now` (Unix seconds), allowing `skew_secs` of clock
    /// difference for `iat`. The MAC is checked before the claims are parsed.
    pub fn verify(&self, token: &str, now: u64, skew_secs: u64) -> Result<JoinClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("longer than 4096 bytes"));
        }
        let (signed, mac_b64) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature part"))?;
        let mut parts = signed.splitn(3, '.');
        let (Some(prefix), Some(kid), Some(claims_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected duet1.<kid>.<claims>.<mac>"));
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed("not a duet1 token"));
        }
        check_kid(kid)?;
        let key = self
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
        let mac = B64
            .decode(mac_b64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&key.key, signed.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let json = B64
            .decode(claims_b64)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: JoinClaims =
            serde_json::from_slice(&json).map_err(|e| TokenError::BadClaims(e.to_string()))?;
        if claims.exp <= now {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        if claims.iat > now.saturating_add(skew_secs) {
            return Err(TokenError::NotYetValid {
                iat: claims.iat,
                now,
            });
        }
        Ok(claims)
    }
}

/// Minting, for app backends and `duet-relay token mint`.
pub struct JoinToken;

impl JoinToken {
    pub fn mint(key: &TokenKey, claims: &JoinClaims) -> String {
        // Serializing plain data into a Vec cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{PREFIX}.{}.{}", key.id, B64.encode(json));
        let tag = hmac::sign(&key.key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> JoinClaims {
        JoinClaims {
            session: SessionId::new("s1").unwrap(),
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            iat: 1000,
            exp: 1600,
            node: None,
            e2ee: E2eeClaim::Allowed,
        }
    }

    fn ring() -> (TokenKey, TokenKeyring) {
        let k = TokenKey::new("k1", &[7u8; 32]).unwrap();
        (k.clone(), TokenKeyring::new(vec![k]))
    }

    #[test]
    fn mint_then_verify() {
        let (k, ring) = ring();
        let t = JoinToken::mint(&k, &claims());
        assert!(t.starts_with("duet1.k1."));
        assert_eq!(ring.verify(&t, 1200, 30).unwrap(), claims());
    }

    #[test]
    fn each_failure_has_its_error() {
        let (k, ring) = ring();
        let t = JoinToken::mint(&k, &claims());
        assert_eq!(
            ring.verify(&t, 1600, 30),
            Err(TokenError::Expired {
                exp: 1600,
                now: 1600
            })
        );
        assert_eq!(
            ring.verify(&t, 900, 30),
            Err(TokenError::NotYetValid {
                iat: 1000,
                now: 900
            })
        );
        assert!(ring.verify(&t, 980, 30).is_ok(), "within skew");

        let other = TokenKey::new("k2", &[8u8; 32]).unwrap();
        let t2 = JoinToken::mint(&other, &claims());
        assert_eq!(
            ring.verify(&t2, 1200, 30),
            Err(TokenError::UnknownKey("k2".into()))
        );

        // Same key id, different secret: a wrong key.
        let impostor = TokenKey::new("k1", &[9u8; 32]).unwrap();
        let t3 = JoinToken::mint(&impostor, &claims());
        assert_eq!(ring.verify(&t3, 1200, 30), Err(TokenError::BadSignature));

        // Tampered claims.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c = claims();
        c.user = UserId::new("mallory").unwrap();
        parts[2] = B64.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            ring.verify(&parts.join("."), 1200, 30),
            Err(TokenError::BadSignature)
        );

        assert!(matches!(
            ring.verify("garbage", 1200, 30),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            ring.verify("jwt.k1.e30.AAAA", 1200, 30),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            ring.verify(&"a".repeat(5000), 1200, 30),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(
            ring.verify(&t, 1600, 30).unwrap_err().refusal(),
            RefusalReason::TokenExpired
        );
    }

    #[test]
    fn signed_garbage_claims_are_bad_claims() {
        let (k, ring) = ring();
        let signed = format!("duet1.k1.{}", B64.encode(b"{\"session\":\"a b\"}"));
        let tag = hmac::sign(&k.key, signed.as_bytes());
        let t = format!("{signed}.{}", B64.encode(tag.as_ref()));
        let e = ring.verify(&t, 1200, 30).unwrap_err();
        assert!(matches!(e, TokenError::BadClaims(_)));
        assert_eq!(e.refusal(), RefusalReason::BadToken);
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(
            TokenKey::new("k1", &[0; 16]).unwrap_err(),
            TokenError::KeyTooShort(16)
        );
        assert!(matches!(
            TokenKey::new("k.1", &[0; 32]),
            Err(TokenError::BadKeyId(_))
        ));
    }

    proptest! {
        #[test]
        fn verify_never_panics(s in ".{0,300}") {
            let (_, ring) = ring();
            let _ = ring.verify(&s, 1200, 30);
        }

        #[test]
        fn any_single_byte_flip_is_rejected(pos in 0usize..400, bit in 0u8..8) {
            let (k, ring) = ring();
            let t = JoinToken::mint(&k, &claims());
            let mut b = t.into_bytes();
            let i = pos % b.len();
            b[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(b) {
                prop_assert!(ring.verify(&s, 1200, 30).is_err());
            }
        }
    }
}

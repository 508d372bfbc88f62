//! The claims of a join token and their builder: who may join which session, until when,
//! on which nodes, with which E2EE decision. Not the format or signatures (`token`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{TokenError, B64, ED25519_PUBLIC_LEN, MAX_NODES};
use crate::ids::{DeviceId, NodeId, SessionId, UserId};
use crate::refusal::E2eeClaim;

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

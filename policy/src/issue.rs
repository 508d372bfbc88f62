//! Issuing: join tokens whose E2EE claim is the store's decision and whose nodes are the
//! session's placement.
//!
//! Owns the one place where the administrator's policy meets the token: the effective
//! policy, the user's own switch and compliance recording are evaluated from the store at
//! minting time (a few indexed rows) and written into `JoinClaims::e2ee`; the session's
//! candidates (primary, then fallbacks, by rendezvous hashing over the live node set) go
//! into `JoinClaims::nodes`. Relays stay stateless: they never read the store, they
//! enforce the claim, and accept a join only on a node the token lists. Does not own the
//! token format or signing (`duet_proto::token`) nor where the key comes from.
//!
//! A token is minted whatever the claim: a user who may not use E2EE still gets one, and
//! the relay answers its E2EE join with the typed refusal. With a peer given, the
//! [`CallDecision`] says up front what the call will be.

use std::time::Duration;

use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, JoinToken, NodeId, SessionId, SigningKey, UserId,
};
use serde::{Deserialize, Serialize};

use crate::model::Effective;
use crate::placement::NodeSet;
use crate::store::Store;
use crate::PolicyError;

/// What a call between two users will be, from both claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDecision {
    /// Both may (or must) use E2EE: the call is end-to-end encrypted.
    E2ee,
    /// At least one may not, and neither requires it: an ordinary call.
    Plain,
    /// One requires E2EE and the other cannot: the call does not happen (both SDKs get
    /// the typed refusal; no fallback).
    Refused,
}

impl CallDecision {
    pub fn between(a: E2eeClaim, b: E2eeClaim) -> Self {
        let can = |c: E2eeClaim| matches!(c, E2eeClaim::Allowed | E2eeClaim::Required);
        if can(a) && can(b) {
            Self::E2ee
        } else if a == E2eeClaim::Required || b == E2eeClaim::Required {
            Self::Refused
        } else {
            Self::Plain
        }
    }
}

/// A minted token and what it was made from.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub effective: Effective,
    /// Primary first, then fallbacks (empty: no placement, any relay).
    pub nodes: Vec<NodeId>,
    pub expires_at: u64,
}

/// Mints tokens from a store, a signing key and a node set.
pub struct Issuer<'a> {
    store: &'a dyn Store,
    key: &'a SigningKey,
    nodes: &'a NodeSet,
}

impl<'a> Issuer<'a> {
    pub fn new(store: &'a dyn Store, key: &'a SigningKey, nodes: &'a NodeSet) -> Self {
        Self { store, key, nodes }
    }

    /// A token for `user` on `device` in `session`, valid for `ttl` from now.
    pub fn mint(
        &self,
        session: SessionId,
        user: UserId,
        device: DeviceId,
        ttl: Duration,
    ) -> Result<Minted, PolicyError> {
        self.mint_at(session, user, device, ttl, duet_proto::clock::unix_now())
    }

    /// [`Issuer::mint`] at a given time (Unix seconds).
    pub fn mint_at(
        &self,
        session: SessionId,
        user: UserId,
        device: DeviceId,
        ttl: Duration,
        now_unix: u64,
    ) -> Result<Minted, PolicyError> {
        let nodes = self.nodes.candidates(&session);
        let (token, effective, expires_at) = mint_inner(
            self.store,
            self.key,
            session,
            user,
            device,
            ttl,
            nodes.clone(),
            now_unix,
        )?;
        Ok(Minted {
            token,
            effective,
            nodes,
            expires_at,
        })
    }

    /// The store this issuer reads.
    pub fn store(&self) -> &dyn Store {
        self.store
    }
}

/// The effective policy of `user` as the store has it now.
pub fn effective_for(store: &dyn Store, user: &UserId) -> Result<Effective, PolicyError> {
    store.effective(user)
}

/// The E2EE claim a token for `user` must carry.
pub fn claim_for(store: &dyn Store, user: &UserId) -> Result<E2eeClaim, PolicyError> {
    Ok(effective_for(store, user)?.claim)
}

/// Mints a join token for `user` on `device` in `session`, valid for `ttl` from now,
/// placed on `nodes` (primary first; empty: any relay), carrying the user's E2EE claim.
pub fn mint_token(
    store: &dyn Store,
    key: &SigningKey,
    session: SessionId,
    user: UserId,
    device: DeviceId,
    ttl: Duration,
    nodes: Vec<NodeId>,
) -> Result<(String, Effective), PolicyError> {
    let now = duet_proto::clock::unix_now();
    mint_token_at(store, key, session, user, device, ttl, nodes, now)
}

/// [`mint_token`] at a given time (Unix seconds), for tests and replayable tooling.
#[allow(clippy::too_many_arguments)]
pub fn mint_token_at(
    store: &dyn Store,
    key: &SigningKey,
    session: SessionId,
    user: UserId,
    device: DeviceId,
    ttl: Duration,
    nodes: Vec<NodeId>,
    now_unix: u64,
) -> Result<(String, Effective), PolicyError> {
    let (t, e, _) = mint_inner(store, key, session, user, device, ttl, nodes, now_unix)?;
    Ok((t, e))
}

#[allow(clippy::too_many_arguments)]
fn mint_inner(
    store: &dyn Store,
    key: &SigningKey,
    session: SessionId,
    user: UserId,
    device: DeviceId,
    ttl: Duration,
    nodes: Vec<NodeId>,
    now_unix: u64,
) -> Result<(String, Effective, u64), PolicyError> {
    if ttl.as_secs() == 0 {
        return Err(PolicyError::BadTtl(
            "a token must live at least one second".into(),
        ));
    }
    let eff = store.effective(&user)?;
    let claims = JoinClaims::builder(session, user, device)
        .issued_at(now_unix)
        .ttl(ttl)
        .nodes(nodes)
        .e2ee(eff.claim)
        .build()
        .map_err(|e| PolicyError::BadTtl(e.to_string()))?;
    Ok((JoinToken::mint(key, &claims), eff, claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallingE2ee, Change, PolicyName, GLOBAL};
    use crate::store::{Actor, SqliteStore};
    use duet_proto::TokenKeyring;

    #[test]
    fn minted_tokens_carry_the_claim_and_the_placement() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
        let key = SigningKey::ed25519_from_seed("k1", &[5u8; 32]).unwrap();
        let ring = TokenKeyring::new(vec![key.verifying_key()]);
        let nodes = NodeSet::from_static(["r0", "r1", "r2", "r3", "r4"]).unwrap();
        let issuer = Issuer::new(&store, &key, &nodes);
        let actor = Actor::new("t", "test");
        let mint = |device: &str| {
            let m = issuer
                .mint_at(
                    SessionId::new("s1").unwrap(),
                    UserId::new("alice").unwrap(),
                    DeviceId::new(device).unwrap(),
                    Duration::from_secs(60),
                    1000,
                )
                .unwrap();
            let claims = ring
                .verify(&m.token, &duet_proto::VerifyOptions::at(1010))
                .unwrap();
            assert_eq!(claims.e2ee, m.effective.claim);
            assert_eq!(claims.exp, 1060);
            assert_eq!(claims.nodes, m.nodes);
            assert_eq!(claims.nodes.len(), 3, "primary + two fallbacks");
            claims.e2ee
        };
        assert_eq!(mint("phone"), E2eeClaim::PolicyDisabled);
        let global = |c| Change::SetPolicy {
            name: PolicyName::new(GLOBAL).unwrap(),
            calling_e2ee: c,
        };
        store
            .apply(&actor, &global(CallingE2ee::DisabledUserOverride))
            .unwrap();
        assert_eq!(mint("phone"), E2eeClaim::UserNotEnabled);
        store
            .apply(
                &actor,
                &Change::SetUserE2ee {
                    user: UserId::new("alice").unwrap(),
                    on: true,
                },
            )
            .unwrap();
        assert_eq!(mint("phone"), E2eeClaim::Allowed);
        assert_eq!(mint("laptop"), E2eeClaim::Allowed);
        store.apply(&actor, &global(CallingE2ee::Required)).unwrap();
        assert_eq!(mint("laptop"), E2eeClaim::Required);
        assert!(matches!(
            issuer.mint(
                SessionId::new("s1").unwrap(),
                UserId::new("alice").unwrap(),
                DeviceId::new("d").unwrap(),
                Duration::ZERO,
            ),
            Err(PolicyError::BadTtl(_))
        ));
    }

    #[test]
    fn the_call_decision_fails_closed_under_required() {
        use CallDecision as D;
        use E2eeClaim as C;
        assert_eq!(D::between(C::Allowed, C::Required), D::E2ee);
        assert_eq!(D::between(C::Required, C::PolicyDisabled), D::Refused);
        assert_eq!(D::between(C::UserNotEnabled, C::Required), D::Refused);
        assert_eq!(D::between(C::Required, C::Unknown), D::Refused);
        assert_eq!(D::between(C::Allowed, C::UserNotEnabled), D::Plain);
        assert_eq!(D::between(C::Allowed, C::Allowed), D::E2ee);
    }
}

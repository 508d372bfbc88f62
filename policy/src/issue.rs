//! Issuing: the E2EE claim for a user, and join tokens that carry it.
//!
//! Owns the one place where the administrator's policy meets the token: the effective
//! policy, the user's own switch and compliance recording are evaluated from the store at
//! minting time and written into `JoinClaims::e2ee`. Relays stay stateless: they never
//! read the store, they enforce the claim. Does not own the token format or signing
//! (`duet_proto::token`), nor where the key comes from (the relay's config or the app
//! backend's secret store).
//!
//! A token is minted whatever the claim: a user who may not use E2EE still gets a token,
//! and the relay answers its join with the typed refusal (`PolicyDisabled`,
//! `UserNotEnabled`, `ComplianceRecording`) and tells the waiting peer only that reason,
//! so both apps can fall back to their ordinary call path.

use std::time::Duration;

use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, JoinToken, NodeId, SessionId, SigningKey, UserId,
};

use crate::model::Effective;
use crate::file_store::PolicyStore;
use crate::PolicyError;

/// The effective policy of `user` as the store has it now.
pub fn effective_for(store: &PolicyStore, user: &UserId) -> Result<Effective, PolicyError> {
    Ok(store.load()?.effective(user))
}

/// The E2EE claim a token for `user` must carry.
pub fn claim_for(store: &PolicyStore, user: &UserId) -> Result<E2eeClaim, PolicyError> {
    Ok(effective_for(store, user)?.claim)
}

/// Mints a join token for `user` on `device` in `session`, valid for `ttl` from now,
/// optionally placed on `node`, carrying the user's E2EE claim. Returns the token and the
/// evaluation it was made from (so a backend can log or show why).
pub fn mint_token(
    store: &PolicyStore,
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
    store: &PolicyStore,
    key: &SigningKey,
    session: SessionId,
    user: UserId,
    device: DeviceId,
    ttl: Duration,
    nodes: Vec<NodeId>,
    now_unix: u64,
) -> Result<(String, Effective), PolicyError> {
    if ttl.as_secs() == 0 {
        return Err(PolicyError::BadTtl(
            "a token must live at least one second".into(),
        ));
    }
    let eff = effective_for(store, &user)?;
    let claims = JoinClaims::builder(session, user, device)
        .issued_at(now_unix)
        .ttl(ttl)
        .nodes(nodes)
        .e2ee(eff.claim)
        .build()
        .map_err(|e| PolicyError::BadTtl(e.to_string()))?;
    Ok((JoinToken::mint(key, &claims), eff))
}

#[cfg(test)]
mod tests {
    use crate::model::{CallingE2ee, Change, PolicyName, GLOBAL};
    use super::*;
    use duet_proto::TokenKeyring;

    #[test]
    fn minted_tokens_carry_the_claim_and_it_is_the_same_for_every_device() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).unwrap();
        let key = SigningKey::ed25519_from_seed("k1", &[5u8; 32]).unwrap();
        let ring = TokenKeyring::new(vec![key.verifying_key()]);
        let alice = UserId::new("alice").unwrap();
        let mint = |device: &str| {
            let (t, eff) = mint_token_at(
                &store,
                &key,
                SessionId::new("s1").unwrap(),
                alice.clone(),
                DeviceId::new(device).unwrap(),
                Duration::from_secs(60),
                Vec::new(),
                1000,
            )
            .unwrap();
            let claims = ring
                .verify(&t, &duet_proto::VerifyOptions::at(1010))
                .unwrap();
            assert_eq!(claims.e2ee, eff.claim);
            assert_eq!(claims.exp, 1060);
            claims.e2ee
        };
        assert_eq!(mint("phone"), E2eeClaim::PolicyDisabled);
        store
            .apply(
                "t",
                &Change::SetPolicy {
                    name: PolicyName::new(GLOBAL).unwrap(),
                    calling_e2ee: CallingE2ee::DisabledUserOverride,
                },
            )
            .unwrap();
        assert_eq!(mint("phone"), E2eeClaim::UserNotEnabled);
        store
            .apply(
                "t",
                &Change::SetUserE2ee {
                    user: alice.clone(),
                    on: true,
                },
            )
            .unwrap();
        assert_eq!(mint("phone"), E2eeClaim::Allowed);
        assert_eq!(mint("laptop"), E2eeClaim::Allowed);
        assert_eq!(claim_for(&store, &alice).unwrap(), E2eeClaim::Allowed);
        assert!(matches!(
            mint_token(
                &store,
                &key,
                SessionId::new("s1").unwrap(),
                alice,
                DeviceId::new("d").unwrap(),
                Duration::ZERO,
                Vec::new()
            ),
            Err(PolicyError::BadTtl(_))
        ));
    }
}

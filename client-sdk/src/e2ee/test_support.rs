//! Handshake configurations for tests and benchmarks outside this crate: tokens minted with
//! a fixed test issuer key, so both sides verify each other's. Not for production use.

use std::sync::Arc;

use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, JoinToken, SessionId, SigningKey, TokenKeyring, UserId,
};

use super::handshake::{HandshakeConfig, Role};
use super::identity::IdentityKey;
use super::optin::CallOptions;

/// The fixed test issuer.
pub fn issuer() -> SigningKey {
    // A fixed seed: a valid key, so this cannot fail.
    SigningKey::ed25519_from_seed("test-issuer", &[7u8; 32]).unwrap_or_else(|_| unreachable!())
}

/// A keyring holding [`issuer`]'s public key.
pub fn keyring() -> TokenKeyring {
    TokenKeyring::new(vec![issuer().verifying_key()])
}

/// Unix seconds the test tokens are valid at.
pub const NOW: u64 = 1_800_000_000;

/// A token for `user` (device `<user>-dev`) on `session` with `claim`, issued at [`NOW`].
pub fn token(session: &str, user: &str, claim: E2eeClaim) -> String {
    let claims = JoinClaims::builder(
        SessionId::new(session).unwrap_or_else(|_| unreachable!()),
        UserId::new(user).unwrap_or_else(|_| unreachable!()),
        DeviceId::new(format!("{user}-dev")).unwrap_or_else(|_| unreachable!()),
    )
    .issued_at(NOW)
    .e2ee(claim)
    .build()
    .unwrap_or_else(|_| unreachable!());
    JoinToken::mint(&issuer(), &claims)
}

/// A config for `role` on `session`: user `alice` for the initiator, `bob` for the
/// responder, E2EE as `claim` says, default options.
pub fn config(
    role: Role,
    identity: &Arc<IdentityKey>,
    session: &str,
    claim: E2eeClaim,
) -> HandshakeConfig {
    let user = match role {
        Role::Initiator => "alice",
        Role::Responder => "bob",
    };
    HandshakeConfig {
        role,
        identity: identity.clone(),
        context: session.as_bytes().to_vec(),
        token: token(session, user, claim),
        token_keys: keyring(),
        now_unix: NOW,
        options: CallOptions::default(),
    }
}

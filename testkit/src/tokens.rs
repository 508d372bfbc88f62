//! Join claims as tests want them: E2EE allowed, the default lifetime, any node. Change what
//! a test is about on the result (`JoinClaims` fields are public) or on the builder.
//!
//! Minting is [`crate::RelayUnderTest::token_with`]'s (it knows the relay's signing key);
//! the token format is `duet_proto`'s.

use duet_proto::{ClaimsBuilder, DeviceId, E2eeClaim, JoinClaims, SessionId, UserId};

/// A session id from a literal; panics on an invalid one (a bug in the test).
pub fn sid(session: &str) -> SessionId {
    SessionId::new(session).expect("a valid session id")
}

/// The builder of a test's claims with E2EE allowed: add `.nodes(..)`, `.ttl(..)`,
/// `.e2ee(..)`, `.identity_key(..)`, `.issued_at(..)`.
pub fn claims_builder(session: &str, user: &str, device: &str) -> ClaimsBuilder {
    JoinClaims::builder(
        sid(session),
        UserId::new(user).expect("a valid user id"),
        DeviceId::new(device).expect("a valid device id"),
    )
    .e2ee(E2eeClaim::Allowed)
}

/// Claims of `user`'s `device` for `session`: E2EE allowed, default lifetime, any node.
pub fn claims(session: &str, user: &str, device: &str) -> JoinClaims {
    claims_builder(session, user, device)
        .build()
        .expect("default claims are valid")
}

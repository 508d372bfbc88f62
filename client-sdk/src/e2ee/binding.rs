//! The backend's signature, not the relay's word: checking the peer's signed join token.
//!
//! Each side sends its own join token in its first handshake message (Commit, Hello or
//! Decline); the raw messages enter the transcript, so the code and both signatures cover
//! both tokens: their session id, user ids, devices and E2EE decisions. Here a token is
//! verified with the issuer's public keys the app configured ([`duet_proto::TokenKeyring`];
//! no relay can mint one), and checked against this call: the session the app asked for,
//! not this very device (a reflection), an E2EE decision that fits the message, and, when
//! the token names one, the identity key the peer signs with.
//!
//! Owns those checks. Does not own minting (the backend's) nor the key ring's source (the
//! app's configuration).

use duet_proto::{
    DeviceId, E2eeClaim, JoinClaims, TokenError, TokenKeyring, UserId, VerifyOptions,
};

use super::handshake::HandshakeError;
use super::optin::{E2eeUnavailable, UnavailableReason};

/// What this side knows to check a peer token against.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Issuer public keys (by key id).
    pub keyring: TokenKeyring,
    /// Unix seconds now (token lifetimes).
    pub now_unix: u64,
    /// The session the app asked for, as bytes (the handshake context).
    pub session: Vec<u8>,
    /// This side's own user and device (from its own token): a peer token naming the same
    /// device is this side's own token reflected back.
    pub me: (UserId, DeviceId),
}

/// A verified peer token, as far as the handshake cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerToken {
    pub user: UserId,
    pub device: DeviceId,
    pub e2ee: E2eeClaim,
    pub identity_key: Option<[u8; 32]>,
}

fn token_label(e: &TokenError) -> &'static str {
    match e {
        TokenError::Malformed(_) | TokenError::BadClaims(_) | TokenError::BadKeyId(_) => {
            "malformed"
        }
        TokenError::UnknownKey(_) => "unknown_key",
        TokenError::BadSignature | TokenError::WrongKeyKind(_) => "bad_signature",
        TokenError::Expired { .. } => "expired",
        TokenError::NotYetValid { .. } => "not_yet_valid",
        TokenError::LifetimeTooLong { .. } => "lifetime_too_long",
        TokenError::KeyTooShort(_) | TokenError::BadKey(_) => "bad_key",
    }
}

impl Binding {
    /// Verifies `token` and checks it belongs to this call's peer.
    pub fn verify(&self, token: &str) -> Result<PeerToken, HandshakeError> {
        if self.keyring.is_empty() {
            return Err(HandshakeError::NoTokenKeys);
        }
        let claims: JoinClaims = self
            .keyring
            .verify(token, &VerifyOptions::at(self.now_unix))
            .map_err(|e| HandshakeError::PeerToken(token_label(&e)))?;
        if claims.session.as_str().as_bytes() != self.session.as_slice() {
            return Err(HandshakeError::WrongSession);
        }
        if claims.user == self.me.0 && claims.device == self.me.1 {
            return Err(HandshakeError::Reflected);
        }
        Ok(PeerToken {
            user: claims.user,
            device: claims.device,
            e2ee: claims.e2ee,
            identity_key: claims.identity_key,
        })
    }

    /// A peer token that must allow E2EE (it came with a key share).
    pub fn verify_allowing(&self, token: &str) -> Result<PeerToken, HandshakeError> {
        let t = self.verify(token)?;
        if UnavailableReason::from_claim(t.e2ee).is_some() {
            return Err(HandshakeError::PeerTokenForbidsE2ee);
        }
        Ok(t)
    }

    /// A decline (in the handshake, or the relay's `PeerE2eeUnavailable`): valid only with
    /// the peer's signed token whose decision forbids E2EE. The reason is the token's, not
    /// what the message or the relay says.
    pub fn verify_decline(&self, token: &str) -> Result<E2eeUnavailable, HandshakeError> {
        let t = self.verify(token).map_err(|e| match e {
            HandshakeError::NoTokenKeys => e,
            _ => HandshakeError::UnprovenDecline,
        })?;
        match UnavailableReason::from_claim(t.e2ee) {
            Some(r) => Ok(E2eeUnavailable::peer(Some(r))),
            None => Err(HandshakeError::UnprovenDecline),
        }
    }

    /// The peer's identity key must be the one its token names, if it names one.
    pub fn check_identity(peer: &PeerToken, ik: &[u8]) -> Result<(), HandshakeError> {
        match &peer.identity_key {
            Some(k) if k.as_slice() != ik => Err(HandshakeError::IdentityNotInToken),
            _ => Ok(()),
        }
    }
}

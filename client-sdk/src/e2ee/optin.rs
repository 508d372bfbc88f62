//! Both must opt in: the per-call options and the typed "no E2EE for this call" result.
//!
//! Owns: [`CallOptions`], the local decision (the user's switch for this call plus the
//! token's [`E2eeClaim`]), and [`E2eeUnavailable`] with its reasons. Does not own the
//! policy itself (evaluated where the token is minted) nor the messages that carry each
//! side's statement (`handshake.rs`: an endpoint that cannot use E2EE sends a `Decline`
//! with its reason instead of a key share, so the other side fails cleanly and typed).
//!
//! Never a silent downgrade: an unavailable result comes with no media keys at all, so
//! the transport has nothing to encrypt with and must not send media on this call. The
//! app may then offer its user an ordinary (non-E2EE) call: an explicit, user-visible
//! choice, never automatic.

use duet_proto::E2eeClaim;

use super::code::PeerIdentity;
use super::keys::RekeyPolicy;
use super::sframe::CipherSuite;

/// Options for one call, chosen by the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOptions {
    /// The user turned end-to-end encryption on for this call. Both users must; the
    /// token's policy claim must allow it too.
    pub e2ee: bool,
    /// The fingerprint of this contact's identity key, if the app verified it before.
    pub pinned_peer: Option<PeerIdentity>,
    /// SFrame suite proposed when this endpoint is slot A (slot B accepts A's).
    pub suite: CipherSuite,
    /// When media keys roll over.
    pub rekey: RekeyPolicy,
    /// What a peer identity that differs from `pinned_peer` does.
    pub on_identity_change: IdentityPolicy,
    /// Traffic-analysis padding of this side's sealed frames (`Call::set_padding` changes
    /// it mid-call).
    pub padding: crate::engine::Padding,
}

/// What a changed pinned identity does (see `CallOptions::pinned_peer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IdentityPolicy {
    /// The handshake fails (`HandshakeError::PinnedIdentityChanged`): no keys are
    /// installed, `join_e2ee` fails typed. The default.
    #[default]
    Block,
    /// The call proceeds; the verdict `IdentityCheck::Changed` is kept as the call's state
    /// (`Call::identity_check`) and told by `PeerIdentityChanged`.
    Warn,
}

impl Default for CallOptions {
    /// E2EE on, nothing pinned (a changed pin blocks), AES_128_GCM_SHA256_128, default
    /// rekey schedule.
    fn default() -> Self {
        Self {
            e2ee: true,
            pinned_peer: None,
            suite: CipherSuite::default(),
            rekey: RekeyPolicy::default(),
            on_identity_change: IdentityPolicy::Block,
            padding: crate::engine::Padding::Off,
        }
    }
}

/// Why a call cannot be end-to-end encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnavailableReason {
    /// The other side did not (or could not) turn E2EE on; see `peer_reason`.
    PeerNotEnabled,
    /// This user's administrator policy is `Disabled`.
    PolicyDisabled,
    /// This user has not turned E2EE on (stored switch, or this call's option).
    UserNotEnabled,
    /// This user is under compliance recording.
    ComplianceRecording,
}

impl UnavailableReason {
    /// Wire code in a `Decline` (only the local reasons travel).
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::PeerNotEnabled => 0,
            Self::UserNotEnabled => 1,
            Self::PolicyDisabled => 2,
            Self::ComplianceRecording => 3,
        }
    }

    #[cfg(test)]
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Self::UserNotEnabled),
            2 => Some(Self::PolicyDisabled),
            3 => Some(Self::ComplianceRecording),
            _ => None,
        }
    }

    /// Stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerNotEnabled => "peer_not_enabled",
            Self::PolicyDisabled => "policy_disabled",
            Self::UserNotEnabled => "user_not_enabled",
            Self::ComplianceRecording => "compliance_recording",
        }
    }

    /// The local reason for a token claim; `None` for `Allowed` and `Required`. A claim
    /// this build does not know allows nothing: it reads as `PolicyDisabled`.
    pub fn from_claim(claim: E2eeClaim) -> Option<Self> {
        match claim {
            E2eeClaim::Allowed | E2eeClaim::Required => None,
            E2eeClaim::PolicyDisabled | E2eeClaim::Unknown => Some(Self::PolicyDisabled),
            E2eeClaim::UserNotEnabled => Some(Self::UserNotEnabled),
            E2eeClaim::ComplianceRecording => Some(Self::ComplianceRecording),
        }
    }
}

/// The typed result an app gets instead of an E2EE call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("end-to-end encryption unavailable: {}", reason.as_str())]
pub struct E2eeUnavailable {
    pub reason: UnavailableReason,
    /// When `reason` is `PeerNotEnabled`: the decision in the peer's signed token (never
    /// `PeerNotEnabled`), verified by the handshake: the backend's word, not the relay's.
    pub peer_reason: Option<UnavailableReason>,
}

impl E2eeUnavailable {
    pub fn local(reason: UnavailableReason) -> Self {
        Self {
            reason,
            peer_reason: None,
        }
    }

    pub fn peer(peer_reason: Option<UnavailableReason>) -> Self {
        Self {
            reason: UnavailableReason::PeerNotEnabled,
            peer_reason: peer_reason.filter(|r| *r != UnavailableReason::PeerNotEnabled),
        }
    }

    /// Maps the relay's `PeerE2eeUnavailable(claim)` event.
    pub fn from_peer_claim(claim: E2eeClaim) -> Self {
        Self::peer(UnavailableReason::from_claim(claim))
    }
}

/// This side's decision: the token's claim first (compliance recording beats everything,
/// then policy, then the user's stored switch), then this call's option.
pub fn local_decision(user_enabled: bool, claim: E2eeClaim) -> Result<(), UnavailableReason> {
    if let Some(r) = UnavailableReason::from_claim(claim) {
        return Err(r);
    }
    if !user_enabled {
        return Err(UnavailableReason::UserNotEnabled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_decision_matrix() {
        use E2eeClaim::*;
        use UnavailableReason as R;
        let cases = [
            (true, Allowed, Ok(())),
            (false, Allowed, Err(R::UserNotEnabled)),
            (true, PolicyDisabled, Err(R::PolicyDisabled)),
            (false, PolicyDisabled, Err(R::PolicyDisabled)),
            (true, UserNotEnabled, Err(R::UserNotEnabled)),
            (true, ComplianceRecording, Err(R::ComplianceRecording)),
            (false, ComplianceRecording, Err(R::ComplianceRecording)),
        ];
        for (on, claim, want) in cases {
            assert_eq!(local_decision(on, claim), want, "{on} {claim:?}");
        }
        for r in [R::UserNotEnabled, R::PolicyDisabled, R::ComplianceRecording] {
            assert_eq!(R::from_code(r.code()), Some(r));
        }
        assert_eq!(R::from_code(0), None);
        assert_eq!(
            E2eeUnavailable::from_peer_claim(ComplianceRecording),
            E2eeUnavailable {
                reason: R::PeerNotEnabled,
                peer_reason: Some(R::ComplianceRecording)
            }
        );
    }
}

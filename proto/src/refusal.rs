//! Stable, documented codes: why something was refused, why a peer left, why a session
//! ended, which plaintext feature was asked for, and the E2EE policy claim of a token.
//!
//! Codes travel as numbers so an old client can read a new relay's answer
//! (`Unknown(code)`), and have stable names for metrics labels and docs.
//! Numbers are append-only: never renumber or reuse one.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! coded_enum {
    (
        $(#[$doc:meta])*
        $name:ident {
            $( $(#[$vdoc:meta])* $variant:ident = $code:literal => $label:literal, )+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "u16", into = "u16")]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )+
            /// A code this build does not know (sent by a newer peer).
            Unknown(u16),
        }

        impl $name {
            /// Every known value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn code(self) -> u16 {
                match self {
                    $( Self::$variant => $code, )+
                    Self::Unknown(c) => c,
                }
            }

            /// Stable snake_case name: metrics label, CLI word, docs anchor.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )+
                    Self::Unknown(_) => "unknown",
                }
            }

            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $( $label => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        impl From<u16> for $name {
            fn from(c: u16) -> Self {
                match c {
                    $( $code => Self::$variant, )+
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for u16 {
            fn from(v: $name) -> u16 {
                v.code()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    Self::Unknown(c) => write!(f, "unknown({c})"),
                    other => f.write_str(other.as_str()),
                }
            }
        }
    };
}

coded_enum!(
    /// Why the relay refused a join, a feature request or a message.
    RefusalReason {
        /// The session already has two endpoints (a third party, or a companion device).
        SessionFull = 1 => "session_full",
        /// The feature needs plaintext media, which an E2EE relay never has.
        PlaintextRequired = 2 => "plaintext_required",
        /// The user's E2EE policy is `disabled`.
        PolicyDisabled = 3 => "policy_disabled",
        /// The policy allows E2EE but the user has not turned it on.
        UserNotEnabled = 4 => "user_not_enabled",
        /// The user is under compliance recording and can never be in an E2EE call.
        ComplianceRecording = 5 => "compliance_recording",
        /// The token's expiry has passed.
        TokenExpired = 6 => "token_expired",
        /// The token could not be parsed, or its claims are invalid.
        BadToken = 7 => "bad_token",
        /// The token names a key id this relay does not trust.
        UnknownKey = 8 => "unknown_key",
        /// The token's signature does not verify under the key it names (tampered or wrong key).
        BadSignature = 9 => "bad_signature",
        /// The token is for another session than the one being joined.
        WrongSession = 10 => "wrong_session",
        /// The token places the session on another relay node.
        WrongNode = 11 => "wrong_node",
        /// The relay is shutting down and takes no new joins.
        RelayDraining = 12 => "relay_draining",
        /// Too many messages or bytes; the excess was dropped.
        RateLimited = 13 => "rate_limited",
        /// The relay carries as many sessions as its configuration allows.
        NodeFull = 14 => "node_full",
        /// This device is already in the session and did not present its resume secret.
        AlreadyJoined = 15 => "already_joined",
        /// The resume secret does not match the device's slot.
        ResumeRejected = 16 => "resume_rejected",
        /// A message too large for its limit (e.g. a `Signal`).
        TooLarge = 17 => "too_large",
        /// A message that is not valid at this point of the protocol (e.g. media before join).
        ProtocolViolation = 18 => "protocol_violation",
        /// The token is not valid yet (issued in the future beyond the allowed clock skew).
        TokenNotYetValid = 19 => "token_not_yet_valid",
        /// The peer cannot use E2EE for this call (its reason is in `E2eeUnavailable`).
        PeerE2eeUnavailable = 20 => "peer_e2ee_unavailable",
        /// The relay serves no raw-UDP fast path (turned off, or its channel table is full).
        FastPathUnavailable = 21 => "fast_path_unavailable",
    }
);

coded_enum!(
    /// Call features that need plaintext media. On an E2EE call every one is refused with
    /// `PlaintextRequired`, because the relay never holds media keys.
    Feature {
        Recording = 1 => "recording",
        Transcription = 2 => "transcription",
        LiveCaptions = 3 => "live_captions",
        AddParticipant = 4 => "add_participant",
        Transfer = 5 => "transfer",
        ConsultTransfer = 6 => "consult_transfer",
        Merge = 7 => "merge",
        Park = 8 => "park",
        CompanionDevice = 9 => "companion_device",
        TransferToDevice = 10 => "transfer_to_device",
        Apps = 11 => "apps",
    }
);

coded_enum!(
    /// Why the other endpoint left the session.
    PeerLeftReason {
        /// It said `Leave`.
        Left = 1 => "left",
        /// Its connection was lost and it did not resume in time.
        ConnectionLost = 2 => "connection_lost",
        /// It was silent past the idle timeout.
        IdleTimeout = 3 => "idle_timeout",
        /// It broke the protocol and was disconnected.
        ProtocolViolation = 4 => "protocol_violation",
    }
);

coded_enum!(
    /// Why the relay ended the whole session.
    EndReason {
        /// The session reached its maximum lifetime.
        MaxLifetime = 1 => "max_lifetime",
        /// Nothing was received from either endpoint for the idle timeout.
        IdleTimeout = 2 => "idle_timeout",
        /// The relay drained and its deadline passed.
        RelayShutdown = 3 => "relay_shutdown",
        /// The endpoint broke the protocol.
        ProtocolViolation = 4 => "protocol_violation",
        /// The endpoint was replaced by the same device resuming on a new connection.
        Replaced = 5 => "replaced",
    }
);

/// The E2EE decision carried in a join token, made where the token was minted from the
/// administrator's policy, the user's own switch and compliance recording.
/// The relay stays stateless and enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum E2eeClaim {
    /// The user may be in an E2EE call.
    #[default]
    Allowed,
    PolicyDisabled,
    UserNotEnabled,
    ComplianceRecording,
}

impl E2eeClaim {
    /// The refusal a relay gives a join under this claim, if any.
    pub fn refusal(self) -> Option<RefusalReason> {
        match self {
            Self::Allowed => None,
            Self::PolicyDisabled => Some(RefusalReason::PolicyDisabled),
            Self::UserNotEnabled => Some(RefusalReason::UserNotEnabled),
            Self::ComplianceRecording => Some(RefusalReason::ComplianceRecording),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        let mut codes = std::collections::HashSet::new();
        for r in RefusalReason::ALL {
            assert_eq!(RefusalReason::from(r.code()), *r);
            assert_eq!(RefusalReason::from_name(r.as_str()), Some(*r));
            assert!(names.insert(r.as_str()));
            assert!(codes.insert(r.code()));
        }
        assert_eq!(RefusalReason::from(999), RefusalReason::Unknown(999));
        assert_eq!(Feature::ALL.len(), 11);
        for f in Feature::ALL {
            assert_eq!(Feature::from(u16::from(*f)), *f);
        }
    }

    #[test]
    fn claims_map_to_refusals() {
        assert_eq!(E2eeClaim::Allowed.refusal(), None);
        assert_eq!(
            E2eeClaim::ComplianceRecording.refusal(),
            Some(RefusalReason::ComplianceRecording)
        );
    }
}

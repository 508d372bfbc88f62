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
        /// The token carries no E2EE decision this relay knows (missing, or a newer
        /// minter's value): treated as "E2EE not allowed", never as allowed.
        E2eeClaimInvalid = 22 => "e2ee_claim_invalid",
        /// The user's policy requires end-to-end encryption and this join did not ask for
        /// it (a plain join under a `required` claim).
        E2eeRequired = 23 => "e2ee_required",
        /// The token's lifetime (`exp - iat`) is longer than this relay accepts.
        TokenLifetimeTooLong = 24 => "token_lifetime_too_long",
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
///
/// On the wire it is text (`"allowed"`, `"required"`, ...). It fails closed: a token without
/// the claim, or with a value this build does not know, reads as [`E2eeClaim::Unknown`],
/// which allows nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum E2eeClaim {
    /// The user may be in an E2EE call.
    Allowed,
    /// The user may only be in E2EE calls: no plain join, and no fallback to an ordinary
    /// call when the peer cannot do E2EE.
    Required,
    PolicyDisabled,
    UserNotEnabled,
    ComplianceRecording,
    /// Missing or not understood: E2EE is not allowed.
    Unknown,
}

impl E2eeClaim {
    /// Every value a minter may write, in a stable order.
    pub const ALL: &'static [E2eeClaim] = &[
        Self::Allowed,
        Self::Required,
        Self::PolicyDisabled,
        Self::UserNotEnabled,
        Self::ComplianceRecording,
    ];

    /// Stable snake_case name: the wire value, CLI word, metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Required => "required",
            Self::PolicyDisabled => "policy_disabled",
            Self::UserNotEnabled => "user_not_enabled",
            Self::ComplianceRecording => "compliance_recording",
            Self::Unknown => "unknown",
        }
    }

    /// The claim a wire value names; anything else is [`E2eeClaim::Unknown`].
    pub fn from_wire(s: &str) -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(Self::Unknown)
    }

    /// Whether this user may be in an E2EE call at all.
    pub fn allows_e2ee(self) -> bool {
        matches!(self, Self::Allowed | Self::Required)
    }

    /// Whether this user's calls must be end-to-end encrypted (no plain call, no fallback).
    pub fn is_required(self) -> bool {
        self == Self::Required
    }

    /// The refusal a relay gives an E2EE join under this claim, if any.
    pub fn refusal(self) -> Option<RefusalReason> {
        match self {
            Self::Allowed | Self::Required => None,
            Self::PolicyDisabled => Some(RefusalReason::PolicyDisabled),
            Self::UserNotEnabled => Some(RefusalReason::UserNotEnabled),
            Self::ComplianceRecording => Some(RefusalReason::ComplianceRecording),
            Self::Unknown => Some(RefusalReason::E2eeClaimInvalid),
        }
    }
}

impl Default for E2eeClaim {
    /// Fails closed: a claim nobody stated allows nothing.
    fn default() -> Self {
        Self::Unknown
    }
}

impl fmt::Display for E2eeClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for E2eeClaim {
    type Err = String;
    /// Strict: only the values a minter may write (CLI input), never `unknown`.
    fn from_str(s: &str) -> Result<Self, String> {
        match Self::from_wire(s) {
            Self::Unknown => Err(format!(
                "{s:?}: expected one of {}",
                Self::ALL
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            c => Ok(c),
        }
    }
}

impl Serialize for E2eeClaim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for E2eeClaim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any string is accepted and an unknown one fails closed, so a token from a newer
        // minter is refused for its claim (typed), not as a malformed token.
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(Self::from_wire(&s))
    }
}

coded_enum!(
    /// QUIC application close codes, both directions. Stable: documented for SDKs and
    /// operators; the control message sent before the close (`Refused`, `SessionEnded`)
    /// carries the detailed reason.
    CloseCode {
        /// The endpoint left (`Leave`), or the relay closed after it did.
        Left = 0 => "left",
        /// The join was refused.
        Refused = 1 => "refused",
        /// The relay ended the session.
        SessionEnded = 2 => "session_ended",
        /// Replaced by the same device resuming on a new connection.
        Replaced = 3 => "replaced",
        /// A malformed, oversized, empty or unknown control frame, or a message out of place.
        ProtocolViolation = 4 => "protocol_violation",
        /// No Join within the join timeout.
        JoinTimeout = 5 => "join_timeout",
        /// The relay is shutting down.
        Shutdown = 6 => "shutdown",
        /// The connection's control stream ended.
        Gone = 7 => "gone",
        /// The app dropped its call without leaving (the relay keeps the place for a resume).
        ClientDropped = 8 => "client_dropped",
        /// The client saw the relay break the protocol (a bad control frame) and hung up.
        RelayMisbehaved = 9 => "relay_misbehaved",
        /// The client moved the call to another connection or relay node.
        ClientMoved = 10 => "client_moved",
    }
);

impl CloseCode {
    /// As a QUIC application error code.
    pub fn to_u32(self) -> u32 {
        self.code().into()
    }

    /// From a QUIC application error code (an unknown or out-of-range one is `Unknown`).
    pub fn from_u64(code: u64) -> Self {
        u16::try_from(code).map_or(Self::Unknown(u16::MAX), Self::from)
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
    fn claims_are_text_and_fail_closed() {
        for c in E2eeClaim::ALL {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(serde_json::from_str::<E2eeClaim>(&json).unwrap(), *c);
            assert_eq!(c.as_str().parse::<E2eeClaim>(), Ok(*c));
        }
        assert_eq!(
            serde_json::from_str::<E2eeClaim>("\"some_future_value\"").unwrap(),
            E2eeClaim::Unknown
        );
        assert!(!E2eeClaim::Unknown.allows_e2ee());
        assert_eq!(E2eeClaim::default(), E2eeClaim::Unknown);
        assert!("unknown".parse::<E2eeClaim>().is_err());
        assert!(E2eeClaim::Required.allows_e2ee() && E2eeClaim::Required.is_required());
        assert_eq!(
            E2eeClaim::Unknown.refusal(),
            Some(RefusalReason::E2eeClaimInvalid)
        );
    }

    #[test]
    fn close_codes_roundtrip() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_u64(c.to_u32().into()), *c);
        }
        assert_eq!(CloseCode::from_u64(1 << 40), CloseCode::Unknown(u16::MAX));
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

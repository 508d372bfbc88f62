//! Identifiers that cross the wire and appear in tokens, logs and metrics labels.
//!
//! Owns their syntax (so a hostile id cannot smuggle whitespace, control characters or
//! unbounded length into logs); it does not own their meaning or uniqueness, which belong
//! to the app backend that mints tokens.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted identifier, in bytes.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} id contains {ch:?}; allowed are ASCII letters, digits and . _ - : @")]
    BadChar { kind: &'static str, ch: char },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')))
    {
        return Err(IdError::BadChar { kind, ch });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        // Validating on deserialize keeps the invariant for ids read off the wire.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A call: the two endpoints that hold tokens for the same session id meet in it.
    SessionId,
    "session"
);
id_type!(
    /// A person (or service account) in the app's directory.
    UserId,
    "user"
);
id_type!(
    /// One installation of the app for a user; a user's second device is a companion device.
    DeviceId,
    "device"
);
id_type!(
    /// A relay node, as named in the token's placement claim.
    NodeId,
    "node"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids_and_rejects_the_rest() {
        assert!(SessionId::new("call-42_a.b:c@d").is_ok());
        assert_eq!(SessionId::new(""), Err(IdError::Empty { kind: "session" }));
        assert_eq!(
            UserId::new("a b"),
            Err(IdError::BadChar {
                kind: "user",
                ch: ' '
            })
        );
        assert!(matches!(
            DeviceId::new("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { .. })
        ));
        assert!(DeviceId::new("x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn deserialize_validates() {
        let bad: Result<UserId, _> = serde_json::from_str("\"evil\\n\"");
        assert!(bad.is_err());
        let good: UserId = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(good.as_str(), "alice");
    }
}

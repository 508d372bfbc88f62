//! Identifiers that cross the wire and appear in tokens, logs and metrics labels.
//!
//! Owns their syntax (so a hostile id cannot smuggle whitespace, control characters or
//! unbounded length into logs); it does not own their meaning or uniqueness, which belong
//! to the app backend that mints tokens.

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

/// Declares a validated string type: a newtype over `String` whose every value passed
/// `$check` (a `fn(&str) -> Result<(), $err>`), whether built with `new`, parsed with
/// `FromStr` or deserialized. The one macro behind every id and name of the project
/// (`SessionId` here, `PolicyName` in the policy crate), so the invariant "a value of this
/// type is valid" holds the same way everywhere.
#[macro_export]
macro_rules! validated_string {
    ($(#[$doc:meta])* $vis:vis $name:ident, $err:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, $err> {
                let s = s.into();
                let check: fn(&str) -> Result<(), $err> = $check;
                check(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                Self::new(s)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        // Validating on deserialize keeps the invariant for values read off the wire, a
        // store or an API body.
        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as $crate::__serde::Deserialize>::deserialize(d)?;
                Self::new(s).map_err(<D::Error as $crate::__serde::de::Error>::custom)
            }
        }
    };
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $crate::validated_string!($(#[$doc])* pub $name, IdError, |s| validate($kind, s));
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

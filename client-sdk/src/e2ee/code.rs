//! What the users compare and what the app may remember: the security code, the peer's
//! identity fingerprint, and the pinning verdict.
//!
//! Owns: turning a transcript hash into 20 decimal digits, the fingerprint of a long-term
//! Ed25519 identity key, and comparing it with a pinned one. Does not own which transcript
//! is hashed (that is `handshake.rs`, which explains why the code cannot be ground by a
//! party in the middle) nor where pinned identities are stored (the app's contact list).

use std::fmt;

use aws_lc_rs::digest;

/// 20 decimal digits, shown as four groups of five: `"12345 67890 12345 67890"`.
///
/// About 66 bits: a party in the middle gets one try per call to match both sides'
/// codes (the commitment in the handshake rules out searching), so its odds are 10^-20.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecurityCode([u8; 20]);

impl SecurityCode {
    /// Derives the code from a transcript hash, domain-separated from every other use.
    pub(crate) fn from_transcript(th: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"duet-e2ee/1 security code");
        ctx.update(th);
        let d = ctx.finish();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d.as_ref()[..16]);
        // 2^128 / 10^20 ~ 3.4e18 whole cycles: the modulo bias is below 10^-18.
        let mut n = u128::from_be_bytes(first) % 100_000_000_000_000_000_000u128;
        let mut digits = [0u8; 20];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        Self(digits)
    }

    /// The 20 digits without spaces.
    pub fn digits(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The four groups of five.
    pub fn groups(&self) -> [&str; 4] {
        let d = self.digits();
        [&d[0..5], &d[5..10], &d[10..15], &d[15..20]]
    }
}

impl fmt::Display for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.groups();
        write!(f, "{a} {b} {c} {d}")
    }
}

impl fmt::Debug for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecurityCode({self})")
    }
}

/// Fingerprint of a peer's long-term identity key: SHA-256 over a label and the Ed25519
/// public key. The app stores it for a verified contact (its bytes or its hex form) and
/// passes it back as the pinned identity on the next call.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerIdentity([u8; 32]);

impl PeerIdentity {
    pub(crate) fn of_public_key(public_key: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"duet-e2ee/1 identity");
        ctx.update(public_key);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`PeerIdentity::to_hex`]'s output.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }

    /// Compares with what the app pinned for this contact, if anything.
    pub fn check(&self, pinned: Option<&PeerIdentity>) -> IdentityCheck {
        match pinned {
            None => IdentityCheck::New,
            Some(p) if p == self => IdentityCheck::Matches,
            Some(_) => IdentityCheck::Changed,
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerIdentity({})", &self.to_hex()[..16])
    }
}

/// The peer's identity key against the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityCheck {
    /// Nothing was pinned: compare the security code, then pin if it matched.
    New,
    /// Same key as the verified contact's: a man in the middle would have needed that
    /// contact's private key.
    Matches,
    /// A different key than the pinned one: a new device or reinstall, or someone in the
    /// middle. The app should say so and ask for the code to be compared again.
    Changed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn code_is_twenty_digits_in_four_groups() {
        let c = SecurityCode::from_transcript(b"abc");
        let s = c.to_string();
        assert_eq!(s.len(), 23);
        assert!(s
            .split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
        assert_eq!(c, SecurityCode::from_transcript(b"abc"));
        assert_ne!(c, SecurityCode::from_transcript(b"abd"));
    }

    #[test]
    fn pinning() {
        let a = PeerIdentity::of_public_key(&[1; 32]);
        let b = PeerIdentity::of_public_key(&[2; 32]);
        assert_eq!(a.check(None), IdentityCheck::New);
        assert_eq!(a.check(Some(&a)), IdentityCheck::Matches);
        assert_eq!(a.check(Some(&b)), IdentityCheck::Changed);
        assert_eq!(PeerIdentity::from_hex(&a.to_hex()), Some(a));
        assert_eq!(PeerIdentity::from_hex("zz"), None);
        assert_eq!(PeerIdentity::from_hex(&"é".repeat(32)), None);
    }

    proptest! {
        #[test]
        fn digits_are_digits(th in proptest::collection::vec(any::<u8>(), 0..64)) {
            let c = SecurityCode::from_transcript(&th);
            prop_assert_eq!(c.digits().len(), 20);
            prop_assert!(c.digits().bytes().all(|b| b.is_ascii_digit()));
        }
    }
}

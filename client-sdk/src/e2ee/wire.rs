//! The handshake's bytes: message types, lengths, parsing, and the token each side
//! carries.
//!
//! Owns the wire layout of Commit, Hello, Reveal, Finished and Decline (byte tables in
//! `docs/protocol.md`) and parsing them into [`Msg`] with every length checked. Does not
//! own what the fields mean (the state machine in `handshake.rs`, the key schedule in
//! `schedule.rs`).

use super::handshake::HandshakeError;
use super::optin::UnavailableReason;

/// Wire version of the handshake messages (2: each side's first message carries its
/// signed join token).
pub const HANDSHAKE_VERSION: u8 = 2;

pub(super) const T_COMMIT: u8 = 1;
pub(super) const T_HELLO: u8 = 2;
pub(super) const T_REVEAL: u8 = 3;
pub(super) const T_FINISHED: u8 = 4;
pub(super) const T_DECLINE: u8 = 5;

pub(super) const PK_LEN: usize = 32;
pub(super) const X_LEN: usize = 32;
pub(super) const NONCE_LEN: usize = 32;
pub(super) const HASH_LEN: usize = 32;
pub(super) const SIG_LEN: usize = 64;
pub(super) const MAC_LEN: usize = 32;
pub(super) const EK_LEN: usize = 1184;
pub(super) const CT_LEN: usize = 1088;

/// version | suite | IK_A | X_A | n_A
pub(super) const A_HELLO_LEN: usize = 1 + 2 + PK_LEN + X_LEN + NONCE_LEN;
pub(super) const COMMIT_LEN: usize = 2 + 2 + HASH_LEN;
pub(super) const HELLO_LEN: usize = 2 + 2 + PK_LEN + X_LEN + NONCE_LEN + EK_LEN;
pub(super) const REVEAL_LEN: usize = 2 + (A_HELLO_LEN - 1) + CT_LEN + SIG_LEN + MAC_LEN;
pub(super) const FINISHED_LEN: usize = 2 + SIG_LEN + MAC_LEN;
pub(super) const DECLINE_LEN: usize = 3;

/// Longest join token a message carries (the token format's own limit).
pub(super) const MAX_TOKEN: usize = duet_proto::token::MAX_TOKEN_LEN;

/// Largest handshake message, bytes: what the relay's `max_signal_bytes` must allow.
pub const MAX_HANDSHAKE_MESSAGE: usize = HELLO_LEN + 2 + MAX_TOKEN;

/// Appends `token_len(u16 BE) | token` (Commit, Hello and Decline end so).
pub(super) fn put_token(msg: &mut Vec<u8>, token: &str) {
    msg.extend_from_slice(&(token.len() as u16).to_be_bytes());
    msg.extend_from_slice(token.as_bytes());
}

pub(super) fn decline_message(reason: UnavailableReason, token: &str) -> Vec<u8> {
    let mut m = vec![HANDSHAKE_VERSION, T_DECLINE, reason.code()];
    put_token(&mut m, token);
    m
}

/// `version | suite | IK_A | X_A | n_A`: what the initiator commits to.
pub(super) fn encode_a_hello(suite: u16, ik: &[u8], x: &[u8], nonce: &[u8]) -> [u8; A_HELLO_LEN] {
    let mut a = [0u8; A_HELLO_LEN];
    a[0] = HANDSHAKE_VERSION;
    a[1..3].copy_from_slice(&suite.to_be_bytes());
    a[3..3 + PK_LEN].copy_from_slice(ik);
    a[3 + PK_LEN..3 + PK_LEN + X_LEN].copy_from_slice(x);
    a[3 + PK_LEN + X_LEN..].copy_from_slice(nonce);
    a
}

/// `version | 1 | suite | commitment | token_len | token`.
pub(super) fn encode_commit(suite: u16, commitment: &[u8], token: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(COMMIT_LEN + 2 + token.len());
    m.extend_from_slice(&[HANDSHAKE_VERSION, T_COMMIT]);
    m.extend_from_slice(&suite.to_be_bytes());
    m.extend_from_slice(commitment);
    put_token(&mut m, token);
    m
}

/// `version | 2 | suite | IK_B | X_B | n_B | EK_B | token_len | token`.
pub(super) fn encode_hello(
    suite: u16,
    ik: &[u8],
    x: &[u8],
    nonce: &[u8],
    ek: &[u8],
    token: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELLO_LEN + 2 + token.len());
    m.extend_from_slice(&[HANDSHAKE_VERSION, T_HELLO]);
    m.extend_from_slice(&suite.to_be_bytes());
    m.extend_from_slice(ik);
    m.extend_from_slice(x);
    m.extend_from_slice(nonce);
    m.extend_from_slice(ek);
    put_token(&mut m, token);
    m
}

/// `version | 3 | (helloA without its version byte) | CT | Sig_A | Mac_A`.
pub(super) fn encode_reveal(a_hello: &[u8], ct: &[u8], sig: &[u8], mac: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REVEAL_LEN);
    m.extend_from_slice(&[HANDSHAKE_VERSION, T_REVEAL]);
    m.extend_from_slice(&a_hello[1..]);
    m.extend_from_slice(ct);
    m.extend_from_slice(sig);
    m.extend_from_slice(mac);
    m
}

/// `version | 4 | Sig_B | Mac_B`.
pub(super) fn encode_finished(sig: &[u8], mac: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(FINISHED_LEN);
    m.extend_from_slice(&[HANDSHAKE_VERSION, T_FINISHED]);
    m.extend_from_slice(sig);
    m.extend_from_slice(mac);
    m
}

/// A parsed message; lengths are already checked, so the fields are exact.
pub(super) enum Msg<'a> {
    Commit {
        suite: u16,
        commitment: &'a [u8],
        token: &'a str,
    },
    Hello {
        suite: u16,
        ik: &'a [u8],
        x: &'a [u8],
        ek: &'a [u8],
        token: &'a str,
    },
    Reveal {
        /// version | suite | IK | X | n, as committed.
        a_hello: &'a [u8],
        ik: &'a [u8],
        x: &'a [u8],
        ct: &'a [u8],
        sig: &'a [u8],
        mac: &'a [u8],
    },
    Finished {
        sig: &'a [u8],
        mac: &'a [u8],
    },
    /// `reason` (byte 2) is informational and not parsed: the token's decision counts.
    Decline {
        token: &'a str,
    },
}

impl Msg<'_> {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Commit { .. } => "commit",
            Self::Hello { .. } => "hello",
            Self::Reveal { .. } => "reveal",
            Self::Finished { .. } => "finished",
            Self::Decline { .. } => "decline",
        }
    }
}

pub(super) fn parse(b: &[u8]) -> Result<Msg<'_>, HandshakeError> {
    let [version, ty, ..] = *b else {
        return Err(HandshakeError::Malformed("shorter than version and type"));
    };
    if version != HANDSHAKE_VERSION {
        return Err(HandshakeError::Version { got: version });
    }
    let want = match ty {
        T_COMMIT => COMMIT_LEN,
        T_HELLO => HELLO_LEN,
        T_REVEAL => REVEAL_LEN,
        T_FINISHED => FINISHED_LEN,
        T_DECLINE => DECLINE_LEN,
        other => return Err(HandshakeError::UnknownMessage(other)),
    };
    let carries_token = matches!(ty, T_COMMIT | T_HELLO | T_DECLINE);
    let (b, token) = if carries_token {
        split_token(b, want)?
    } else if b.len() != want {
        return Err(HandshakeError::Malformed("wrong length for its type"));
    } else {
        (b, "")
    };
    let suite = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    Ok(match ty {
        T_COMMIT => Msg::Commit {
            suite: suite(2),
            commitment: &b[4..],
            token,
        },
        T_HELLO => {
            let (ik, rest) = b[4..].split_at(PK_LEN);
            let (x, rest) = rest.split_at(X_LEN);
            let (_nonce, ek) = rest.split_at(NONCE_LEN);
            Msg::Hello {
                suite: suite(2),
                ik,
                x,
                ek,
                token,
            }
        }
        T_REVEAL => {
            // The committed helloA is `version | suite | IK | X | n`: the version byte,
            // then the message from its suite on.
            let body = &b[2..];
            let (hello_tail, rest) = body.split_at(A_HELLO_LEN - 1);
            let (ct, rest) = rest.split_at(CT_LEN);
            let (sig, mac) = rest.split_at(SIG_LEN);
            Msg::Reveal {
                a_hello: hello_tail,
                ik: &hello_tail[2..2 + PK_LEN],
                x: &hello_tail[2 + PK_LEN..2 + PK_LEN + X_LEN],
                ct,
                sig,
                mac,
            }
        }
        T_FINISHED => {
            let (sig, mac) = b[2..].split_at(SIG_LEN);
            Msg::Finished { sig, mac }
        }
        _ => Msg::Decline { token },
    })
}

/// Splits `fixed part | token_len | token`, every length checked.
fn split_token(b: &[u8], fixed: usize) -> Result<(&[u8], &str), HandshakeError> {
    if b.len() < fixed + 2 {
        return Err(HandshakeError::Malformed("wrong length for its type"));
    }
    let (head, rest) = b.split_at(fixed);
    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    if len > MAX_TOKEN || rest.len() != 2 + len {
        return Err(HandshakeError::Malformed("token length does not match"));
    }
    let token = std::str::from_utf8(&rest[2..])
        .map_err(|_| HandshakeError::Malformed("token is not text"))?;
    Ok((head, token))
}

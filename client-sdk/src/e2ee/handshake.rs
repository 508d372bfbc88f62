//! The end-to-end key agreement, carried in the relay's opaque `Signal` messages.
//!
//! Owns: the handshake messages and their encoding, the two state machines (initiator =
//! slot A, responder = slot B), the key schedule from the hybrid shared secret to the two
//! per-direction media roots, the transcript the security code is computed from, and every
//! way the handshake can fail ([`HandshakeError`]). Does not own: sending or receiving
//! (the transport passes bytes in and takes bytes out), timeouts (the transport's join
//! deadline), the media keys' life after the handshake (`keys.rs`), or the opt-in rule
//! (`optin.rs`; this module only carries each side's statement).
//!
//! # Flow
//!
//! ```text
//!  A (initiator, slot A)                                   B (responder, slot B)
//!  Commit  { suite, H(helloA), token_A }            ──────▶   B verifies token_A
//!                                                   ◀────── Hello { suite, IK_B, X_B, n_B, EK_B, token_B }
//!  Reveal  { helloA = (IK_A, X_A, n_A), CT, Sig_A, Mac_A } ─▶  B checks H(helloA), decapsulates
//!                                                   ◀────── Finished { Sig_B, Mac_B }   B: established
//!  A: established
//!  (either side, instead of its first message)      Decline { reason, token }  → the other:
//!      E2eeUnavailable if the token verifies and forbids E2EE, else UnprovenDecline
//! ```
//!
//! `IK` is the long-term Ed25519 identity key, `X` a fresh X25519 share, `n` a fresh
//! 32-byte nonce, `EK_B` a fresh ML-KEM-768 encapsulation key and `CT` A's encapsulation to
//! it. Every secret is fresh per call and dropped when the handshake ends (forward secrecy);
//! the identity keys only sign.
//!
//! # Key schedule (all SHA-256 / HKDF-SHA256)
//!
//! ```text
//! helloA   = version | suite | IK_A | X_A | n_A               (what Commit commits to)
//! Commit   carries H("duet-e2ee/1 commit" | helloA)
//! th_code  = H("duet-e2ee/1 transcript" | len(ctx) | ctx | Commit | Hello | helloA)
//! th_a     = H(th_code | CT)
//! prk      = HKDF-Extract(salt = th_a, ikm = ss_mlkem | ss_x25519)
//! fin_A, fin_B, root_A→B, root_B→A = HKDF-Expand(prk, distinct labels)
//! Sig_A    = Ed25519_A("duet-e2ee/1 sig A" | th_a),  Mac_A = HMAC(fin_A, th_a)
//! th_full  = H(th_a | Sig_A | Mac_A)
//! Sig_B    = Ed25519_B("duet-e2ee/1 sig B" | th_full), Mac_B = HMAC(fin_B, th_full)
//! code     = 20 digits from H("duet-e2ee/1 security code" | th_code)
//! ```
//!
//! `ctx` is the session id the app asked for, so a handshake cannot be moved to another
//! session; Commit and Hello enter the transcript whole, so both signed tokens (session,
//! users, devices, E2EE decisions) are bound by the code, the signatures and the keys
//! (`binding.rs` verifies them). Byte layouts: `docs/protocol.md`. **Hybrid:** both secrets enter one HKDF-Extract, with the transcript (both
//! shares, the KEM key and ciphertext) as salt — the concatenation combiner of the TLS
//! hybrid design: the output stays pseudorandom as long as either X25519 or ML-KEM-768
//! holds, so traffic recorded today stays private against a later quantum computer.
//!
//! # Why a man in the middle cannot choose a matching code
//!
//! The code hashes exactly three things: A's commitment, B's Hello, and A's hello. Each was
//! fixed before its sender saw the other side's values: A commits to helloA (with its fresh
//! nonce and share) before it receives anything from B, and B sends its Hello before A
//! reveals. A party M in the middle runs two handshakes, A↔M and M↔B, and needs
//! code(A↔M) = code(M↔B). Whatever order M plays them in, one of the two codes is fixed
//! by a random value M could not see when it fixed its own inputs: M must send its Hello to
//! A before A reveals helloA (A's nonce is hidden behind the hash), and M must commit to
//! its helloA' towards B before B picks its Hello. So M gets a single 10^-20 try per call,
//! never a search. The ML-KEM ciphertext, chosen by A *after* seeing EK_B, is deliberately
//! left out of the code (a code over it could be ground by M, re-encapsulating until it
//! matches); it is bound instead by both signatures, both MACs and the key derivation, so a
//! changed ciphertext fails the handshake. With matching codes, M forwarded both hellos
//! unchanged, so it knows neither the X25519 nor the ML-KEM secret, cannot produce either
//! MAC, and cannot read a frame. Pinning adds a second check: a verified contact's identity
//! key can only be presented by its owner (the signatures).
//!
//! Authentication is classical (Ed25519 and the users' comparison); confidentiality is
//! hybrid. An attacker who can break X25519 *during* the call and also forge Ed25519 is out
//! of scope, as in every deployed hybrid protocol today.
//!
//! Size: ~750 lines, of which a third is this protocol description; the wire, schedule,
//! identity and binding mechanisms are in their own modules.

use std::sync::Arc;

use aws_lc_rs::agreement::EphemeralPrivateKey;
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use duet_proto::{JoinToken, Slot, TokenKeyring};
use zeroize::Zeroizing;

use super::binding::{Binding, PeerToken};
use super::code::{IdentityCheck, PeerIdentity, SecurityCode};
use super::identity::{verify_sig, IdentityKey};
use super::keys::{Direction, FrameOpener, FrameSealer, RekeyPolicy};
use super::optin::{local_decision, CallOptions, E2eeUnavailable, IdentityPolicy};
use super::schedule::{
    arr, commitment_of, mac, random, schedule, sha256, th_code, verify_mac, x25519, x25519_keypair,
    Roots,
};
use super::sframe::CipherSuite;
use super::wire::*;

/// Everything that can go wrong in the handshake. All are fatal: the call gets no keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    #[error("unsupported handshake version {got} (this build speaks {HANDSHAKE_VERSION})")]
    Version { got: u8 },
    #[error("unknown handshake message type {0}")]
    UnknownMessage(u8),
    /// A valid message at the wrong time: dropped, reordered, replayed or duplicated
    /// handshake messages, or both sides in the same role.
    #[error("unexpected {got} while waiting for {expected}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("unsupported SFrame cipher suite {0:#06x}")]
    UnsupportedSuite(u16),
    /// The revealed hello is not the one the initiator committed to.
    #[error("revealed hello does not match the commitment")]
    CommitmentMismatch,
    #[error("peer signature over the transcript does not verify")]
    BadSignature,
    /// The key-confirmation MAC is wrong: the two sides do not hold the same keys.
    #[error("key confirmation failed")]
    BadConfirmation,
    /// An X25519 share or ML-KEM key the primitives refuse (e.g. a low-order point).
    #[error("peer key share rejected")]
    BadKeyShare,
    #[error("cryptographic operation failed")]
    Crypto,
    /// `on_signal` after the handshake finished or failed.
    #[error("handshake is over")]
    Over,
    /// No issuer public keys were configured, so the peer's token cannot be checked.
    #[error("no token issuer keys configured (E2eeConfig::token_keys)")]
    NoTokenKeys,
    /// This side's own token is unreadable.
    #[error("this side's join token is unreadable")]
    OwnToken,
    /// The peer's token does not verify (label: why).
    #[error("the peer's join token does not verify: {0}")]
    PeerToken(&'static str),
    /// The peer's token is for another session: a relay splicing two calls.
    #[error("the peer's token is for another session")]
    WrongSession,
    /// The peer presented this side's own token.
    #[error("the peer presented this device's own token")]
    Reflected,
    /// The peer sent a key share but its token forbids E2EE.
    #[error("the peer's token forbids E2EE, yet it sent a key share")]
    PeerTokenForbidsE2ee,
    /// The peer's identity key is not the one its token names.
    #[error("the peer's identity key is not the one its token names")]
    IdentityNotInToken,
    /// A decline that is not the peer's first message, or without the peer's signed token
    /// forbidding E2EE: the analogue of an unauthenticated "go clear", an attack.
    #[error(
        "a decline without the peer's signed token forbidding E2EE, or after its first message"
    )]
    UnprovenDecline,
    /// The peer's identity differs from the pinned one and `IdentityPolicy::Block` is on.
    #[error("the peer's identity key differs from the pinned one")]
    PinnedIdentityChanged,
}

impl HandshakeError {
    /// Stable metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Version { .. } => "version",
            Self::UnknownMessage(_) => "unknown_message",
            Self::Unexpected { .. } => "unexpected",
            Self::UnsupportedSuite(_) => "unsupported_suite",
            Self::CommitmentMismatch => "commitment_mismatch",
            Self::BadSignature => "bad_signature",
            Self::BadConfirmation => "bad_confirmation",
            Self::BadKeyShare => "bad_key_share",
            Self::Crypto => "crypto",
            Self::Over => "over",
            Self::NoTokenKeys => "no_token_keys",
            Self::OwnToken => "own_token",
            Self::PeerToken(_) => "peer_token",
            Self::WrongSession => "wrong_session",
            Self::Reflected => "reflected",
            Self::PeerTokenForbidsE2ee => "peer_token_forbids_e2ee",
            Self::IdentityNotInToken => "identity_not_in_token",
            Self::UnprovenDecline => "unproven_decline",
            Self::PinnedIdentityChanged => "pinned_identity_changed",
        }
    }
}

impl From<aws_lc_rs::error::Unspecified> for HandshakeError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto
    }
}

/// Which side of the handshake this endpoint plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Slot A: commits first, sends `Commit` and `Reveal`.
    Initiator,
    /// Slot B: answers with `Hello` and `Finished`.
    Responder,
}

impl Role {
    /// The relay's slot decides: A initiates.
    pub fn from_slot(slot: Slot) -> Self {
        match slot {
            Slot::A => Self::Initiator,
            Slot::B => Self::Responder,
        }
    }

    fn send_dir(self) -> Direction {
        match self {
            Self::Initiator => Direction::AtoB,
            Self::Responder => Direction::BtoA,
        }
    }
}

/// What the transport needs to start a handshake.
#[derive(Clone)]
pub struct HandshakeConfig {
    pub role: Role,
    /// This user's long-term identity key.
    pub identity: Arc<IdentityKey>,
    /// Binds the handshake to one call: the bytes of the session id the app asked for
    /// (never the relay's word); the peer's token must name the same session.
    pub context: Vec<u8>,
    /// This side's own signed join token, sent to the peer in the first message (its E2EE
    /// claim is this side's decision).
    pub token: String,
    /// The issuer's public keys, to verify the peer's token.
    pub token_keys: TokenKeyring,
    /// Unix seconds now, for token lifetimes.
    pub now_unix: u64,
    pub options: CallOptions,
}

/// The result of [`Handshake::start`].
pub enum Start {
    /// E2EE is possible on this side: send `send` (the initiator's `Commit`; nothing for
    /// the responder), then feed every peer signal to `handshake`.
    Proceed {
        handshake: Box<Handshake>,
        send: Option<Vec<u8>>,
    },
    /// This side cannot use E2EE. Send `send` (a `Decline`) so the peer fails cleanly,
    /// then report `unavailable`. No keys exist.
    Declined {
        send: Vec<u8>,
        unavailable: E2eeUnavailable,
    },
}

/// What one peer message led to.
pub enum Step {
    /// Send this to the peer and keep feeding signals.
    Send(Vec<u8>),
    /// Done. Send `send` if present, then use the keys.
    Established {
        send: Option<Vec<u8>>,
        established: Box<Established>,
    },
    /// The peer declined E2EE. No keys; no media.
    Unavailable(E2eeUnavailable),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send(m) => write!(f, "Send({} bytes)", m.len()),
            Self::Established { established, .. } => {
                write!(f, "Established(code {})", established.code)
            }
            Self::Unavailable(u) => write!(f, "Unavailable({u:?})"),
        }
    }
}

/// A finished handshake: what the users compare, and the media keys.
pub struct Established {
    /// Show to the user; both sides show the same digits exactly when no one is in the
    /// middle.
    pub code: SecurityCode,
    /// The peer's identity fingerprint, for the app to pin once the code was compared.
    pub peer: PeerIdentity,
    /// The peer against `CallOptions::pinned_peer`.
    pub identity_check: IdentityCheck,
    pub suite: CipherSuite,
    /// Encrypts this side's frames.
    pub sealer: FrameSealer,
    /// Decrypts the peer's frames.
    pub opener: FrameOpener,
    /// The peer's user id, from its verified token (bound into the transcript).
    pub peer_user: Option<duet_proto::UserId>,
    /// The secret in-call hybrid rekeys chain from ([`super::pcs`]).
    pub chain: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("code", &self.code)
            .field("peer", &self.peer)
            .field("identity_check", &self.identity_check)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

struct Common {
    role: Role,
    identity: Arc<IdentityKey>,
    context: Vec<u8>,
    token: String,
    binding: Binding,
    pinned: Option<PeerIdentity>,
    on_change: IdentityPolicy,
    rekey: RekeyPolicy,
}

enum State {
    /// Initiator, Commit sent.
    AwaitHello {
        suite: CipherSuite,
        x: EphemeralPrivateKey,
        a_hello: [u8; A_HELLO_LEN],
        commit: Vec<u8>,
    },
    /// Initiator, Reveal sent.
    AwaitFinished {
        suite: CipherSuite,
        peer: PeerToken,
        peer_ik: [u8; PK_LEN],
        th_full: [u8; HASH_LEN],
        fin_b: Zeroizing<Vec<u8>>,
        roots: Roots,
        code: SecurityCode,
    },
    /// Responder, waiting for the initiator's first message.
    AwaitCommit {
        x: EphemeralPrivateKey,
        dk: DecapsulationKey,
    },
    /// Responder, Hello sent.
    AwaitReveal {
        suite: CipherSuite,
        x: EphemeralPrivateKey,
        dk: DecapsulationKey,
        commitment: [u8; HASH_LEN],
        commit: Vec<u8>,
        hello: Vec<u8>,
        peer: PeerToken,
    },
    Over,
}

impl State {
    /// Whether nothing was received from the peer yet (where a decline may come).
    fn awaits_first_message(&self) -> bool {
        matches!(self, Self::AwaitHello { .. } | Self::AwaitCommit { .. })
    }

    fn expecting(&self) -> &'static str {
        match self {
            Self::AwaitHello { .. } => "hello",
            Self::AwaitFinished { .. } => "finished",
            Self::AwaitCommit { .. } => "commit",
            Self::AwaitReveal { .. } => "reveal",
            Self::Over => "nothing",
        }
    }
}

/// One side's handshake state machine. Sans-IO: bytes in, bytes out.
pub struct Handshake {
    common: Common,
    state: State,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.common.role)
            .field("awaiting", &self.state.expecting())
            .finish()
    }
}

impl Handshake {
    /// Starts this side's handshake, or declines if this side cannot use E2EE.
    pub fn start(cfg: HandshakeConfig) -> Result<Start, HandshakeError> {
        let own = JoinToken::peek(&cfg.token)
            .map_err(|_| HandshakeError::OwnToken)?
            .claims;
        if let Err(reason) = local_decision(cfg.options.e2ee, own.e2ee) {
            return Ok(Start::Declined {
                send: decline_message(reason, &cfg.token),
                unavailable: E2eeUnavailable::local(reason),
            });
        }
        if cfg.token_keys.is_empty() {
            return Err(HandshakeError::NoTokenKeys);
        }
        let common = Common {
            role: cfg.role,
            identity: cfg.identity,
            binding: Binding {
                keyring: cfg.token_keys,
                now_unix: cfg.now_unix,
                session: cfg.context.clone(),
                me: (own.user, own.device),
            },
            context: cfg.context,
            token: cfg.token,
            pinned: cfg.options.pinned_peer,
            on_change: cfg.options.on_identity_change,
            rekey: cfg.options.rekey,
        };
        let (x, x_pub) = x25519_keypair()?;
        match cfg.role {
            Role::Initiator => {
                let suite = cfg.options.suite;
                let nonce: [u8; NONCE_LEN] = random()?;
                let a_hello =
                    encode_a_hello(suite.id(), &common.identity.public_key(), &x_pub, &nonce);
                let commit = encode_commit(suite.id(), &commitment_of(&a_hello), &common.token);
                Ok(Start::Proceed {
                    send: Some(commit.clone()),
                    handshake: Box::new(Handshake {
                        common,
                        state: State::AwaitHello {
                            suite,
                            x,
                            a_hello,
                            commit,
                        },
                    }),
                })
            }
            Role::Responder => {
                let dk = DecapsulationKey::generate(&ML_KEM_768)?;
                Ok(Start::Proceed {
                    send: None,
                    handshake: Box::new(Handshake {
                        common,
                        state: State::AwaitCommit { x, dk },
                    }),
                })
            }
        }
    }

    pub fn role(&self) -> Role {
        self.common.role
    }

    /// The relay says the peer's join was refused because its token forbids E2EE, and
    /// forwards that token. Valid only before the peer's first handshake message and only
    /// when the token verifies and forbids E2EE; anything else is a typed attack. The
    /// handshake is over either way.
    pub fn on_peer_unavailable(&mut self, token: &str) -> Result<E2eeUnavailable, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Over);
        if !state.awaits_first_message() {
            return Err(HandshakeError::UnprovenDecline);
        }
        self.common.binding.verify_decline(token)
    }

    /// Feeds one `Signal` payload from the peer. Any error is final: the handshake is
    /// over, no keys exist, and the call must not carry media.
    pub fn on_signal(&mut self, raw: &[u8]) -> Result<Step, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Over);
        if matches!(state, State::Over) {
            return Err(HandshakeError::Over);
        }
        let msg = parse(raw)?;
        if let Msg::Decline { token, .. } = msg {
            // Only instead of the peer's first message, and only with its signed token
            // forbidding E2EE; anything else is an attack, never "unavailable".
            if !state.awaits_first_message() {
                return Err(HandshakeError::UnprovenDecline);
            }
            return Ok(Step::Unavailable(
                self.common.binding.verify_decline(token)?,
            ));
        }
        let expected = state.expecting();
        match (state, msg) {
            (
                State::AwaitCommit { x, dk },
                Msg::Commit {
                    suite,
                    commitment,
                    token,
                },
            ) => {
                let peer = self.common.binding.verify_allowing(token)?;
                self.responder_on_commit(x, dk, raw, suite, commitment, peer)
            }
            (
                State::AwaitHello {
                    suite,
                    x,
                    a_hello,
                    commit,
                },
                Msg::Hello {
                    suite: echoed,
                    ik,
                    x: x_b,
                    ek,
                    token,
                },
            ) => {
                if echoed != suite.id() {
                    return Err(HandshakeError::UnsupportedSuite(echoed));
                }
                let peer = self.common.binding.verify_allowing(token)?;
                Binding::check_identity(&peer, ik)?;
                self.initiator_on_hello(suite, x, &a_hello, &commit, raw, ik, x_b, ek, peer)
            }
            (
                State::AwaitReveal {
                    suite,
                    x,
                    dk,
                    commitment,
                    commit,
                    hello,
                    peer,
                },
                Msg::Reveal {
                    a_hello,
                    ik,
                    x: x_a,
                    ct,
                    sig,
                    mac,
                },
            ) => {
                let mut full = [0u8; A_HELLO_LEN];
                full[0] = HANDSHAKE_VERSION;
                full[1..].copy_from_slice(a_hello);
                // Constant time is not needed: the commitment is public.
                if commitment_of(&full) != commitment {
                    return Err(HandshakeError::CommitmentMismatch);
                }
                Binding::check_identity(&peer, ik)?;
                self.responder_on_reveal(
                    suite, x, dk, &commit, &hello, &full, ik, x_a, ct, sig, mac, peer,
                )
            }
            (
                State::AwaitFinished {
                    suite,
                    peer,
                    peer_ik,
                    th_full,
                    fin_b,
                    roots,
                    code,
                },
                Msg::Finished { sig, mac },
            ) => {
                verify_sig(&peer_ik, b"duet-e2ee/1 sig B", &th_full, sig)?;
                verify_mac(&fin_b, &th_full, mac)?;
                let established = self.establish(suite, &peer_ik, code, roots, peer)?;
                Ok(Step::Established {
                    send: None,
                    established: Box::new(established),
                })
            }
            (_, m) => Err(HandshakeError::Unexpected {
                expected,
                got: m.name(),
            }),
        }
    }

    fn responder_on_commit(
        &mut self,
        x: EphemeralPrivateKey,
        dk: DecapsulationKey,
        commit: &[u8],
        suite_id: u16,
        commitment: &[u8],
        peer: PeerToken,
    ) -> Result<Step, HandshakeError> {
        let suite =
            CipherSuite::from_id(suite_id).ok_or(HandshakeError::UnsupportedSuite(suite_id))?;
        let mut x_pub = [0u8; X_LEN];
        x_pub.copy_from_slice(x.compute_public_key()?.as_ref());
        let nonce: [u8; NONCE_LEN] = random()?;
        let ek = dk.encapsulation_key()?.key_bytes()?;
        if ek.as_ref().len() != EK_LEN {
            return Err(HandshakeError::Crypto);
        }
        let hello = encode_hello(
            suite_id,
            &self.common.identity.public_key(),
            &x_pub,
            &nonce,
            ek.as_ref(),
            &self.common.token,
        );
        self.state = State::AwaitReveal {
            suite,
            x,
            dk,
            commitment: arr(commitment),
            commit: commit.to_vec(),
            hello: hello.clone(),
            peer,
        };
        Ok(Step::Send(hello))
    }

    #[allow(clippy::too_many_arguments)]
    fn initiator_on_hello(
        &mut self,
        suite: CipherSuite,
        x: EphemeralPrivateKey,
        a_hello: &[u8; A_HELLO_LEN],
        commit: &[u8],
        hello: &[u8],
        ik_b: &[u8],
        x_b: &[u8],
        ek_b: &[u8],
        peer: PeerToken,
    ) -> Result<Step, HandshakeError> {
        let ek =
            EncapsulationKey::new(&ML_KEM_768, ek_b).map_err(|_| HandshakeError::BadKeyShare)?;
        let (ct, ss_kem) = ek.encapsulate().map_err(|_| HandshakeError::BadKeyShare)?;
        let ss_x = x25519(x, x_b)?;
        let th = th_code(&self.common.context, commit, hello, a_hello);
        let sec = schedule(suite, &th, ct.as_ref(), ss_kem.as_ref(), &ss_x)?;
        let sig_a = self.common.identity.sign(b"duet-e2ee/1 sig A", &sec.th_a);
        let mac_a = mac(&sec.fin_a, &sec.th_a);
        let th_full = sha256(&[&sec.th_a, &sig_a, &mac_a]);

        let reveal = encode_reveal(a_hello, ct.as_ref(), &sig_a, &mac_a);
        if reveal.len() != REVEAL_LEN {
            return Err(HandshakeError::Crypto);
        }
        self.state = State::AwaitFinished {
            suite,
            peer,
            peer_ik: arr(ik_b),
            th_full,
            fin_b: sec.fin_b,
            roots: sec.roots,
            code: SecurityCode::from_transcript(&th),
        };
        Ok(Step::Send(reveal))
    }

    #[allow(clippy::too_many_arguments)]
    fn responder_on_reveal(
        &mut self,
        suite: CipherSuite,
        x: EphemeralPrivateKey,
        dk: DecapsulationKey,
        commit: &[u8],
        hello: &[u8],
        a_hello: &[u8; A_HELLO_LEN],
        ik_a: &[u8],
        x_a: &[u8],
        ct: &[u8],
        sig_a: &[u8],
        mac_a: &[u8],
        peer: PeerToken,
    ) -> Result<Step, HandshakeError> {
        let ik_a: [u8; PK_LEN] = arr(ik_a);
        // ML-KEM decapsulation never fails on a well-sized ciphertext (implicit rejection
        // yields an unrelated secret), so a forged ciphertext shows up below as a bad
        // signature or MAC.
        let ss_kem = dk
            .decapsulate(Ciphertext::from(ct))
            .map_err(|_| HandshakeError::BadKeyShare)?;
        let ss_x = x25519(x, x_a)?;
        let th = th_code(&self.common.context, commit, hello, a_hello);
        let sec = schedule(suite, &th, ct, ss_kem.as_ref(), &ss_x)?;
        verify_sig(&ik_a, b"duet-e2ee/1 sig A", &sec.th_a, sig_a)?;
        verify_mac(&sec.fin_a, &sec.th_a, mac_a)?;

        let th_full = sha256(&[&sec.th_a, sig_a, mac_a]);
        let sig_b = self.common.identity.sign(b"duet-e2ee/1 sig B", &th_full);
        let mac_b = mac(&sec.fin_b, &th_full);
        let finished = encode_finished(&sig_b, &mac_b);
        let established = self.establish(
            suite,
            &ik_a,
            SecurityCode::from_transcript(&th),
            sec.roots,
            peer,
        )?;
        Ok(Step::Established {
            send: Some(finished),
            established: Box::new(established),
        })
    }

    fn establish(
        &self,
        suite: CipherSuite,
        peer_ik: &[u8; PK_LEN],
        code: SecurityCode,
        roots: Roots,
        token: PeerToken,
    ) -> Result<Established, HandshakeError> {
        let peer = PeerIdentity::of_public_key(peer_ik);
        let identity_check = peer.check(self.common.pinned.as_ref());
        if identity_check == IdentityCheck::Changed
            && self.common.on_change == IdentityPolicy::Block
        {
            return Err(HandshakeError::PinnedIdentityChanged);
        }
        let send_dir = self.common.role.send_dir();
        let (send_root, recv_root, recv_dir) = match send_dir {
            Direction::AtoB => (roots.a_to_b, roots.b_to_a, Direction::BtoA),
            Direction::BtoA => (roots.b_to_a, roots.a_to_b, Direction::AtoB),
        };
        let rekey = self.common.rekey;
        Ok(Established {
            code,
            identity_check,
            peer,
            suite,
            sealer: FrameSealer::new(suite, send_dir, send_root, rekey)
                .map_err(|_| HandshakeError::Crypto)?,
            opener: FrameOpener::new(suite, recv_dir, recv_root, rekey)
                .map_err(|_| HandshakeError::Crypto)?,
            peer_user: Some(token.user),
            chain: roots.chain,
        })
    }
}

#[cfg(test)]
pub(super) mod tests_support {
    /// The commitment to a hello, for tests that forge one.
    pub fn commitment(a_hello: &[u8]) -> [u8; 32] {
        super::commitment_of(a_hello)
    }
}

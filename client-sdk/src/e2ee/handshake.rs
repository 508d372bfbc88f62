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
//!  Commit  { suite, H(helloA) }                     ──────▶
//!                                                   ◀────── Hello { suite, IK_B, X_B, n_B, EK_B }
//!  Reveal  { helloA = (IK_A, X_A, n_A), CT, Sig_A, Mac_A } ─▶  B checks H(helloA), decapsulates
//!                                                   ◀────── Finished { Sig_B, Mac_B }   B: established
//!  A: established
//!  (either side, instead of its first message)      Decline { reason }  → the other: E2eeUnavailable
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
//! `ctx` is the session id the transport passes, so a handshake cannot be moved to another
//! session. **Hybrid:** both secrets enter one HKDF-Extract, with the transcript (both
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

use std::sync::Arc;

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, X25519};
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use aws_lc_rs::rand::{self, SystemRandom};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use aws_lc_rs::{digest, hkdf, hmac};
use duet_proto::{E2eeClaim, Slot};
use zeroize::Zeroizing;

use super::code::{IdentityCheck, PeerIdentity, SecurityCode};
use super::keys::{Direction, FrameOpener, FrameSealer, RekeyPolicy};
use super::optin::{local_decision, CallOptions, E2eeUnavailable, UnavailableReason};
use super::sframe::CipherSuite;

/// Wire version of the handshake messages.
pub const HANDSHAKE_VERSION: u8 = 1;

const T_COMMIT: u8 = 1;
const T_HELLO: u8 = 2;
const T_REVEAL: u8 = 3;
const T_FINISHED: u8 = 4;
const T_DECLINE: u8 = 5;

const PK_LEN: usize = 32;
const X_LEN: usize = 32;
const NONCE_LEN: usize = 32;
const HASH_LEN: usize = 32;
const SIG_LEN: usize = 64;
const MAC_LEN: usize = 32;
const EK_LEN: usize = 1184;
const CT_LEN: usize = 1088;

/// version | suite | IK_A | X_A | n_A
const A_HELLO_LEN: usize = 1 + 2 + PK_LEN + X_LEN + NONCE_LEN;
const COMMIT_LEN: usize = 2 + 2 + HASH_LEN;
const HELLO_LEN: usize = 2 + 2 + PK_LEN + X_LEN + NONCE_LEN + EK_LEN;
const REVEAL_LEN: usize = 2 + (A_HELLO_LEN - 1) + CT_LEN + SIG_LEN + MAC_LEN;
const FINISHED_LEN: usize = 2 + SIG_LEN + MAC_LEN;
const DECLINE_LEN: usize = 3;

/// Largest handshake message, bytes: what the relay's `max_signal_bytes` must allow.
pub const MAX_HANDSHAKE_MESSAGE: usize = if HELLO_LEN > REVEAL_LEN {
    HELLO_LEN
} else {
    REVEAL_LEN
};

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

/// Error creating or loading an identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("identity key rejected")]
pub struct IdentityKeyError;

/// A user's long-term Ed25519 identity key, kept by the app across calls (PKCS#8).
/// Its private half never leaves aws-lc (cleansed on drop); it only signs transcripts.
pub struct IdentityKey(Ed25519KeyPair);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey({:?})", self.identity())
    }
}

impl IdentityKey {
    pub fn generate() -> Result<Self, IdentityKeyError> {
        Ed25519KeyPair::generate()
            .map(Self)
            .map_err(|_| IdentityKeyError)
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, IdentityKeyError> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(Self)
            .map_err(|_| IdentityKeyError)
    }

    /// PKCS#8 v2 document to store (zeroized when dropped).
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, IdentityKeyError> {
        self.0
            .to_pkcs8()
            .map(|d| Zeroizing::new(d.as_ref().to_vec()))
            .map_err(|_| IdentityKeyError)
    }

    pub fn public_key(&self) -> [u8; PK_LEN] {
        let mut pk = [0u8; PK_LEN];
        pk.copy_from_slice(self.0.public_key().as_ref());
        pk
    }

    /// This key's fingerprint, as the peer will see it.
    pub fn identity(&self) -> PeerIdentity {
        PeerIdentity::of_public_key(&self.public_key())
    }

    fn sign(&self, label: &[u8], th: &[u8; HASH_LEN]) -> [u8; SIG_LEN] {
        let mut msg = Vec::with_capacity(label.len() + HASH_LEN);
        msg.extend_from_slice(label);
        msg.extend_from_slice(th);
        let mut sig = [0u8; SIG_LEN];
        sig.copy_from_slice(self.0.sign(&msg).as_ref());
        sig
    }
}

fn verify_sig(
    pk: &[u8; PK_LEN],
    label: &[u8],
    th: &[u8; HASH_LEN],
    sig: &[u8],
) -> Result<(), HandshakeError> {
    let mut msg = Vec::with_capacity(label.len() + HASH_LEN);
    msg.extend_from_slice(label);
    msg.extend_from_slice(th);
    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
        .verify(&msg, sig)
        .map_err(|_| HandshakeError::BadSignature)
}

/// What the transport needs to start a handshake.
#[derive(Clone)]
pub struct HandshakeConfig {
    pub role: Role,
    /// This user's long-term identity key.
    pub identity: Arc<IdentityKey>,
    /// Binds the handshake to one call: the session id's bytes.
    pub context: Vec<u8>,
    /// The token's E2EE claim for this user.
    pub claim: E2eeClaim,
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
    pinned: Option<PeerIdentity>,
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
    },
    Over,
}

impl State {
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

struct Roots {
    a_to_b: Zeroizing<Vec<u8>>,
    b_to_a: Zeroizing<Vec<u8>>,
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

fn decline_message(reason: UnavailableReason) -> Vec<u8> {
    vec![HANDSHAKE_VERSION, T_DECLINE, reason.code()]
}

fn random<const N: usize>() -> Result<[u8; N], HandshakeError> {
    let mut b = [0u8; N];
    rand::fill(&mut b)?;
    Ok(b)
}

fn x25519_keypair() -> Result<(EphemeralPrivateKey, [u8; X_LEN]), HandshakeError> {
    let sk = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())?;
    let mut pk = [0u8; X_LEN];
    pk.copy_from_slice(sk.compute_public_key()?.as_ref());
    Ok((sk, pk))
}

fn x25519(sk: EphemeralPrivateKey, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
    // aws-lc rejects an all-zero result (low-order peer point), RFC 7748 section 6.1.
    agreement::agree_ephemeral(
        sk,
        agreement::UnparsedPublicKey::new(&X25519, peer),
        HandshakeError::BadKeyShare,
        |ss| Ok(Zeroizing::new(ss.to_vec())),
    )
}

fn sha256(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn commitment_of(a_hello: &[u8]) -> [u8; HASH_LEN] {
    sha256(&[b"duet-e2ee/1 commit", a_hello])
}

fn th_code(context: &[u8], commit: &[u8], hello: &[u8], a_hello: &[u8]) -> [u8; HASH_LEN] {
    let ctx_len = (context.len() as u32).to_be_bytes();
    sha256(&[
        b"duet-e2ee/1 transcript",
        &ctx_len,
        context,
        commit,
        hello,
        a_hello,
    ])
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, label: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    prk.expand(&[label], Len(len))?.fill(&mut out)?;
    Ok(out)
}

struct Secrets {
    th_a: [u8; HASH_LEN],
    fin_a: Zeroizing<Vec<u8>>,
    fin_b: Zeroizing<Vec<u8>>,
    roots: Roots,
}

/// The hybrid key schedule (see the module doc).
fn schedule(
    suite: CipherSuite,
    th_code: &[u8; HASH_LEN],
    ct: &[u8],
    ss_kem: &[u8],
    ss_x: &[u8],
) -> Result<Secrets, HandshakeError> {
    let th_a = sha256(&[th_code, ct]);
    let mut ikm = Zeroizing::new(Vec::with_capacity(ss_kem.len() + ss_x.len()));
    ikm.extend_from_slice(ss_kem);
    ikm.extend_from_slice(ss_x);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &th_a).extract(&ikm);
    let nh = suite.hash_len();
    Ok(Secrets {
        th_a,
        fin_a: expand(&prk, b"duet-e2ee/1 finished A", MAC_LEN)?,
        fin_b: expand(&prk, b"duet-e2ee/1 finished B", MAC_LEN)?,
        roots: Roots {
            a_to_b: expand(&prk, b"duet-e2ee/1 media A->B", nh)?,
            b_to_a: expand(&prk, b"duet-e2ee/1 media B->A", nh)?,
        },
    })
}

fn mac(key: &[u8], th: &[u8; HASH_LEN]) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), th).as_ref());
    out
}

fn verify_mac(key: &[u8], th: &[u8; HASH_LEN], tag: &[u8]) -> Result<(), HandshakeError> {
    // Constant-time comparison inside aws-lc.
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), th, tag)
        .map_err(|_| HandshakeError::BadConfirmation)
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// A parsed message; lengths are already checked, so the fields are exact.
enum Msg<'a> {
    Commit {
        suite: u16,
        commitment: &'a [u8],
    },
    Hello {
        suite: u16,
        ik: &'a [u8],
        x: &'a [u8],
        ek: &'a [u8],
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
    Decline {
        reason: u8,
    },
}

impl Msg<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Commit { .. } => "commit",
            Self::Hello { .. } => "hello",
            Self::Reveal { .. } => "reveal",
            Self::Finished { .. } => "finished",
            Self::Decline { .. } => "decline",
        }
    }
}

fn parse(b: &[u8]) -> Result<Msg<'_>, HandshakeError> {
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
    if b.len() != want {
        return Err(HandshakeError::Malformed("wrong length for its type"));
    }
    let suite = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    Ok(match ty {
        T_COMMIT => Msg::Commit {
            suite: suite(2),
            commitment: &b[4..],
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
        _ => Msg::Decline { reason: b[2] },
    })
}

impl Handshake {
    /// Starts this side's handshake, or declines if this side cannot use E2EE.
    pub fn start(cfg: HandshakeConfig) -> Result<Start, HandshakeError> {
        if let Err(reason) = local_decision(cfg.options.e2ee, cfg.claim) {
            return Ok(Start::Declined {
                send: decline_message(reason),
                unavailable: E2eeUnavailable::local(reason),
            });
        }
        let common = Common {
            role: cfg.role,
            identity: cfg.identity,
            context: cfg.context,
            pinned: cfg.options.pinned_peer,
            rekey: cfg.options.rekey,
        };
        let (x, x_pub) = x25519_keypair()?;
        match cfg.role {
            Role::Initiator => {
                let suite = cfg.options.suite;
                let nonce: [u8; NONCE_LEN] = random()?;
                let mut a_hello = [0u8; A_HELLO_LEN];
                a_hello[0] = HANDSHAKE_VERSION;
                a_hello[1..3].copy_from_slice(&suite.id().to_be_bytes());
                a_hello[3..3 + PK_LEN].copy_from_slice(&common.identity.public_key());
                a_hello[3 + PK_LEN..3 + PK_LEN + X_LEN].copy_from_slice(&x_pub);
                a_hello[3 + PK_LEN + X_LEN..].copy_from_slice(&nonce);
                let mut commit = Vec::with_capacity(COMMIT_LEN);
                commit.extend_from_slice(&[HANDSHAKE_VERSION, T_COMMIT]);
                commit.extend_from_slice(&suite.id().to_be_bytes());
                commit.extend_from_slice(&commitment_of(&a_hello));
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

    /// Feeds one `Signal` payload from the peer. Any error is final: the handshake is
    /// over, no keys exist, and the call must not carry media.
    pub fn on_signal(&mut self, raw: &[u8]) -> Result<Step, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Over);
        if matches!(state, State::Over) {
            return Err(HandshakeError::Over);
        }
        let msg = parse(raw)?;
        if let Msg::Decline { reason } = msg {
            // Before keys exist the peer may decline at any point: fail closed.
            return Ok(Step::Unavailable(E2eeUnavailable::peer(
                UnavailableReason::from_code(reason),
            )));
        }
        let expected = state.expecting();
        match (state, msg) {
            (State::AwaitCommit { x, dk }, Msg::Commit { suite, commitment }) => {
                self.responder_on_commit(x, dk, raw, suite, commitment)
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
                },
            ) => {
                if echoed != suite.id() {
                    return Err(HandshakeError::UnsupportedSuite(echoed));
                }
                self.initiator_on_hello(suite, x, &a_hello, &commit, raw, ik, x_b, ek)
            }
            (
                State::AwaitReveal {
                    suite,
                    x,
                    dk,
                    commitment,
                    commit,
                    hello,
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
                self.responder_on_reveal(
                    suite, x, dk, &commit, &hello, &full, ik, x_a, ct, sig, mac,
                )
            }
            (
                State::AwaitFinished {
                    suite,
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
                let established = self.establish(suite, &peer_ik, code, roots)?;
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
        let mut hello = Vec::with_capacity(HELLO_LEN);
        hello.extend_from_slice(&[HANDSHAKE_VERSION, T_HELLO]);
        hello.extend_from_slice(&suite_id.to_be_bytes());
        hello.extend_from_slice(&self.common.identity.public_key());
        hello.extend_from_slice(&x_pub);
        hello.extend_from_slice(&nonce);
        hello.extend_from_slice(ek.as_ref());
        self.state = State::AwaitReveal {
            suite,
            x,
            dk,
            commitment: arr(commitment),
            commit: commit.to_vec(),
            hello: hello.clone(),
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

        let mut reveal = Vec::with_capacity(REVEAL_LEN);
        reveal.extend_from_slice(&[HANDSHAKE_VERSION, T_REVEAL]);
        reveal.extend_from_slice(&a_hello[1..]);
        reveal.extend_from_slice(ct.as_ref());
        reveal.extend_from_slice(&sig_a);
        reveal.extend_from_slice(&mac_a);
        if reveal.len() != REVEAL_LEN {
            return Err(HandshakeError::Crypto);
        }
        self.state = State::AwaitFinished {
            suite,
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
        let mut finished = Vec::with_capacity(FINISHED_LEN);
        finished.extend_from_slice(&[HANDSHAKE_VERSION, T_FINISHED]);
        finished.extend_from_slice(&sig_b);
        finished.extend_from_slice(&mac_b);
        let established =
            self.establish(suite, &ik_a, SecurityCode::from_transcript(&th), sec.roots)?;
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
    ) -> Result<Established, HandshakeError> {
        let peer = PeerIdentity::of_public_key(peer_ik);
        let send_dir = self.common.role.send_dir();
        let (send_root, recv_root, recv_dir) = match send_dir {
            Direction::AtoB => (roots.a_to_b, roots.b_to_a, Direction::BtoA),
            Direction::BtoA => (roots.b_to_a, roots.a_to_b, Direction::AtoB),
        };
        let rekey = self.common.rekey;
        Ok(Established {
            code,
            identity_check: peer.check(self.common.pinned.as_ref()),
            peer,
            suite,
            sealer: FrameSealer::new(suite, send_dir, send_root, rekey)
                .map_err(|_| HandshakeError::Crypto)?,
            opener: FrameOpener::new(suite, recv_dir, recv_root, rekey)
                .map_err(|_| HandshakeError::Crypto)?,
            peer_user: None,
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

//! Key confirmation after a connection change: proof, carried end to end, that the
//! other side still holds this call's media keys.
//!
//! Owns the two confirmation messages and their sealing. Does not own when a confirmation
//! starts or what waits for it (the engine's), nor the keys (`e2ee::keys`).
//!
//! A confirmation travels as a `Signal` (reliable, on the control stream) whose payload is
//! `version(1) | type(6) | SFrame`, the SFrame sealed with the sender's current media key
//! under the metadata [`CONFIRM_AAD`], over `kind(1) | nonce(16)`: kind 1 asks ("prove
//! it"), kind 2 answers with the asker's nonce. A frame sealed as media never opens as a
//! confirmation and the other way round (the metadata differs), the replay window rejects
//! a replayed one, and the nonce makes an answer fresh: a relay that hands a resumed
//! endpoint to anyone without the keys gets no answer, so no media is delivered.

use std::time::Instant;

use crate::e2ee::{FrameOpener, FrameSealer, OpenError, SealError, HANDSHAKE_VERSION};

/// Handshake message type of a key confirmation (after the handshake's 1..=5).
pub const T_CONFIRM: u8 = 6;
/// The SFrame metadata a confirmation is sealed under.
pub const CONFIRM_AAD: &[u8] = b"duet-e2ee/1 key confirmation";
/// Bytes of the random challenge.
pub const NONCE_LEN: usize = 16;

/// Which confirmation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmKind {
    /// "Prove you hold the keys": answer with my nonce.
    Request,
    /// The answer to a request, echoing its nonce.
    Reply,
}

impl ConfirmKind {
    fn code(self) -> u8 {
        match self {
            Self::Request => 1,
            Self::Reply => 2,
        }
    }
}

/// One opened confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub kind: ConfirmKind,
    pub nonce: [u8; NONCE_LEN],
}

/// Why a confirmation was not accepted (the opener also counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("not a key confirmation")]
    NotConfirm,
    #[error("key confirmation did not open: {0}")]
    Open(#[from] OpenError),
    #[error("key confirmation body is malformed")]
    Malformed,
}

/// Whether a signal payload is a key confirmation (the engine's, not the app's).
pub fn is_confirm(payload: &[u8]) -> bool {
    payload.len() >= 2 && payload[0] == HANDSHAKE_VERSION && payload[1] == T_CONFIRM
}

/// Seals one confirmation with this side's current media key.
pub fn seal(sealer: &mut FrameSealer, now: Instant, msg: Confirm) -> Result<Vec<u8>, SealError> {
    let mut body = [0u8; 1 + NONCE_LEN];
    body[0] = msg.kind.code();
    body[1..].copy_from_slice(&msg.nonce);
    let mut out = Vec::with_capacity(2 + body.len() + 64);
    out.extend_from_slice(&[HANDSHAKE_VERSION, T_CONFIRM]);
    sealer.seal_with_metadata_into(now, CONFIRM_AAD, &body, &mut out)?;
    Ok(out)
}

/// Opens a confirmation from the peer.
pub fn open(
    opener: &mut FrameOpener,
    now: Instant,
    payload: &[u8],
) -> Result<Confirm, ConfirmError> {
    if !is_confirm(payload) {
        return Err(ConfirmError::NotConfirm);
    }
    let mut body = Vec::with_capacity(1 + NONCE_LEN);
    opener.open_with_metadata_into(now, CONFIRM_AAD, &payload[2..], &mut body)?;
    let kind = match body.first() {
        Some(1) => ConfirmKind::Request,
        Some(2) => ConfirmKind::Reply,
        _ => return Err(ConfirmError::Malformed),
    };
    if body.len() != 1 + NONCE_LEN {
        return Err(ConfirmError::Malformed);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&body[1..]);
    Ok(Confirm { kind, nonce })
}

//! Traffic-analysis padding inside the SFrame plaintext.
//!
//! Owns the plaintext trailer and the size rules. Does not own sealing (the engine seals
//! what this returns) nor the choice (the app's [`Padding`] in `CallOptions`).
//!
//! On an E2EE call every sealed plaintext is `frame | 0x00 * p | p (u16 BE)`: the receiver
//! strips `p + 2` bytes after opening, whatever the sender chose, so padding needs no
//! negotiation. The relay sees only the padded size:
//!
//! * [`Padding::Off`]: `p = 0` (2 bytes of trailer).
//! * [`Padding::Buckets`]: the sealed plaintext is rounded up to the next power of two
//!   from 64 up to 1024 bytes, then to the next multiple of 1024: the relay learns a
//!   frame's size class, not its size.
//! * [`Padding::ConstantAudio`]: audio frames are padded to exactly `n` bytes (a frame
//!   longer than that to the next multiple of `n`), so speech activity and the codec's
//!   variable bitrate do not show; other kinds use buckets.

use duet_proto::MediaKind;

/// How sealed frames are padded (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Padding {
    #[default]
    Off,
    Buckets,
    /// Audio frames padded to this many bytes of sealed plaintext.
    ConstantAudio(u16),
}

/// Bytes of the trailer.
pub const TRAILER: usize = 2;
const MAX_PAD: usize = u16::MAX as usize;

/// Why a plaintext's trailer is unusable (the frame is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("padding trailer is malformed")]
pub struct PaddingError;

fn bucket(len: usize) -> usize {
    if len <= 1024 {
        len.next_power_of_two().max(64)
    } else {
        len.div_ceil(1024) * 1024
    }
}

/// The padded size for `len` bytes of frame, trailer included.
pub fn padded_len(mode: Padding, kind: MediaKind, len: usize) -> usize {
    let min = len + TRAILER;
    let target = match (mode, kind) {
        (Padding::Off, _) => min,
        (Padding::ConstantAudio(n), MediaKind::Audio) if n > 0 => {
            min.div_ceil(n as usize) * n as usize
        }
        _ => bucket(min),
    };
    // The trailer counts at most 65535 pad bytes.
    target.min(min + MAX_PAD)
}

/// `frame | zeros | p`, ready to seal.
pub fn pad(mode: Padding, kind: MediaKind, frame: &[u8], out: &mut Vec<u8>) {
    let total = padded_len(mode, kind, frame.len());
    let p = total - frame.len() - TRAILER;
    out.reserve(total);
    out.extend_from_slice(frame);
    out.resize(frame.len() + p, 0);
    out.extend_from_slice(&(p as u16).to_be_bytes());
}

/// The frame inside an opened plaintext.
pub fn unpad(plain: &[u8]) -> Result<&[u8], PaddingError> {
    let n = plain.len();
    if n < TRAILER {
        return Err(PaddingError);
    }
    let p = u16::from_be_bytes([plain[n - 2], plain[n - 1]]) as usize;
    let end = n.checked_sub(TRAILER + p).ok_or(PaddingError)?;
    Ok(&plain[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_and_constant_audio() {
        use MediaKind::*;
        assert_eq!(padded_len(Padding::Off, Audio, 100), 102);
        assert_eq!(padded_len(Padding::Buckets, Audio, 10), 64);
        assert_eq!(padded_len(Padding::Buckets, Video, 100), 128);
        assert_eq!(padded_len(Padding::Buckets, Video, 1500), 2048);
        assert_eq!(padded_len(Padding::ConstantAudio(160), Audio, 37), 160);
        assert_eq!(padded_len(Padding::ConstantAudio(160), Audio, 159), 320);
        assert_eq!(padded_len(Padding::ConstantAudio(160), Video, 37), 64);
    }

    proptest! {
        #[test]
        fn pad_then_unpad_is_identity(
            frame in proptest::collection::vec(any::<u8>(), 0..5000),
            mode in prop_oneof![
                Just(Padding::Off),
                Just(Padding::Buckets),
                (1u16..2000).prop_map(Padding::ConstantAudio),
            ],
        ) {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let mut out = Vec::new();
                pad(mode, kind, &frame, &mut out);
                prop_assert_eq!(out.len(), padded_len(mode, kind, frame.len()));
                prop_assert_eq!(unpad(&out).unwrap(), &frame[..]);
            }
        }

        #[test]
        fn unpad_never_panics(plain in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = unpad(&plain);
        }
    }
}

//! The media relay header: the only bytes of a media datagram the relay reads.
//!
//! Every media datagram is `MediaHeader | opaque E2EE payload`. The relay parses the header
//! to check the version and count by kind, then forwards the whole datagram unchanged.
//! This module does not know what the payload holds (the SDK's fragment header and SFrame
//! ciphertext live there).

use serde::{Deserialize, Serialize};

/// Wire version of the media header.
pub const MEDIA_VERSION: u8 = 1;
/// Bytes of header before the opaque payload.
pub const MEDIA_HEADER_LEN: usize = 2;

/// What a media datagram carries; the relay counts by it and rate-limits nothing by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum MediaKind {
    Audio = 1,
    Video = 2,
    Screen = 3,
}

impl MediaKind {
    pub const ALL: [MediaKind; 3] = [MediaKind::Audio, MediaKind::Video, MediaKind::Screen];

    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Audio),
            2 => Some(Self::Video),
            3 => Some(Self::Screen),
            _ => None,
        }
    }

    /// Stable lower-case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Screen => "screen",
        }
    }

    /// Dense index 0..3, for per-kind counter arrays.
    pub fn index(self) -> usize {
        self as usize - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaHeaderError {
    #[error("datagram of {0} bytes is shorter than the media header")]
    Truncated(usize),
    #[error("unsupported media header version {0}")]
    Version(u8),
    #[error("unknown media kind {0}")]
    Kind(u8),
}

impl MediaHeaderError {
    /// Stable metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated(_) => "truncated",
            Self::Version(_) => "bad_version",
            Self::Kind(_) => "bad_kind",
        }
    }
}

/// Parsed media header. Layout: `version: u8 | kind: u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaHeader {
    pub kind: MediaKind,
}

impl MediaHeader {
    pub fn new(kind: MediaKind) -> Self {
        Self { kind }
    }

    /// Parses the header at the front of `datagram`; returns it and the opaque payload.
    /// Never allocates: this runs once per forwarded packet.
    #[inline]
    pub fn parse(datagram: &[u8]) -> Result<(Self, &[u8]), MediaHeaderError> {
        match datagram {
            [MEDIA_VERSION, kind, payload @ ..] => match MediaKind::from_u8(*kind) {
                Some(kind) => Ok((Self { kind }, payload)),
                None => Err(MediaHeaderError::Kind(*kind)),
            },
            [v, _, ..] => Err(MediaHeaderError::Version(*v)),
            _ => Err(MediaHeaderError::Truncated(datagram.len())),
        }
    }

    pub fn to_bytes(self) -> [u8; MEDIA_HEADER_LEN] {
        [MEDIA_VERSION, self.kind as u8]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_kind() {
        for kind in MediaKind::ALL {
            let mut d = MediaHeader::new(kind).to_bytes().to_vec();
            d.extend_from_slice(b"opaque");
            let (h, p) = MediaHeader::parse(&d).unwrap();
            assert_eq!(h.kind, kind);
            assert_eq!(p, b"opaque");
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(MediaHeader::parse(&[]), Err(MediaHeaderError::Truncated(0)));
        assert_eq!(
            MediaHeader::parse(&[1]),
            Err(MediaHeaderError::Truncated(1))
        );
        assert_eq!(
            MediaHeader::parse(&[2, 1]),
            Err(MediaHeaderError::Version(2))
        );
        assert_eq!(MediaHeader::parse(&[1, 0]), Err(MediaHeaderError::Kind(0)));
        assert_eq!(
            MediaHeader::parse(&[1, 4, 9]),
            Err(MediaHeaderError::Kind(4))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((h, payload)) = MediaHeader::parse(&data) {
                let mut again = h.to_bytes().to_vec();
                again.extend_from_slice(payload);
                prop_assert_eq!(again, data);
            }
        }
    }
}

//! The probe at the front of every load-test media frame: which call and stream it belongs
//! to, its sequence number and the sender's timestamp. Sans-IO.
//!
//! Owns the probe's byte layout. It sits inside the frame the SDK carries end to end (inside
//! the E2EE payload once the SDK encrypts), so the relay never sees it; the receiver reads
//! it back after reassembly to measure one-way latency, loss, order and jitter. Timestamps
//! are microseconds on one process-wide monotonic clock ([`now_us`]): both endpoints of a
//! call live in the same generator process, so no clock sync is needed. This module does
//! not decide frame sizes (see `profile`) nor aggregate anything (see `stats`).
//!
//! Layout, big-endian, [`PROBE_LEN`] bytes, then zero padding up to the planned size:
//! `magic "DL" | version u8 | kind u8 | call u32 | seq u64 | sent_us u64 | pieces u16 | flags u8 | reserved u8`

use std::sync::OnceLock;
use std::time::Instant;

use duet_proto::MediaKind;

pub const PROBE_MAGIC: [u8; 2] = *b"DL";
pub const PROBE_VERSION: u8 = 1;
pub const PROBE_LEN: usize = 28;
const FLAG_KEY: u8 = 1;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide epoch (set on first use). Monotonic.
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// What a probe says about its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: MediaKind,
    /// The call's index in the run: a frame of another call arriving here is misrouted.
    pub call: u32,
    /// Per (call, direction, kind), from 0.
    pub seq: u64,
    pub sent_us: u64,
    /// Datagrams the SDK cut the frame into (so the receiver counts datagrams per kind).
    pub pieces: u16,
    pub key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("frame of {0} bytes is shorter than a probe")]
    Short(usize),
    #[error("frame does not start with the probe magic")]
    Magic,
    #[error("unsupported probe version {0}")]
    Version(u8),
    #[error("unknown media kind {0} in probe")]
    Kind(u8),
}

impl Probe {
    /// Writes the probe and pads with zeros to `size` bytes (at least [`PROBE_LEN`]).
    pub fn encode_into(&self, size: usize, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&PROBE_MAGIC);
        out.push(PROBE_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.call.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.extend_from_slice(&self.pieces.to_be_bytes());
        out.push(if self.key { FLAG_KEY } else { 0 });
        out.push(0);
        out.resize(size.max(PROBE_LEN), 0);
    }

    pub fn decode(frame: &[u8]) -> Result<Self, ProbeError> {
        let Some(p) = frame.first_chunk::<PROBE_LEN>() else {
            return Err(ProbeError::Short(frame.len()));
        };
        if p[0..2] != PROBE_MAGIC {
            return Err(ProbeError::Magic);
        }
        if p[2] != PROBE_VERSION {
            return Err(ProbeError::Version(p[2]));
        }
        let kind = MediaKind::from_u8(p[3]).ok_or(ProbeError::Kind(p[3]))?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Self {
            kind,
            call: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            seq: u64_at(8),
            sent_us: u64_at(16),
            pieces: u16::from_be_bytes([p[24], p[25]]),
            key: p[26] & FLAG_KEY != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrips_and_pads() {
        let p = Probe {
            kind: MediaKind::Video,
            call: 7,
            seq: 123_456_789_012,
            sent_us: 42,
            pieces: 50,
            key: true,
        };
        let mut buf = Vec::new();
        p.encode_into(1000, &mut buf);
        assert_eq!(buf.len(), 1000);
        assert_eq!(Probe::decode(&buf), Ok(p));
        p.encode_into(3, &mut buf);
        assert_eq!(buf.len(), PROBE_LEN, "never shorter than the probe");
    }

    #[test]
    fn rejects_foreign_frames() {
        assert_eq!(Probe::decode(b"hi"), Err(ProbeError::Short(2)));
        assert_eq!(Probe::decode(&[0; 40]), Err(ProbeError::Magic));
        let mut buf = Vec::new();
        Probe {
            kind: MediaKind::Audio,
            call: 0,
            seq: 0,
            sent_us: 0,
            pieces: 1,
            key: false,
        }
        .encode_into(40, &mut buf);
        buf[3] = 9;
        assert_eq!(Probe::decode(&buf), Err(ProbeError::Kind(9)));
        buf[2] = 2;
        assert_eq!(Probe::decode(&buf), Err(ProbeError::Version(2)));
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Probe::decode(&data);
        }
    }
}

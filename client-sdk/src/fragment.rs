//! Splitting media frames into datagrams and putting them back together. Sans-IO.
//!
//! A frame larger than one datagram (a video keyframe) is sent as pieces. Each piece is
//! `MediaHeader | FragmentHeader | chunk`; the fragment header is inside the payload the
//! relay treats as opaque. The receiver delivers a frame only when every piece arrived;
//! a frame still missing a piece at its deadline is dropped and counted, never delivered
//! partial. This module does not encrypt (a frame is encrypted once, before it is split)
//! and does not touch sockets; callers pass the datagram size and the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use duet_proto::{MediaHeader, MediaHeaderError, MediaKind, MEDIA_HEADER_LEN};

/// Largest frame `send_media` accepts.
pub const MAX_FRAME: usize = 1024 * 1024;
/// `frame_id: u32 | index: u16 | count: u16`, big-endian.
pub const FRAGMENT_HEADER_LEN: usize = 8;
/// Bytes of every datagram before the frame's chunk.
pub const OVERHEAD: usize = MEDIA_HEADER_LEN + FRAGMENT_HEADER_LEN;
/// Frames being reassembled at once, all kinds together; beyond it the oldest is dropped.
const MAX_PARTIAL_FRAMES: usize = 64;

/// A whole media frame as the app sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    pub kind: MediaKind,
    pub data: Bytes,
    /// On an E2EE call, the frame's authenticated `(epoch, counter)`: the peer's sending
    /// order, which the relay cannot change (for the app's jitter buffer). `None` on a
    /// plain call.
    pub seq: Option<FrameSeq>,
}

/// Where a frame sits in the peer's sending order (authenticated by SFrame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameSeq {
    pub epoch: u64,
    pub counter: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    #[error("datagrams of {0} bytes cannot carry any frame data")]
    DatagramTooSmall(usize),
    #[error(transparent)]
    Header(#[from] MediaHeaderError),
    #[error("datagram too short for a fragment header")]
    Truncated,
    #[error("fragment {index} of {count} is out of range")]
    BadIndex { index: u16, count: u16 },
    #[error("fragment says {got} pieces, earlier pieces of the frame said {expected}")]
    CountMismatch { expected: u16, got: u16 },
}

/// Numbers frames per kind and cuts them into datagrams.
#[derive(Debug, Default)]
pub struct Fragmenter {
    next_id: [u32; 3],
}

impl Fragmenter {
    /// Cuts `frame` into datagrams of at most `max_datagram` bytes, headers included.
    pub fn split(
        &mut self,
        kind: MediaKind,
        frame: &[u8],
        max_datagram: usize,
    ) -> Result<Vec<Bytes>, FragmentError> {
        self.split_with_header(
            kind,
            frame,
            max_datagram,
            &MediaHeader::new(kind).to_bytes(),
        )
    }

    /// Like [`Fragmenter::split`], but each piece starts with `header` instead of the
    /// 2-byte media header (the fast path's 10-byte header). Pieces are sized as for a QUIC
    /// datagram of `max_datagram` bytes, so the body after the header (fragment header and
    /// chunk) is exactly what a QUIC piece would carry: a relay that bridges a piece to the
    /// peer's QUIC leg swaps the header and it still fits. Frame ids are shared with
    /// `split`, so a frame's id is unique whatever transport carries it.
    pub fn split_with_header(
        &mut self,
        kind: MediaKind,
        frame: &[u8],
        max_datagram: usize,
        header: &[u8],
    ) -> Result<Vec<Bytes>, FragmentError> {
        if frame.len() > MAX_FRAME {
            return Err(FragmentError::FrameTooLarge(frame.len()));
        }
        let chunk = max_datagram
            .checked_sub(OVERHEAD)
            .filter(|c| *c > 0)
            .ok_or(FragmentError::DatagramTooSmall(max_datagram))?;
        let count = frame.len().div_ceil(chunk).max(1);
        // 1 MiB / 1 byte chunks could exceed u16 pieces; refuse instead of wrapping.
        let count_u16 =
            u16::try_from(count).map_err(|_| FragmentError::DatagramTooSmall(max_datagram))?;
        let id = self.next_id[kind.index()];
        self.next_id[kind.index()] = id.wrapping_add(1);
        let mut out = Vec::with_capacity(count);
        let mut pieces = frame.chunks(chunk);
        for index in 0..count_u16 {
            let piece = pieces.next().unwrap_or(&[]);
            let mut d = BytesMut::with_capacity(header.len() + FRAGMENT_HEADER_LEN + piece.len());
            d.put_slice(header);
            d.put_u32(id);
            d.put_u16(index);
            d.put_u16(count_u16);
            d.put_slice(piece);
            out.push(d.freeze());
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct Partial {
    pieces: Vec<Option<Bytes>>,
    have: usize,
    bytes: usize,
    deadline: Instant,
}

/// Counters of what reassembly saw; all monotonically increasing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub frames_completed: u64,
    /// Frames dropped because a piece did not arrive in time (or space ran out).
    pub frames_incomplete: u64,
    pub duplicate_pieces: u64,
    pub malformed_datagrams: u64,
}

/// Collects pieces by `(kind, frame id)` and yields whole frames.
#[derive(Debug)]
pub struct Reassembler {
    partial: HashMap<(MediaKind, u32), Partial>,
    timeout: Duration,
    stats: ReassemblyStats,
}

impl Reassembler {
    pub fn new(timeout: Duration) -> Self {
        Self {
            partial: HashMap::new(),
            timeout,
            stats: ReassemblyStats::default(),
        }
    }

    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Takes one received datagram; returns a frame when it completes one.
    pub fn push(
        &mut self,
        datagram: Bytes,
        now: Instant,
    ) -> Result<Option<MediaFrame>, FragmentError> {
        let r = self.push_inner(datagram, now);
        if r.is_err() {
            self.stats.malformed_datagrams += 1;
        }
        r
    }

    fn push_inner(
        &mut self,
        datagram: Bytes,
        now: Instant,
    ) -> Result<Option<MediaFrame>, FragmentError> {
        let (header, payload) = MediaHeader::parse(&datagram)?;
        let Some((fh, _)) = payload.split_first_chunk::<FRAGMENT_HEADER_LEN>() else {
            return Err(FragmentError::Truncated);
        };
        let id = u32::from_be_bytes([fh[0], fh[1], fh[2], fh[3]]);
        let index = u16::from_be_bytes([fh[4], fh[5]]);
        let count = u16::from_be_bytes([fh[6], fh[7]]);
        if index >= count {
            return Err(FragmentError::BadIndex { index, count });
        }
        let chunk = datagram.slice(OVERHEAD..);
        let kind = header.kind;
        if count == 1 {
            self.stats.frames_completed += 1;
            return Ok(Some(MediaFrame {
                kind,
                data: chunk,
                seq: None,
            }));
        }
        let key = (kind, id);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL_FRAMES {
            self.evict_oldest();
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            pieces: vec![None; count as usize],
            have: 0,
            bytes: 0,
            deadline: now + self.timeout,
        });
        if p.pieces.len() != count as usize {
            let expected = p.pieces.len() as u16;
            return Err(FragmentError::CountMismatch {
                expected,
                got: count,
            });
        }
        let slot = &mut p.pieces[index as usize];
        if slot.is_some() {
            self.stats.duplicate_pieces += 1;
            return Ok(None);
        }
        if p.bytes + chunk.len() > MAX_FRAME {
            self.partial.remove(&key);
            self.stats.frames_incomplete += 1;
            return Err(FragmentError::FrameTooLarge(MAX_FRAME + 1));
        }
        p.bytes += chunk.len();
        *slot = Some(chunk);
        p.have += 1;
        if p.have < p.pieces.len() {
            return Ok(None);
        }
        let Some(p) = self.partial.remove(&key) else {
            return Ok(None);
        };
        let mut data = BytesMut::with_capacity(p.bytes);
        for piece in p.pieces.into_iter().flatten() {
            data.put_slice(&piece);
        }
        self.stats.frames_completed += 1;
        Ok(Some(MediaFrame {
            kind,
            data: data.freeze(),
            seq: None,
        }))
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.deadline)
            .map(|(k, _)| *k)
        {
            self.partial.remove(&key);
            self.stats.frames_incomplete += 1;
        }
    }

    /// Drops every frame whose deadline has passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.partial.len();
        self.partial.retain(|_, p| p.deadline > now);
        let dropped = before - self.partial.len();
        self.stats.frames_incomplete += dropped as u64;
        dropped
    }

    /// When `expire` next has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.partial.values().map(|p| p.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Duration = Duration::from_millis(500);

    #[test]
    fn small_frame_is_one_datagram() {
        let mut f = Fragmenter::default();
        let d = f.split(MediaKind::Audio, b"hi", 1200).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].len(), OVERHEAD + 2);
        let mut r = Reassembler::new(T);
        let frame = r.push(d[0].clone(), Instant::now()).unwrap().unwrap();
        assert_eq!(frame.kind, MediaKind::Audio);
        assert_eq!(&frame.data[..], b"hi");
    }

    #[test]
    fn a_longer_header_keeps_the_quic_sizing_and_the_same_body() {
        let frame = vec![9u8; 3000];
        let quic = Fragmenter::default()
            .split(MediaKind::Video, &frame, 1200)
            .unwrap();
        let hdr = [0xAAu8; 10];
        let fast = Fragmenter::default()
            .split_with_header(MediaKind::Video, &frame, 1200, &hdr)
            .unwrap();
        assert_eq!(quic.len(), fast.len());
        for (q, f) in quic.iter().zip(&fast) {
            assert!(q.len() <= 1200);
            assert_eq!(&f[..10], &hdr);
            assert_eq!(&q[MEDIA_HEADER_LEN..], &f[10..]);
        }
    }

    #[test]
    fn empty_frame_roundtrips() {
        let mut f = Fragmenter::default();
        let d = f.split(MediaKind::Screen, b"", 1200).unwrap();
        let mut r = Reassembler::new(T);
        let frame = r.push(d[0].clone(), Instant::now()).unwrap().unwrap();
        assert!(frame.data.is_empty());
    }

    #[test]
    fn limits_are_enforced() {
        let mut f = Fragmenter::default();
        assert_eq!(
            f.split(MediaKind::Video, &vec![0; MAX_FRAME + 1], 1200),
            Err(FragmentError::FrameTooLarge(MAX_FRAME + 1))
        );
        assert_eq!(
            f.split(MediaKind::Video, b"x", OVERHEAD),
            Err(FragmentError::DatagramTooSmall(OVERHEAD))
        );
        assert!(f.split(MediaKind::Video, &vec![0; MAX_FRAME], 1200).is_ok());
    }

    #[test]
    fn a_missing_piece_drops_the_frame_at_its_deadline() {
        let mut f = Fragmenter::default();
        let d = f.split(MediaKind::Video, &[7u8; 5000], 1200).unwrap();
        assert_eq!(d.len(), 5);
        let mut r = Reassembler::new(T);
        let t0 = Instant::now();
        for piece in d.iter().skip(1) {
            assert_eq!(r.push(piece.clone(), t0).unwrap(), None);
        }
        assert_eq!(r.next_deadline(), Some(t0 + T));
        assert_eq!(r.expire(t0 + T / 2), 0);
        assert_eq!(r.expire(t0 + T), 1);
        assert_eq!(r.stats().frames_incomplete, 1);
        // The late piece alone never makes a frame.
        assert_eq!(r.push(d[0].clone(), t0 + T).unwrap(), None);
    }

    #[test]
    fn malformed_pieces_are_typed_errors() {
        let mut r = Reassembler::new(T);
        let now = Instant::now();
        assert!(matches!(
            r.push(Bytes::from_static(&[1, 1, 0, 0]), now),
            Err(FragmentError::Truncated)
        ));
        assert!(matches!(
            r.push(Bytes::from_static(&[1, 1, 0, 0, 0, 1, 0, 2, 0, 2]), now),
            Err(FragmentError::BadIndex { index: 2, count: 2 })
        ));
        assert!(matches!(
            r.push(Bytes::from_static(&[9, 1]), now),
            Err(FragmentError::Header(_))
        ));
        r.push(Bytes::from_static(&[1, 1, 0, 0, 0, 1, 0, 0, 0, 3, 1]), now)
            .unwrap();
        assert!(matches!(
            r.push(Bytes::from_static(&[1, 1, 0, 0, 0, 1, 0, 1, 0, 4, 1]), now),
            Err(FragmentError::CountMismatch {
                expected: 3,
                got: 4
            })
        ));
        assert_eq!(r.stats().malformed_datagrams, 4);
    }

    proptest! {
        #[test]
        fn any_frame_in_any_order_reassembles(
            len in 0usize..20_000,
            mtu in (OVERHEAD + 1)..1500usize,
            seed in any::<u64>(),
        ) {
            let frame: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            let mut f = Fragmenter::default();
            let mut d = f.split(MediaKind::Video, &frame, mtu).unwrap();
            prop_assert!(d.iter().all(|p| p.len() <= mtu));
            // Deterministic shuffle.
            let n = d.len();
            for i in 0..n {
                let j = (seed as usize).wrapping_mul(i + 1) % n;
                d.swap(i, j);
            }
            // A duplicate piece of a split frame is ignored (single-piece frames carry no
            // state to dedupe against; SFrame's replay window covers those).
            if n > 1 {
                d.push(d[0].clone());
            }
            let mut r = Reassembler::new(T);
            let now = Instant::now();
            let mut out = Vec::new();
            for p in d {
                if let Some(fr) = r.push(p, now).unwrap() {
                    out.push(fr);
                }
            }
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(&out[0].data[..], &frame[..]);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reassembler::new(T);
            let _ = r.push(Bytes::from(data), Instant::now());
        }
    }
}

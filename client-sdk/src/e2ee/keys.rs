//! Media keys after the handshake: one sender (`FrameSealer`) and one receiver
//! (`FrameOpener`) per endpoint, epochs, rekeying, and the replay window.
//!
//! Owns: which SFrame KID means which epoch and direction, when to rekey, counters, the
//! previous epoch's grace period, replay protection, and counting every rejected frame.
//! Does not own: the SFrame wire format (`sframe.rs`), where the per-direction root
//! secrets come from (`handshake.rs`), or clocks — every call that needs the time takes
//! `now: Instant` from the caller, so the module stays sans-IO and testable.
//!
//! **KIDs and epochs.** `KID = epoch << 1 | direction` (direction 0 = A→B, 1 = B→A). Each
//! direction has its own root secret from the handshake, so the two senders never share
//! a key (RFC 9605 section 4.4.1); a frame reflected back at its sender carries the wrong
//! direction bit and is rejected as an unknown KID before any crypto runs.
//! `base_key[0]` is the handshake's root for the direction; `base_key[e+1]` is the
//! RFC 9605 section 5.1 ratchet of `base_key[e]`, and the old base key is zeroized once the
//! next one exists, so a key compromised in epoch e exposes no earlier epoch.
//!
//! **Rekey.** The sender moves to the next epoch when its frame count or the epoch's age
//! passes the [`RekeyPolicy`] thresholds, or on demand ([`FrameSealer::rekey`]). No
//! message announces it: the new KID in the next frame is the announcement. The receiver
//! ratchets forward when a frame with a newer epoch *authenticates* (a forged KID cannot
//! make it throw keys away), keeps the previous epoch's key for `grace` so frames still
//! in flight open, and rejects anything older as a stale epoch.
//!
//! Zeroization: base keys and salts are `Zeroizing`; aws-lc's AEAD key objects are cleansed
//! by aws-lc on free.
//!
//! Size: ~1,000 lines (~290 of them unit tests) on purpose: the media key schedule (roots,
//! epochs, ratchet, byte caps, replay windows) in one file, so a reviewer reads it at once.

use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::sframe::{self, CipherSuite, Header, HeaderError, SframeError, SframeKey};

/// Counters tracked behind the highest one seen, per epoch and sender.
pub const REPLAY_WINDOW: u64 = 1024;

/// Highest epoch number: KIDs must stay within 64 bits after the direction bit.
const MAX_EPOCH: u64 = (1 << 62) - 1;

/// Which way frames go; picks the KID's low bit and the root secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by slot A (the initiator).
    AtoB,
    /// Sent by slot B (the responder).
    BtoA,
}

impl Direction {
    fn bit(self) -> u64 {
        match self {
            Self::AtoB => 0,
            Self::BtoA => 1,
        }
    }

    pub fn kid(self, epoch: u64) -> u64 {
        (epoch << 1) | self.bit()
    }
}

/// When the sender starts a new epoch, and how the receiver follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// New epoch after this many frames in one epoch. Clamped to 2^32 so one AES-GCM key
    /// never approaches its usage limits.
    pub max_frames: u64,
    /// New epoch once the current one is this old (checked at each seal).
    pub max_age: Duration,
    /// How long the receiver keeps the previous epoch's key after switching.
    pub grace: Duration,
    /// How many epochs ahead of its current one the receiver will ratchet to open a frame
    /// (lost frames can hide a few rekeys); further ahead is an unknown KID.
    pub max_epoch_skip: u64,
    /// New epoch after this many plaintext bytes under one key. Clamped to 2^36 (2^32
    /// AES blocks), which keeps AES-GCM's confidentiality bound for one key below 2^-64
    /// whatever the frame sizes: a cap by frames alone lets huge frames run far past it.
    pub max_bytes: u64,
    /// The receiver drops a frame more than this many frames behind the newest it opened
    /// in the same epoch (`OpenError::TooLate`), so a relay cannot hold speech back and
    /// replay it in another order within the replay window.
    pub max_lag: u64,
    /// How often the initiator runs an in-call hybrid rekey (fresh X25519 + ML-KEM-768
    /// mixed into new roots; post-compromise security). `None`: only on demand.
    pub hybrid_interval: Option<Duration>,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        Self {
            max_frames: 1 << 20,
            max_age: Duration::from_secs(300),
            grace: Duration::from_secs(2),
            max_epoch_skip: 8,
            max_bytes: 1 << 36,
            max_lag: 256,
            hybrid_interval: Some(Duration::from_secs(300)),
        }
    }
}

impl RekeyPolicy {
    fn frame_limit(&self) -> u64 {
        self.max_frames.clamp(1, 1 << 32)
    }

    fn byte_limit(&self) -> u64 {
        self.max_bytes.clamp(1, 1 << 36)
    }
}

/// Sliding-window replay filter over one key's counters.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far, if any.
    pub(crate) top: Option<u64>,
    /// Bit i set: counter `top - i` was accepted.
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

/// A counter the window refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    Duplicate,
    TooOld,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            top: None,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }

    /// Would `ctr` be accepted? Does not change the window: the frame must authenticate
    /// first, or a forged counter could shift the window and lock out real frames.
    pub fn check(&self, ctr: u64) -> ReplayVerdict {
        let Some(top) = self.top else {
            return ReplayVerdict::Fresh;
        };
        if ctr > top {
            return ReplayVerdict::Fresh;
        }
        let back = top - ctr;
        if back >= REPLAY_WINDOW {
            return ReplayVerdict::TooOld;
        }
        let (w, b) = ((back / 64) as usize, back % 64);
        if self.bits[w] & (1 << b) != 0 {
            ReplayVerdict::Duplicate
        } else {
            ReplayVerdict::Fresh
        }
    }

    /// Records an authenticated `ctr` (call only after `check` said `Fresh`).
    pub fn accept(&mut self, ctr: u64) {
        match self.top {
            Some(top) if ctr <= top => {
                let back = top - ctr;
                if back < REPLAY_WINDOW {
                    self.bits[(back / 64) as usize] |= 1 << (back % 64);
                }
            }
            Some(top) => {
                self.shift(ctr - top);
                self.top = Some(ctr);
                self.bits[0] |= 1;
            }
            None => {
                self.top = Some(ctr);
                self.bits[0] = 1;
            }
        }
    }

    /// Moves every bit `n` places older.
    fn shift(&mut self, n: u64) {
        if n >= REPLAY_WINDOW {
            self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            return;
        }
        let words = (n / 64) as usize;
        let bits = (n % 64) as u32;
        let len = self.bits.len();
        for i in (0..len).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.bits[s]);
            let lo = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                hi
            } else {
                (hi << bits) | (lo >> (64 - bits))
            };
        }
    }
}

/// Why a frame could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("all 2^62 epochs are used up")]
    EpochsExhausted,
    #[error("sframe: {0}")]
    Sframe(#[from] SframeError),
}

/// Why a received frame was dropped. Every variant is counted in [`RecvStats`]; none is
/// ever delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("malformed SFrame header: {0}")]
    Malformed(#[from] HeaderError),
    #[error("frame shorter than its header and tag")]
    TooShort,
    /// A KID of the wrong direction, or too far ahead to be a rekey we missed.
    #[error("unknown key id {kid}")]
    UnknownKid { kid: u64 },
    /// An epoch older than the previous one, or the previous one after its grace.
    #[error("stale epoch {epoch} (current {current})")]
    StaleEpoch { epoch: u64, current: u64 },
    #[error("replayed frame (epoch {epoch}, counter {ctr})")]
    Replayed { epoch: u64, ctr: u64 },
    #[error("frame counter {ctr} is behind the replay window (epoch {epoch})")]
    TooOld { epoch: u64, ctr: u64 },
    /// Authentic and unseen, but more than `max_lag` frames behind the newest: held back
    /// and released late (a relay reordering speech); dropped.
    #[error("frame counter {ctr} is too far behind the newest (epoch {epoch})")]
    TooLate { epoch: u64, ctr: u64 },
    /// Tampered, truncated, or sealed under another key.
    #[error("frame failed authentication")]
    AuthFailed,
    #[error("cipher setup failed")]
    Crypto,
}

impl OpenError {
    /// Stable metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::TooShort => "malformed",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::StaleEpoch { .. } => "stale_epoch",
            Self::Replayed { .. } | Self::TooOld { .. } => "replayed",
            Self::TooLate { .. } => "too_late",
            Self::AuthFailed => "auth_failed",
            Self::Crypto => "crypto",
        }
    }
}

/// Sender-side counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub frames_sealed: u64,
    /// Epochs started after the first (scheduled and on demand).
    pub rekeys: u64,
}

/// Receiver-side counters: every frame handed to `open` lands in exactly one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvStats {
    pub frames_opened: u64,
    pub malformed: u64,
    pub unknown_kid: u64,
    pub stale_epoch: u64,
    pub replayed: u64,
    /// Authentic but too far behind the newest (`RekeyPolicy::max_lag`).
    pub too_late: u64,
    pub auth_failed: u64,
    /// Times the receiver followed the sender to a newer epoch.
    pub rekeys: u64,
}

impl RecvStats {
    pub fn rejected(&self) -> u64 {
        self.malformed
            + self.unknown_kid
            + self.stale_epoch
            + self.replayed
            + self.too_late
            + self.auth_failed
    }
}

/// One epoch's key material.
struct Epoch {
    epoch: u64,
    /// Kept only for the current epoch, to ratchet forward; `None` once superseded.
    base: Option<Zeroizing<Vec<u8>>>,
    key: SframeKey,
}

impl Epoch {
    fn first(
        suite: CipherSuite,
        dir: Direction,
        root: Zeroizing<Vec<u8>>,
    ) -> Result<Self, SframeError> {
        Ok(Self {
            epoch: 0,
            key: SframeKey::derive(suite, dir.kid(0), &root)?,
            base: Some(root),
        })
    }

    /// Epoch `epoch` from a fresh root (a hybrid rekey), not from the ratchet.
    fn rooted(
        suite: CipherSuite,
        dir: Direction,
        epoch: u64,
        root: Zeroizing<Vec<u8>>,
    ) -> Result<Self, SframeError> {
        Ok(Self {
            epoch,
            key: SframeKey::derive(suite, dir.kid(epoch), &root)?,
            base: Some(root),
        })
    }

    /// The epoch `steps` after this one (which must still hold its base key).
    fn advance(&self, suite: CipherSuite, dir: Direction, steps: u64) -> Result<Self, SframeError> {
        let mut base = match &self.base {
            Some(b) => sframe::ratchet(suite, b)?,
            None => return Err(SframeError::Crypto),
        };
        for _ in 1..steps {
            base = sframe::ratchet(suite, &base)?;
        }
        let epoch = self.epoch + steps;
        Ok(Self {
            epoch,
            key: SframeKey::derive(suite, dir.kid(epoch), &base)?,
            base: Some(base),
        })
    }
}

/// Encrypts this endpoint's outgoing frames. One per call; not shared with the receiver.
pub struct FrameSealer {
    suite: CipherSuite,
    dir: Direction,
    policy: RekeyPolicy,
    cur: Epoch,
    /// Next counter in the current epoch; never reused under one key.
    ctr: u64,
    /// Plaintext bytes sealed in the current epoch.
    bytes: u64,
    started: Option<Instant>,
    stats: SendStats,
}

impl std::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSealer")
            .field("dir", &self.dir)
            .field("epoch", &self.cur.epoch)
            .field("ctr", &self.ctr)
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    /// `root` is the direction's base key from the handshake (suite `Nh` bytes).
    pub fn new(
        suite: CipherSuite,
        dir: Direction,
        root: Zeroizing<Vec<u8>>,
        policy: RekeyPolicy,
    ) -> Result<Self, SframeError> {
        Ok(Self {
            suite,
            dir,
            policy,
            cur: Epoch::first(suite, dir, root)?,
            ctr: 0,
            bytes: 0,
            started: None,
            stats: SendStats::default(),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.cur.epoch
    }

    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The direction this sealer sends (A→B for the initiator).
    pub fn direction(&self) -> Direction {
        self.dir
    }

    pub fn policy(&self) -> RekeyPolicy {
        self.policy
    }

    pub fn stats(&self) -> SendStats {
        self.stats
    }

    /// Starts the next epoch now (on demand). The old base key is zeroized. Requests while
    /// the current epoch has sealed nothing yet are coalesced into it: an epoch no frame
    /// announced cannot be followed, so a burst of on-demand rekeys could otherwise push the
    /// sender further ahead than the receiver ratchets (`max_epoch_skip`) and desynchronise
    /// it for good.
    pub fn rekey(&mut self, now: Instant) -> Result<u64, SealError> {
        if self.ctr == 0 && self.cur.epoch > 0 {
            return Ok(self.cur.epoch);
        }
        self.next_epoch(now)
    }

    /// Jumps to `epoch` with a fresh root from a hybrid rekey (post-compromise: the new key
    /// does not follow from the old one). The old base key is zeroized.
    pub fn reroot(
        &mut self,
        now: Instant,
        epoch: u64,
        root: Zeroizing<Vec<u8>>,
    ) -> Result<u64, SealError> {
        if epoch <= self.cur.epoch || epoch > MAX_EPOCH {
            return Err(SealError::EpochsExhausted);
        }
        self.cur = Epoch::rooted(self.suite, self.dir, epoch, root)?;
        self.ctr = 0;
        self.bytes = 0;
        self.started = Some(now);
        self.stats.rekeys += 1;
        Ok(epoch)
    }

    fn next_epoch(&mut self, now: Instant) -> Result<u64, SealError> {
        if self.cur.epoch >= MAX_EPOCH {
            return Err(SealError::EpochsExhausted);
        }
        let next = self.cur.advance(self.suite, self.dir, 1)?;
        self.cur = next; // drops (and zeroizes) the old base key
        self.ctr = 0;
        self.bytes = 0;
        self.started = Some(now);
        self.stats.rekeys += 1;
        Ok(self.cur.epoch)
    }

    /// Seals one whole frame, appending `header || ciphertext || tag` to `out`. Rekeys
    /// first when the policy says so. Returns the epoch used.
    pub fn seal_into(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, SealError> {
        self.seal_with_metadata_into(now, &[], plaintext, out)
    }

    /// As `seal_into`, also authenticating `metadata` (RFC 9605's metadata, not sent: the
    /// receiver must open with the same bytes). The SDK binds the media kind this way so
    /// the relay cannot relabel a frame.
    pub fn seal_with_metadata_into(
        &mut self,
        now: Instant,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, SealError> {
        let started = *self.started.get_or_insert(now);
        if self.ctr >= self.policy.frame_limit()
            || self.bytes.saturating_add(plaintext.len() as u64) > self.policy.byte_limit()
            || now.saturating_duration_since(started) >= self.policy.max_age
        {
            self.next_epoch(now)?;
        }
        self.cur.key.seal_into(self.ctr, metadata, plaintext, out)?;
        // frame_limit <= 2^32 keeps this far from overflow.
        self.ctr += 1;
        self.bytes += plaintext.len() as u64;
        self.stats.frames_sealed += 1;
        Ok(self.cur.epoch)
    }

    pub fn seal(&mut self, now: Instant, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out =
            Vec::with_capacity(plaintext.len() + sframe::MAX_HEADER_LEN + sframe::TAG_LEN);
        self.seal_into(now, plaintext, &mut out)?;
        Ok(out)
    }
}

/// What [`FrameOpener::open_into`] tells about an accepted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub epoch: u64,
    /// The frame's authenticated counter in its epoch: (epoch, ctr) orders the peer's
    /// frames, for the app's jitter buffer.
    pub ctr: u64,
    /// This frame moved the receiver to a newer epoch (the peer rekeyed).
    pub switched_epoch: bool,
}

struct RecvEpoch {
    keys: Epoch,
    window: ReplayWindow,
}

/// Decrypts the peer's frames. One per call.
pub struct FrameOpener {
    suite: CipherSuite,
    dir: Direction,
    policy: RekeyPolicy,
    cur: RecvEpoch,
    /// The previous epoch and when its grace ends.
    prev: Option<(RecvEpoch, Instant)>,
    /// A derived-but-unconfirmed future epoch, so a burst of frames of a new epoch (or of
    /// forged ones) does not re-run the ratchet for each.
    pending: Option<Epoch>,
    /// A hybrid rekey's root for the sender's announced epoch, until its first frame.
    reroot: Option<(u64, Zeroizing<Vec<u8>>)>,
    stats: RecvStats,
}

impl std::fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameOpener")
            .field("dir", &self.dir)
            .field("epoch", &self.cur.keys.epoch)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FrameOpener {
    /// `dir` is the direction of the frames this opener receives (the peer's).
    pub fn new(
        suite: CipherSuite,
        dir: Direction,
        root: Zeroizing<Vec<u8>>,
        policy: RekeyPolicy,
    ) -> Result<Self, SframeError> {
        Ok(Self {
            suite,
            dir,
            policy,
            cur: RecvEpoch {
                keys: Epoch::first(suite, dir, root)?,
                window: ReplayWindow::new(),
            },
            prev: None,
            pending: None,
            reroot: None,
            stats: RecvStats::default(),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.cur.keys.epoch
    }

    /// The peer will send epoch `epoch` under `root` (a hybrid rekey): its first
    /// authentic frame there switches to it, however far ahead it is.
    pub fn expect_reroot(&mut self, epoch: u64, root: Zeroizing<Vec<u8>>) {
        self.reroot = Some((epoch, root));
    }

    pub fn stats(&self) -> RecvStats {
        self.stats
    }

    /// Opens one whole frame, appending the plaintext to `out` only if it authenticates
    /// and is fresh. Every rejection is counted.
    pub fn open_into(
        &mut self,
        now: Instant,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Opened, OpenError> {
        self.open_with_metadata_into(now, &[], frame, out)
    }

    /// As `open_into`, the frame having been sealed with `metadata` authenticated.
    pub fn open_with_metadata_into(
        &mut self,
        now: Instant,
        metadata: &[u8],
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Opened, OpenError> {
        let res = self.open_inner(now, metadata, frame, out);
        let s = &mut self.stats;
        match &res {
            Ok(o) => {
                s.frames_opened += 1;
                if o.switched_epoch {
                    s.rekeys += 1;
                }
            }
            Err(OpenError::Malformed(_) | OpenError::TooShort) => s.malformed += 1,
            Err(OpenError::UnknownKid { .. }) => s.unknown_kid += 1,
            Err(OpenError::StaleEpoch { .. }) => s.stale_epoch += 1,
            Err(OpenError::Replayed { .. } | OpenError::TooOld { .. }) => s.replayed += 1,
            Err(OpenError::TooLate { .. }) => s.too_late += 1,
            Err(OpenError::AuthFailed | OpenError::Crypto) => s.auth_failed += 1,
        }
        res
    }

    pub fn open(&mut self, now: Instant, frame: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::with_capacity(frame.len());
        self.open_into(now, frame, &mut out)?;
        Ok(out)
    }

    fn open_inner(
        &mut self,
        now: Instant,
        metadata: &[u8],
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Opened, OpenError> {
        let (h, hlen) = Header::decode(frame)?;
        if frame.len() < hlen + sframe::TAG_LEN {
            return Err(OpenError::TooShort);
        }
        if h.kid & 1 != self.dir.bit() {
            return Err(OpenError::UnknownKid { kid: h.kid });
        }
        let epoch = h.kid >> 1;
        let current = self.cur.keys.epoch;

        // Expire the previous epoch once its grace is over.
        if matches!(&self.prev, Some((_, until)) if now >= *until) {
            self.prev = None;
        }

        if epoch == current {
            if let Some(top) = self.cur.window.top {
                if top.saturating_sub(h.ctr) > self.policy.max_lag {
                    return Err(OpenError::TooLate { epoch, ctr: h.ctr });
                }
            }
            return open_with(&mut self.cur, h, hlen, metadata, frame, out).map(|()| Opened {
                epoch,
                ctr: h.ctr,
                switched_epoch: false,
            });
        }
        if epoch < current {
            return match &mut self.prev {
                Some((p, _)) if p.keys.epoch == epoch => {
                    open_with(p, h, hlen, metadata, frame, out).map(|()| Opened {
                        epoch,
                        ctr: h.ctr,
                        switched_epoch: false,
                    })
                }
                _ => Err(OpenError::StaleEpoch { epoch, current }),
            };
        }
        // A newer epoch: the peer rekeyed (maybe more than once, if frames were lost).
        let steps = epoch - current;
        let rerooted = self.reroot.as_ref().is_some_and(|(e, _)| *e == epoch);
        if steps > self.policy.max_epoch_skip && !rerooted {
            return Err(OpenError::UnknownKid { kid: h.kid });
        }
        let candidate = match self.pending.take() {
            Some(p) if p.epoch == epoch => p,
            _ if rerooted => {
                let root = self
                    .reroot
                    .as_ref()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                Epoch::rooted(self.suite, self.dir, epoch, root).map_err(|_| OpenError::Crypto)?
            }
            _ => self
                .cur
                .keys
                .advance(self.suite, self.dir, steps)
                .map_err(|_| OpenError::Crypto)?,
        };
        let mut next = RecvEpoch {
            keys: candidate,
            window: ReplayWindow::new(),
        };
        if let Err(e) = open_with(&mut next, h, hlen, metadata, frame, out) {
            // Not authentic: keep everything as it was (the candidate stays cached).
            self.pending = Some(next.keys);
            return Err(e);
        }
        // Authentic: switch. The old current becomes the previous (its base key goes),
        // the one before it is dropped.
        if rerooted {
            self.reroot = None;
        }
        let mut old = std::mem::replace(&mut self.cur, next);
        old.keys.base = None;
        self.prev = Some((old, now + self.policy.grace));
        Ok(Opened {
            epoch,
            ctr: h.ctr,
            switched_epoch: true,
        })
    }
}

fn open_with(
    e: &mut RecvEpoch,
    h: Header,
    hlen: usize,
    metadata: &[u8],
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), OpenError> {
    let epoch = e.keys.epoch;
    match e.window.check(h.ctr) {
        ReplayVerdict::Fresh => {}
        ReplayVerdict::Duplicate => return Err(OpenError::Replayed { epoch, ctr: h.ctr }),
        ReplayVerdict::TooOld => return Err(OpenError::TooOld { epoch, ctr: h.ctr }),
    }
    e.keys
        .key
        .open_into(h, hlen, frame, metadata, out)
        .map_err(|err| match err {
            SframeError::TooShort => OpenError::TooShort,
            SframeError::Header(h) => OpenError::Malformed(h),
            SframeError::Auth => OpenError::AuthFailed,
            SframeError::Crypto => OpenError::Crypto,
        })?;
    e.window.accept(h.ctr);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(policy: RekeyPolicy) -> (FrameSealer, FrameOpener) {
        let suite = CipherSuite::default();
        let root = || Zeroizing::new(vec![5u8; 32]);
        (
            FrameSealer::new(suite, Direction::AtoB, root(), policy).unwrap(),
            FrameOpener::new(suite, Direction::AtoB, root(), policy).unwrap(),
        )
    }

    #[test]
    fn window_accepts_reordered_and_rejects_duplicates_and_old() {
        let mut w = ReplayWindow::new();
        for c in [5u64, 3, 9, 4] {
            assert_eq!(w.check(c), ReplayVerdict::Fresh, "{c}");
            w.accept(c);
        }
        assert_eq!(w.check(9), ReplayVerdict::Duplicate);
        assert_eq!(w.check(4), ReplayVerdict::Duplicate);
        assert_eq!(w.check(6), ReplayVerdict::Fresh);
        w.accept(2000);
        assert_eq!(w.check(9), ReplayVerdict::TooOld);
        assert_eq!(w.check(2000), ReplayVerdict::Duplicate);
        assert_eq!(w.check(2000 - 1023), ReplayVerdict::Fresh);
        assert_eq!(w.check(2000 - 1024), ReplayVerdict::TooOld);
        assert_eq!(w.check(5), ReplayVerdict::TooOld);
        assert_eq!(w.check(1999), ReplayVerdict::Fresh);
    }

    proptest! {
        /// The window agrees with an exact model (a set of accepted counters) on every
        /// counter within its reach.
        #[test]
        fn window_matches_a_set_model(ops in proptest::collection::vec(0u64..3000, 1..300)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut top: Option<u64> = None;
            for c in ops {
                let v = w.check(c);
                let expect = match top {
                    Some(t) if c + REPLAY_WINDOW <= t => ReplayVerdict::TooOld,
                    _ if seen.contains(&c) => ReplayVerdict::Duplicate,
                    _ => ReplayVerdict::Fresh,
                };
                prop_assert_eq!(v, expect, "ctr {}", c);
                if v == ReplayVerdict::Fresh {
                    w.accept(c);
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }

    #[test]
    fn metadata_is_authenticated() {
        // The SDK binds the media kind as metadata: a frame sealed as audio (1) does not
        // open as video (2), so a relay that relabels the header gets it dropped.
        let now = Instant::now();
        let (mut s, mut o) = pair(RekeyPolicy::default());
        let mut f = Vec::new();
        s.seal_with_metadata_into(now, &[1], b"audio frame", &mut f)
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            o.open_with_metadata_into(now, &[2], &f, &mut out),
            Err(OpenError::AuthFailed)
        );
        assert!(out.is_empty());
        // A failed open does not burn the counter: the genuine frame still opens.
        o.open_with_metadata_into(now, &[1], &f, &mut out).unwrap();
        assert_eq!(out, b"audio frame");
        assert_eq!(o.stats().auth_failed, 1);
    }

    #[test]
    fn replay_bitflip_and_reflection_are_rejected_and_counted() {
        let now = Instant::now();
        let (mut s, mut o) = pair(RekeyPolicy::default());
        let f = s.seal(now, b"frame one").unwrap();
        assert_eq!(o.open(now, &f).unwrap(), b"frame one");
        assert!(matches!(
            o.open(now, &f),
            Err(OpenError::Replayed { epoch: 0, ctr: 0 })
        ));
        let mut g = s.seal(now, b"frame two").unwrap();
        let last = g.len() - 1;
        g[last] ^= 1;
        assert_eq!(o.open(now, &g), Err(OpenError::AuthFailed));
        g[last] ^= 1;
        // The failed attempt did not burn the counter.
        assert_eq!(o.open(now, &g).unwrap(), b"frame two");
        // Our own frame reflected back: wrong direction bit.
        let (mut mine, _) = pair(RekeyPolicy::default());
        let mut reflect_rx = FrameOpener::new(
            CipherSuite::default(),
            Direction::BtoA,
            Zeroizing::new(vec![5u8; 32]),
            RekeyPolicy::default(),
        )
        .unwrap();
        let r = mine.seal(now, b"x").unwrap();
        assert_eq!(
            reflect_rx.open(now, &r),
            Err(OpenError::UnknownKid { kid: 0 })
        );
        assert_eq!(
            o.open(now, &[]),
            Err(OpenError::Malformed(HeaderError::Empty))
        );
        assert_eq!(o.open(now, &[0x00, 1, 2]), Err(OpenError::TooShort));
        let st = o.stats();
        assert_eq!(
            (st.frames_opened, st.replayed, st.auth_failed, st.malformed),
            (2, 1, 1, 2)
        );
    }

    #[test]
    fn scheduled_rekey_by_count_and_time_with_frames_in_flight() {
        let t0 = Instant::now();
        let policy = RekeyPolicy {
            max_frames: 10,
            max_age: Duration::from_secs(60),
            grace: Duration::from_secs(2),
            max_epoch_skip: 4,
            ..RekeyPolicy::default()
        };
        let (mut s, mut o) = pair(policy);
        let frames: Vec<_> = (0..25u32)
            .map(|i| s.seal(t0, &i.to_be_bytes()).unwrap())
            .collect();
        assert_eq!(s.epoch(), 2);
        assert_eq!(s.stats().rekeys, 2);
        // Deliver epoch 1 first, then a straggler of epoch 0 (within grace), then epoch 2,
        // then a straggler of epoch 1 (previous, within grace) and of epoch 0 (stale now).
        for f in &frames[10..15] {
            assert!(o.open(t0, f).is_ok());
        }
        assert_eq!(o.epoch(), 1);
        assert_eq!(o.open(t0, &frames[3]).unwrap(), 3u32.to_be_bytes());
        for f in &frames[20..25] {
            assert!(o.open(t0, f).is_ok());
        }
        assert_eq!(o.open(t0, &frames[15]).unwrap(), 15u32.to_be_bytes());
        assert_eq!(
            o.open(t0, &frames[4]),
            Err(OpenError::StaleEpoch {
                epoch: 0,
                current: 2
            })
        );
        // After the grace, the previous epoch is stale too.
        let late = t0 + Duration::from_secs(3);
        assert_eq!(
            o.open(late, &frames[16]),
            Err(OpenError::StaleEpoch {
                epoch: 1,
                current: 2
            })
        );
        assert_eq!(o.stats().rekeys, 2);
        assert_eq!(o.stats().stale_epoch, 2);

        // Time-based rekey.
        let e = s.epoch();
        let f = s.seal(t0 + Duration::from_secs(61), b"later").unwrap();
        assert_eq!(s.epoch(), e + 1);
        assert_eq!(o.open(late, &f).unwrap(), b"later");
    }

    #[test]
    fn forged_future_kids_do_not_move_the_receiver() {
        let now = Instant::now();
        let (mut s, mut o) = pair(RekeyPolicy::default());
        // A frame claiming epoch 1 but sealed with junk: rejected, epoch unchanged, and
        // epoch 0 frames still open.
        let k =
            SframeKey::derive(CipherSuite::default(), Direction::AtoB.kid(1), &[0u8; 32]).unwrap();
        let forged = k.seal(0, b"", b"evil").unwrap();
        assert_eq!(o.open(now, &forged), Err(OpenError::AuthFailed));
        assert_eq!(o.epoch(), 0);
        let f = s.seal(now, b"ok").unwrap();
        assert_eq!(o.open(now, &f).unwrap(), b"ok");
        // Far-future KID: unknown.
        let far = Header::new(Direction::AtoB.kid(100), 0).to_vec();
        let mut frame = far.clone();
        frame.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            o.open(now, &frame),
            Err(OpenError::UnknownKid {
                kid: Direction::AtoB.kid(100)
            })
        );
        // On-demand rekey, several times, with the first frames lost: the receiver follows.
        for _ in 0..3 {
            s.rekey(now).unwrap();
            let _lost = s.seal(now, b"lost").unwrap();
        }
        let f = s.seal(now, b"after").unwrap();
        assert_eq!(o.open(now, &f).unwrap(), b"after");
        assert_eq!(o.epoch(), 3);
        // A burst of requests with nothing sealed between them is one epoch, so the
        // receiver (which ratchets at most max_epoch_skip ahead) can always follow.
        for _ in 0..100 {
            s.rekey(now).unwrap();
        }
        let f = s.seal(now, b"burst").unwrap();
        assert_eq!(o.open(now, &f).unwrap(), b"burst");
        assert_eq!(o.epoch(), 4);
    }

    #[test]
    fn keys_are_capped_by_bytes_and_late_frames_are_dropped() {
        let now = Instant::now();
        let policy = RekeyPolicy {
            max_bytes: 10_000,
            max_lag: 4,
            ..RekeyPolicy::default()
        };
        let (mut s, mut o) = pair(policy);
        // 4 KB frames: the third would pass 10 KB under one key, so it starts epoch 1.
        let frames: Vec<_> = (0..3).map(|_| s.seal(now, &[1u8; 4000]).unwrap()).collect();
        assert_eq!(s.epoch(), 1);
        for f in &frames {
            o.open(now, f).unwrap();
        }
        // Counters are handed out authenticated; a frame held back past max_lag is late.
        let (mut s, mut o) = pair(policy);
        let f: Vec<_> = (0..8u8).map(|i| s.seal(now, &[i]).unwrap()).collect();
        let mut out = Vec::new();
        let opened = o.open_into(now, &f[7], &mut out).unwrap();
        assert_eq!((opened.epoch, opened.ctr), (0, 7));
        assert_eq!(o.open(now, &f[3]).unwrap(), [3]);
        assert_eq!(
            o.open(now, &f[2]),
            Err(OpenError::TooLate { epoch: 0, ctr: 2 })
        );
        assert_eq!(o.stats().too_late, 1);
    }

    #[test]
    fn a_rerooted_epoch_opens_only_with_the_new_root() {
        let now = Instant::now();
        let (mut s, mut o) = pair(RekeyPolicy::default());
        // Someone who holds the old root (a key leaked at minute 1).
        let (_, mut leaked) = pair(RekeyPolicy {
            max_epoch_skip: 64,
            ..RekeyPolicy::default()
        });
        let old = s.seal(now, b"old").unwrap();
        assert_eq!(leaked.open(now, &old).unwrap(), b"old");
        o.open(now, &old).unwrap();
        let fresh = Zeroizing::new(vec![0x99u8; 32]);
        let epoch = 1 + (1 << 20);
        o.expect_reroot(epoch, fresh.clone());
        s.reroot(now, epoch, fresh).unwrap();
        let new = s.seal(now, b"new").unwrap();
        assert!(
            leaked.open(now, &new).is_err(),
            "the old root does not open it"
        );
        let mut out = Vec::new();
        let opened = o.open_into(now, &new, &mut out).unwrap();
        assert_eq!((out.as_slice(), opened.epoch), (&b"new"[..], epoch));
        // The ratchet goes on from the new root.
        s.rekey(now).unwrap();
        assert_eq!(
            o.open(now, &s.seal(now, b"next").unwrap()).unwrap(),
            b"next"
        );
    }

    #[test]
    fn both_suites_work_end_to_end() {
        let now = Instant::now();
        for suite in CipherSuite::ALL {
            let root = || Zeroizing::new(vec![1u8; suite.hash_len()]);
            let mut s =
                FrameSealer::new(suite, Direction::BtoA, root(), RekeyPolicy::default()).unwrap();
            let mut o =
                FrameOpener::new(suite, Direction::BtoA, root(), RekeyPolicy::default()).unwrap();
            let f = s.seal(now, &[7u8; 1200]).unwrap();
            assert_eq!(f.len(), 1200 + 16 + 1);
            assert_eq!(o.open(now, &f).unwrap(), vec![7u8; 1200]);
        }
    }
}

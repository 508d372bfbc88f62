//! Media profiles: what each simulated endpoint sends, and when. Sans-IO and deterministic.
//!
//! Owns the traffic shapes (frame sizes and times per media kind) and the call mix of each
//! `--profile`. It does not send anything, read a clock or know about probes: the runner asks
//! a [`FrameGen`] for the next [`PlannedFrame`] (time offset from the stream's start, size)
//! and does the I/O. The same seed always gives the same schedule.
//!
//! | kind | shape |
//! |---|---|
//! | audio | one frame every 20 ms (50 packets/s), 100-200 B uniform: a voice codec at ~50 kbit/s with padding variation |
//! | video | 30 fps at ~1.5 Mbit/s; a keyframe every 4 s ten times a delta frame (~58 KB, ~50 datagrams in one burst), delta frames ±25 % around ~5.8 KB; the SDK splits frames into datagrams that fit the path (≤ 1200 B on the relay's pinned MTU) |
//! | screen | 5 fps ticks, mostly idle (60-200 B "nothing changed" frames); on a change (Poisson, mean every 4 s) one big frame of 40-250 KB followed by two 5-20 KB refinement frames |
//!
//! | `--profile` | every call sends |
//! |---|---|
//! | audio | audio |
//! | video | audio + video (a video call) |
//! | screen | audio + screen share |
//! | mixed | per call, drawn from the seed: 50 % audio only, 35 % audio + video, 15 % audio + screen |
//! | idle | audio calls held open (on hold, both muted): one 60-80 B frame every 2 s per endpoint, so 10,000 established sessions fit one box while loss and latency are still measured |

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use duet_proto::MediaKind;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Audio frame interval: 50 packets per second.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
pub const AUDIO_BYTES: (u64, u64) = (100, 200);
/// An idle (held, muted) call's keep-alive frame interval and size.
pub const IDLE_INTERVAL: Duration = Duration::from_secs(2);
pub const IDLE_BYTES: (u64, u64) = (60, 80);
pub const VIDEO_FPS: u64 = 30;
pub const VIDEO_BITS_PER_SEC: u64 = 1_500_000;
/// Frames from one keyframe to the next (4 s at 30 fps).
pub const VIDEO_GOP_FRAMES: u64 = 120;
/// A keyframe is this many times the average delta frame.
pub const VIDEO_KEYFRAME_FACTOR: u64 = 10;
pub const SCREEN_INTERVAL: Duration = Duration::from_millis(200);
pub const SCREEN_IDLE_BYTES: (u64, u64) = (60, 200);
pub const SCREEN_CHANGE_BYTES: (u64, u64) = (40_000, 250_000);
pub const SCREEN_REFINE_BYTES: (u64, u64) = (5_000, 20_000);
pub const SCREEN_REFINE_FRAMES: u32 = 2;
/// Mean time between screen changes, seconds.
pub const SCREEN_MEAN_CHANGE_SECS: f64 = 4.0;

/// What `--profile` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    Audio,
    Video,
    Screen,
    Mixed,
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile {0:?}: expected audio, video, screen, mixed or idle")]
pub struct ProfileError(String);

impl FromStr for Profile {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, ProfileError> {
        match s {
            "audio" => Ok(Self::Audio),
            "video" => Ok(Self::Video),
            "screen" => Ok(Self::Screen),
            "mixed" => Ok(Self::Mixed),
            "idle" => Ok(Self::Idle),
            other => Err(ProfileError(other.to_owned())),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Screen => "screen",
            Self::Mixed => "mixed",
            Self::Idle => "idle",
        })
    }
}

/// The media streams one call carries (each endpoint sends all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallShape {
    Audio,
    AudioVideo,
    AudioScreen,
    /// Audio keep-alives only (`--profile idle`).
    Idle,
}

impl CallShape {
    pub fn kinds(self) -> &'static [MediaKind] {
        match self {
            Self::Audio | Self::Idle => &[MediaKind::Audio],
            Self::AudioVideo => &[MediaKind::Audio, MediaKind::Video],
            Self::AudioScreen => &[MediaKind::Audio, MediaKind::Screen],
        }
    }
}

impl Profile {
    /// The shape of call number `call` in a run seeded with `seed`.
    pub fn shape(self, seed: u64, call: u64) -> CallShape {
        match self {
            Self::Audio => CallShape::Audio,
            Self::Video => CallShape::AudioVideo,
            Self::Screen => CallShape::AudioScreen,
            Self::Idle => CallShape::Idle,
            Self::Mixed => {
                let u = Rng::derive(seed, &[call, 0x5AA9E]).unit();
                if u < 0.50 {
                    CallShape::Audio
                } else if u < 0.85 {
                    CallShape::AudioVideo
                } else {
                    CallShape::AudioScreen
                }
            }
        }
    }
}

/// One frame to send: when (offset from the stream's start) and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFrame {
    pub at: Duration,
    pub size: usize,
    /// A keyframe (video) or a full-change frame (screen): the bursts.
    pub key: bool,
}

#[derive(Debug, Clone)]
enum Shape {
    Audio,
    Idle {
        interval: Duration,
    },
    Video {
        delta_avg: u64,
    },
    Screen {
        next_change: Duration,
        refine_left: u32,
    },
}

/// The endless, deterministic frame schedule of one media stream of one endpoint.
#[derive(Debug, Clone)]
pub struct FrameGen {
    kind: MediaKind,
    rng: Rng,
    n: u64,
    shape: Shape,
}

fn scaled(avg: u64, lo_pct: u64, hi_pct: u64, rng: &mut Rng) -> u64 {
    rng.range(avg * lo_pct / 100, avg * hi_pct / 100)
}

impl FrameGen {
    /// The stream of `kind` in a call of `shape`: `new`, except that an idle call's audio
    /// is its keep-alive.
    pub fn for_call(shape: CallShape, kind: MediaKind, seed: u64, labels: &[u64]) -> Self {
        let mut g = Self::new(kind, seed, labels);
        if shape == CallShape::Idle {
            g.shape = Shape::Idle {
                interval: IDLE_INTERVAL,
            };
        }
        g
    }

    /// An idle stream's frames come every `interval` instead of [`IDLE_INTERVAL`]; other
    /// streams are unchanged.
    pub fn with_idle_interval(mut self, interval: Duration) -> Self {
        if let Shape::Idle { interval: i } = &mut self.shape {
            *i = interval;
        }
        self
    }

    /// The stream of `kind`, for the sub-seed named by `labels` (call index, side...).
    pub fn new(kind: MediaKind, seed: u64, labels: &[u64]) -> Self {
        let mut all = labels.to_vec();
        all.push(kind as u64);
        let mut rng = Rng::derive(seed, &all);
        let shape = match kind {
            MediaKind::Audio => Shape::Audio,
            MediaKind::Video => {
                // Bytes per GOP at the target bit rate, shared by (GOP - 1) deltas and one
                // keyframe worth KEYFRAME_FACTOR deltas.
                let gop_secs_x_bytes = VIDEO_BITS_PER_SEC / 8 * VIDEO_GOP_FRAMES / VIDEO_FPS;
                let delta_avg = gop_secs_x_bytes / (VIDEO_GOP_FRAMES - 1 + VIDEO_KEYFRAME_FACTOR);
                Shape::Video { delta_avg }
            }
            MediaKind::Screen => Shape::Screen {
                // A screen share starts with a full picture.
                next_change: Duration::ZERO,
                refine_left: 0,
            },
        };
        // Touch the generator once so streams seeded alike still diverge at once.
        rng.next_u64();
        Self {
            kind,
            rng,
            n: 0,
            shape,
        }
    }

    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// The next frame of the schedule.
    pub fn next_frame(&mut self) -> PlannedFrame {
        let n = self.n;
        self.n += 1;
        let rng = &mut self.rng;
        match &mut self.shape {
            Shape::Audio => PlannedFrame {
                at: AUDIO_INTERVAL * n as u32,
                size: rng.range(AUDIO_BYTES.0, AUDIO_BYTES.1) as usize,
                key: false,
            },
            Shape::Idle { interval } => PlannedFrame {
                at: *interval * n as u32,
                size: rng.range(IDLE_BYTES.0, IDLE_BYTES.1) as usize,
                key: false,
            },
            Shape::Video { delta_avg } => {
                let at = Duration::from_nanos(n * 1_000_000_000 / VIDEO_FPS);
                let key = n % VIDEO_GOP_FRAMES == 0;
                let size = if key {
                    scaled(*delta_avg * VIDEO_KEYFRAME_FACTOR, 90, 110, rng)
                } else {
                    scaled(*delta_avg, 75, 125, rng)
                };
                PlannedFrame {
                    at,
                    size: size as usize,
                    key,
                }
            }
            Shape::Screen {
                next_change,
                refine_left,
            } => {
                let at = SCREEN_INTERVAL * n as u32;
                let (size, key) = if at >= *next_change {
                    let gap = rng.exp(SCREEN_MEAN_CHANGE_SECS).min(60.0);
                    // At least one tick between changes: a change and its refinements.
                    *next_change = at + Duration::from_secs_f64(gap).max(SCREEN_INTERVAL * 3);
                    *refine_left = SCREEN_REFINE_FRAMES;
                    (
                        rng.range(SCREEN_CHANGE_BYTES.0, SCREEN_CHANGE_BYTES.1),
                        true,
                    )
                } else if *refine_left > 0 {
                    *refine_left -= 1;
                    (
                        rng.range(SCREEN_REFINE_BYTES.0, SCREEN_REFINE_BYTES.1),
                        false,
                    )
                } else {
                    (rng.range(SCREEN_IDLE_BYTES.0, SCREEN_IDLE_BYTES.1), false)
                };
                PlannedFrame {
                    at,
                    size: size as usize,
                    key,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_for(kind: MediaKind, seed: u64, secs: u64) -> Vec<PlannedFrame> {
        let mut g = FrameGen::new(kind, seed, &[0, 0]);
        let mut out = Vec::new();
        loop {
            let f = g.next_frame();
            if f.at >= Duration::from_secs(secs) {
                return out;
            }
            out.push(f);
        }
    }

    #[test]
    fn audio_is_50_packets_per_second_of_100_to_200_bytes() {
        let frames = take_for(MediaKind::Audio, 1, 10);
        assert_eq!(frames.len(), 500);
        assert!(frames
            .iter()
            .all(|f| (100..=200).contains(&f.size) && !f.key));
        assert_eq!(frames[1].at - frames[0].at, Duration::from_millis(20));
    }

    #[test]
    fn video_is_30_fps_at_about_1_5_mbit_with_keyframe_bursts() {
        let frames = take_for(MediaKind::Video, 2, 60);
        assert_eq!(frames.len(), 1800);
        let bits: u64 = frames.iter().map(|f| f.size as u64 * 8).sum();
        let rate = bits as f64 / 60.0;
        assert!((1_400_000.0..1_600_000.0).contains(&rate), "rate {rate}");
        let keys: Vec<_> = frames.iter().filter(|f| f.key).collect();
        assert_eq!(keys.len(), 15, "one keyframe every 4 s");
        assert!(keys[0].at.is_zero(), "video starts with a keyframe");
        // A keyframe is a burst of many datagrams.
        assert!(keys.iter().all(|k| k.size > 40_000));
    }

    #[test]
    fn screen_is_mostly_idle_with_big_bursts() {
        let frames = take_for(MediaKind::Screen, 3, 120);
        assert_eq!(frames.len(), 600);
        let idle = frames.iter().filter(|f| f.size <= 200).count();
        let bursts: Vec<_> = frames.iter().filter(|f| f.key).collect();
        assert!(idle * 100 / frames.len() >= 70, "idle {idle}");
        assert!(bursts.len() >= 10 && bursts.len() <= 60, "{}", bursts.len());
        assert!(bursts.iter().all(|b| b.size >= 40_000));
        assert!(frames[0].key, "a share starts with a full picture");
    }

    #[test]
    fn schedules_are_deterministic_per_seed_and_stream() {
        for kind in MediaKind::ALL {
            assert_eq!(take_for(kind, 9, 5), take_for(kind, 9, 5));
            let sizes = |s| {
                take_for(kind, s, 5)
                    .iter()
                    .map(|f| f.size)
                    .collect::<Vec<_>>()
            };
            assert_ne!(sizes(9), sizes(10));
        }
    }

    #[test]
    fn idle_calls_send_one_small_frame_every_two_seconds() {
        assert_eq!("idle".parse::<Profile>().unwrap(), Profile::Idle);
        let shape = Profile::Idle.shape(1, 0);
        assert_eq!(shape.kinds(), &[MediaKind::Audio]);
        let mut g = FrameGen::for_call(shape, MediaKind::Audio, 1, &[0, 0]);
        let frames: Vec<_> = (0..5).map(|_| g.next_frame()).collect();
        assert_eq!(frames[4].at, Duration::from_secs(8));
        assert!(frames.iter().all(|f| (60..=80).contains(&f.size)));
    }

    #[test]
    fn idle_interval_spaces_idle_frames_only() {
        let shape = Profile::Idle.shape(1, 0);
        let mut g = FrameGen::for_call(shape, MediaKind::Audio, 1, &[0, 0])
            .with_idle_interval(Duration::from_secs(10));
        let frames: Vec<_> = (0..3).map(|_| g.next_frame()).collect();
        assert_eq!(frames[2].at, Duration::from_secs(20));
        assert!(frames.iter().all(|f| (60..=80).contains(&f.size)));
        // An audio call's stream keeps its 20 ms cadence.
        let mut a = FrameGen::for_call(CallShape::Audio, MediaKind::Audio, 1, &[0, 0])
            .with_idle_interval(Duration::from_secs(10));
        a.next_frame();
        assert_eq!(a.next_frame().at, AUDIO_INTERVAL);
    }

    #[test]
    fn mixed_profile_mixes_calls_deterministically() {
        let shapes: Vec<_> = (0..1000).map(|i| Profile::Mixed.shape(5, i)).collect();
        let count = |s| shapes.iter().filter(|x| **x == s).count();
        assert!((430..570).contains(&count(CallShape::Audio)));
        assert!((280..420).contains(&count(CallShape::AudioVideo)));
        assert!((100..200).contains(&count(CallShape::AudioScreen)));
        assert_eq!(Profile::Mixed.shape(5, 17), Profile::Mixed.shape(5, 17));
        assert_eq!(Profile::Video.shape(5, 17), CallShape::AudioVideo);
        assert_eq!("screen".parse::<Profile>().unwrap(), Profile::Screen);
        assert!("hd".parse::<Profile>().is_err());
    }
}

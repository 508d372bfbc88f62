//! The drain: the relay stops taking new sessions, and the live ones end at a deadline.
//!
//! One state ([`DrainState`]): serving, or draining until a deadline. While draining, every
//! `Join` is refused `RelayDraining` (readiness is false); when the deadline passes, the
//! sessions still there get `SessionEnded(RelayShutdown)`. Driven like the rest of the core:
//! `drain(now, ..)` in, the deadline through `poll_timeout`/`handle_timeout`.

use std::time::{Duration, Instant};

use duet_proto::EndReason;

use super::SessionCore;

/// Serving, or draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainState {
    #[default]
    Serving,
    Draining {
        /// Sessions still live then are ended.
        deadline: Instant,
    },
}

impl DrainState {
    pub fn is_draining(&self) -> bool {
        matches!(self, Self::Draining { .. })
    }
}

/// What `status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainStatus {
    pub draining: bool,
    pub sessions: usize,
    /// Time left until the drain deadline (zero once it passed); `None` while serving.
    pub deadline_left: Option<Duration>,
}

impl SessionCore {
    /// Starts draining: new joins refused, live sessions end `deadline` from `now`.
    /// Returns false (and changes nothing) when already draining.
    pub fn drain(&mut self, now: Instant, deadline: Duration) -> bool {
        if self.drain.is_draining() {
            return false;
        }
        self.drain = DrainState::Draining {
            deadline: now + deadline,
        };
        true
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    pub fn drain_state(&self) -> DrainState {
        self.drain
    }

    pub fn drain_status(&self, now: Instant) -> DrainStatus {
        DrainStatus {
            draining: self.drain.is_draining(),
            sessions: self.sessions.len(),
            deadline_left: match self.drain {
                DrainState::Serving => None,
                DrainState::Draining { deadline } => Some(deadline.saturating_duration_since(now)),
            },
        }
    }

    /// The drain deadline, while there are sessions for it to end.
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        match self.drain {
            DrainState::Draining { deadline } if !self.sessions.is_empty() => Some(deadline),
            _ => None,
        }
    }

    pub(super) fn drain_timeout(&mut self, now: Instant) {
        if self.drain_deadline().is_some_and(|d| now >= d) {
            tracing::info!(
                sessions = self.sessions.len(),
                "drain deadline passed: ending sessions"
            );
            self.end_all(EndReason::RelayShutdown);
        }
    }
}

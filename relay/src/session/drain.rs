//! The drain: the relay stops taking new sessions, tells the live ones to move, and ends
//! what is left at a deadline; an operator can also undo it.
//!
//! One state ([`DrainState`]): serving, or draining until a deadline. Starting a drain
//! sends every joined endpoint `Draining { deadline_ms }` (move the call to the next node
//! of its token now); while draining, every `Join` is refused `RelayDraining` (readiness is
//! false); when the deadline passes, or as soon as no more than `min_sessions` sessions
//! remain, the sessions still there get `SessionEnded(RelayShutdown)`. `undrain` goes back
//! to serving (sessions that were told to move may already have). Driven like the rest of
//! the core: `drain(now, ..)` in, the deadline through `poll_timeout`/`handle_timeout`.

use std::time::{Duration, Instant};

use duet_proto::{EndReason, RelayMessage};

use super::SessionCore;

/// Serving, or draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainState {
    #[default]
    Serving,
    Draining {
        /// When the drain began.
        since: Instant,
        /// Sessions still live then are ended.
        deadline: Instant,
        /// Once no more than this many sessions remain, they are ended at once.
        min_sessions: usize,
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
    /// The drain's `min_sessions`; `None` while serving.
    pub min_sessions: Option<usize>,
}

impl SessionCore {
    /// Starts draining: new joins refused, live sessions end `deadline` from `now`.
    /// Returns false (and changes nothing) when already draining.
    pub fn drain(&mut self, now: Instant, deadline: Duration) -> bool {
        self.drain_with(now, deadline, 0)
    }

    /// [`SessionCore::drain`], ending the sessions left as soon as there are no more than
    /// `min_sessions` of them (0: only at the deadline, or when the last one ends).
    pub fn drain_with(&mut self, now: Instant, deadline: Duration, min_sessions: usize) -> bool {
        if self.drain.is_draining() {
            return false;
        }
        self.drain = DrainState::Draining {
            since: now,
            deadline: now + deadline,
            min_sessions,
        };
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        let mut conns: Vec<_> = self.by_conn.keys().copied().collect();
        conns.sort();
        for c in conns {
            self.send(c, RelayMessage::Draining { deadline_ms });
        }
        true
    }

    /// Back to serving: joins are taken again, live sessions go on. Returns false (and
    /// changes nothing) when not draining.
    pub fn undrain(&mut self) -> bool {
        if !self.drain.is_draining() {
            return false;
        }
        self.drain = DrainState::Serving;
        true
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    pub fn drain_state(&self) -> DrainState {
        self.drain
    }

    pub fn drain_status(&self, now: Instant) -> DrainStatus {
        let (deadline_left, min_sessions) = match self.drain {
            DrainState::Serving => (None, None),
            DrainState::Draining {
                deadline,
                min_sessions,
                ..
            } => (
                Some(deadline.saturating_duration_since(now)),
                Some(min_sessions),
            ),
        };
        DrainStatus {
            draining: self.drain.is_draining(),
            sessions: self.sessions.len(),
            deadline_left,
            min_sessions,
        }
    }

    /// When the drain must end the sessions left: its deadline, or at once (the drain's
    /// start, already past) when no more than `min_sessions` remain. `None` with nothing
    /// left to end.
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        match self.drain {
            DrainState::Draining { .. } if self.sessions.is_empty() => None,
            DrainState::Draining {
                since,
                min_sessions,
                ..
            } if self.sessions.len() <= min_sessions => Some(since),
            DrainState::Draining { deadline, .. } => Some(deadline),
            DrainState::Serving => None,
        }
    }

    pub(super) fn drain_timeout(&mut self, now: Instant) {
        if self.drain_deadline().is_some_and(|d| now >= d) {
            tracing::info!(
                sessions = self.sessions.len(),
                "drain over: ending the sessions left"
            );
            self.end_all(EndReason::RelayShutdown);
        }
    }
}

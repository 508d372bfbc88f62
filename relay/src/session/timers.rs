//! The session core's timers: one min-heap of deadlines, so `poll_timeout` is a peek and the
//! driver sleeps exactly until the next one instead of ticking.
//!
//! Owns only the ordering. Entries are never removed early: each says what to look at, and
//! the core checks on expiry whether it still applies (a session of the same id is told
//! apart by its generation), so at most one live entry exists per connection, session and
//! lost slot, and a stale one lives no longer than its own deadline.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use duet_proto::{SessionId, Slot};

use super::ConnId;

/// What a deadline is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Timer {
    /// The connection must have joined by now.
    Join(ConnId),
    /// The session's next idle or lifetime check (session id, generation).
    Session(SessionId, u64),
    /// A lost endpoint's resume window ends.
    Lost(SessionId, u64, Slot),
    /// A remembered E2EE decline may be forgotten.
    Declined(SessionId),
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    /// Insertion order: equal deadlines run first come, first served.
    seq: u64,
    timer: Timer,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timers {
    pub fn push(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            timer,
        }));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// The earliest timer due at `now`, removed.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e.timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_timers_come_out_in_deadline_then_insertion_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.push(t0 + Duration::from_secs(2), Timer::Join(ConnId(2)));
        t.push(t0 + Duration::from_secs(1), Timer::Join(ConnId(1)));
        t.push(t0 + Duration::from_secs(1), Timer::Join(ConnId(3)));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(at), Some(Timer::Join(ConnId(1))));
        assert_eq!(t.pop_due(at), Some(Timer::Join(ConnId(3))));
        assert_eq!(t.pop_due(at), None);
        assert_eq!(
            t.pop_due(at + Duration::from_secs(5)),
            Some(Timer::Join(ConnId(2)))
        );
        assert_eq!(t.next(), None);
    }
}

//! When a fast-path worker reads its socket next: block, sleep a bounded coalescing window
//! first, or poll without blocking for a short while. Pure decisions over what the last read
//! returned (no clock, no socket), so the rules are tested without either.
//!
//! Why: at low per-socket rates a relay pays a wake-up and a `recvmmsg`/`sendmmsg` pair per
//! few datagrams, and those, not the forwarding, are most of its CPU per packet. A worker
//! that, after forwarding a batch, sleeps `window` before reading again (without blocking)
//! makes the next calls carry every datagram that arrived meanwhile, and while it sleeps a
//! sender's datagram wakes nobody (no thread waits on the socket). While traffic flows the
//! worker then runs once per window on its own timer instead of once per arrival burst;
//! when a window finds nothing it blocks again, so an idle worker costs nothing and the
//! first datagram after a silence waits for no window. A window is slept only while batches
//! come closer together than a window (or the last window gathered enough): traffic in
//! bursts further apart (a sender that batches itself) gains nothing from it. A datagram waits at most one window
//! (plus the forwarding of the batch before it) in the socket: that is the latency cost,
//! bounded by configuration (`fast_path.coalesce_us`).
//!
//! Busy polling (`fast_path.busy_poll_us`) is the other way to skip wake-ups: after the
//! socket was found empty, keep reading it without blocking for a short while before
//! sleeping in the kernel. It spends CPU to save the wake-up, so it pays only when the next
//! datagram is likely within the budget.
//!
//! Not owned here: the syscalls and the clock (`worker`), what a datagram is (`table`).

use std::time::Duration;

/// A window that gathered fewer datagrams than this did not pay for its timer wake-up: on
/// the measured 2-core VM a sleep cost the worker about as much CPU as two or three wake-ups
/// by arriving datagrams (benches/RESULTS.md, "Fast path: coalescing window and adaptive
/// workers").
pub const MIN_WINDOW_DATAGRAMS: usize = 4;

/// How the worker reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A blocking read (it returns at once when datagrams are queued).
    Block,
    /// Sleep this long, then read without blocking; report the outcome with
    /// [`Pacer::window_found`] or [`Pacer::window_empty`].
    Sleep(Duration),
    /// Read without blocking, again and again, for up to this long; then block.
    Poll(Duration),
}

/// The worker's reading policy. One per worker.
#[derive(Debug, Clone)]
pub struct Pacer {
    window: Duration,
    busy_poll: Duration,
    /// The last window found datagrams: traffic is dense enough that a single datagram
    /// does not mean a lone packet.
    dense: bool,
}

impl Pacer {
    /// `window` 0 = no coalescing; `busy_poll` 0 = no polling.
    pub fn new(window: Duration, busy_poll: Duration) -> Self {
        Self {
            window,
            busy_poll,
            dense: false,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// After a batch was forwarded, `since_prev` after the one before;
    /// `more_queued` when the read filled the batch or left datagrams for the next call
    /// (then the next read is at once).
    ///
    /// A window is slept only when it is likely to pay: batches come closer together than
    /// a window (waiting one merges them), or the previous window gathered at least
    /// [`MIN_WINDOW_DATAGRAMS`]. When batches come further apart than a window (a lone call's
    /// audio, keepalives, or bursts from a sender that already batches), a window would only
    /// add a timer wake-up and the worker blocks as without one.
    pub fn after_batch(&mut self, since_prev: Duration, more_queued: bool) -> Next {
        if more_queued {
            return Next::Block;
        }
        if !self.window.is_zero() && (since_prev < self.window || self.dense) {
            return Next::Sleep(self.window);
        }
        self.idle()
    }

    /// The read after a window found `n` datagrams (the worker forwards them, then calls
    /// [`Pacer::after_batch`]).
    pub fn window_found(&mut self, n: usize) {
        self.dense = n >= MIN_WINDOW_DATAGRAMS;
    }

    /// The read after a window found the socket empty: the traffic has gaps longer than a
    /// window, so the worker goes back to waiting for the next datagram.
    pub fn window_empty(&mut self) -> Next {
        self.dense = false;
        self.idle()
    }

    /// Nothing is queued: poll for the budget if there is one, else block.
    fn idle(&self) -> Next {
        if self.busy_poll.is_zero() {
            Next::Block
        } else {
            Next::Poll(self.busy_poll)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(200);
    const P: Duration = Duration::from_micros(30);

    #[test]
    fn off_means_always_block_as_before() {
        let mut p = Pacer::new(Duration::ZERO, Duration::ZERO);
        for more in [false, true] {
            assert_eq!(p.after_batch(Duration::ZERO, more), Next::Block);
        }
        assert_eq!(p.window_empty(), Next::Block);
    }

    #[test]
    fn a_window_only_when_batches_come_closer_than_a_window() {
        let mut p = Pacer::new(W, Duration::ZERO);
        let apart = W * 2;
        // Batches further apart than a window, lone or bursts: no window.
        assert_eq!(p.after_batch(apart, false), Next::Block);
        assert_eq!(p.after_batch(apart, false), Next::Block);
        // Closer together: a window, which gathers enough to keep windows going even
        // when the next batch came later than a window after the previous one.
        assert_eq!(p.after_batch(W / 2, false), Next::Sleep(W));
        p.window_found(MIN_WINDOW_DATAGRAMS);
        assert_eq!(p.after_batch(apart, false), Next::Sleep(W));
        // A window that gathered too little: back to blocking unless batches are close.
        p.window_found(MIN_WINDOW_DATAGRAMS - 1);
        assert_eq!(p.after_batch(apart, false), Next::Block);
        assert_eq!(p.after_batch(W / 3, false), Next::Sleep(W));
        // A window that finds nothing: block.
        assert_eq!(p.window_empty(), Next::Block);
        assert_eq!(p.after_batch(apart, false), Next::Block);
    }

    #[test]
    fn a_full_batch_or_a_carry_over_is_read_at_once() {
        let mut p = Pacer::new(W, P);
        assert_eq!(p.after_batch(W, true), Next::Block);
        p.window_found(10);
        assert_eq!(p.after_batch(W, true), Next::Block);
    }

    #[test]
    fn busy_polling_follows_an_empty_socket() {
        let mut p = Pacer::new(Duration::ZERO, P);
        assert_eq!(p.after_batch(W, false), Next::Poll(P));
        assert_eq!(p.after_batch(W, false), Next::Poll(P));
        let mut p = Pacer::new(W, P);
        assert_eq!(p.after_batch(W / 2, false), Next::Sleep(W));
        assert_eq!(p.window_empty(), Next::Poll(P));
    }
}

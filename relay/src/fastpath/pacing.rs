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
//! first datagram after a silence waits for no window. A datagram waits at most one window
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

    /// After a batch of `n` datagrams was forwarded, `since_prev` after the one before;
    /// `more_queued` when the read filled the batch or left datagrams for the next call
    /// (then the next read is at once).
    ///
    /// A window is slept only when the traffic is dense: the batch held more than one
    /// datagram, it came within a window of the previous batch, or the previous window found
    /// some. A lone datagram after a silence (one call's audio, a keepalive) is not followed
    /// by a window that would find nothing and cost a second wake-up for it.
    pub fn after_batch(&mut self, n: usize, since_prev: Duration, more_queued: bool) -> Next {
        if more_queued {
            return Next::Block;
        }
        if !self.window.is_zero() && (n > 1 || since_prev < self.window || self.dense) {
            return Next::Sleep(self.window);
        }
        self.idle()
    }

    /// The read after a window found datagrams (the worker forwards them, then calls
    /// [`Pacer::after_batch`]).
    pub fn window_found(&mut self) {
        self.dense = true;
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
        for (n, more) in [(1, false), (13, false), (64, true), (0, false)] {
            assert_eq!(p.after_batch(n, Duration::ZERO, more), Next::Block);
        }
        assert_eq!(p.window_empty(), Next::Block);
    }

    #[test]
    fn dense_traffic_sleeps_a_window_sparse_traffic_does_not() {
        let mut p = Pacer::new(W, Duration::ZERO);
        let silence = Duration::from_millis(20);
        // A lone datagram after a silence: no window.
        assert_eq!(p.after_batch(1, silence, false), Next::Block);
        // A burst: a window, which finds more: traffic is dense, even single datagrams
        // are now followed by a window.
        assert_eq!(p.after_batch(5, silence, false), Next::Sleep(W));
        p.window_found();
        assert_eq!(p.after_batch(1, silence, false), Next::Sleep(W));
        // A window that finds nothing: back to blocking, and a lone datagram is lone again.
        assert_eq!(p.window_empty(), Next::Block);
        assert_eq!(p.after_batch(1, silence, false), Next::Block);
        // Single datagrams closer together than a window are a stream: a window.
        assert_eq!(p.after_batch(1, W / 2, false), Next::Sleep(W));
    }

    #[test]
    fn a_full_batch_or_a_carry_over_is_read_at_once() {
        let mut p = Pacer::new(W, P);
        assert_eq!(p.after_batch(64, W, true), Next::Block);
        p.window_found();
        assert_eq!(p.after_batch(3, W, true), Next::Block);
    }

    #[test]
    fn busy_polling_follows_an_empty_socket() {
        let mut p = Pacer::new(Duration::ZERO, P);
        assert_eq!(p.after_batch(1, W, false), Next::Poll(P));
        assert_eq!(p.after_batch(9, W, false), Next::Poll(P));
        let mut p = Pacer::new(W, P);
        assert_eq!(p.after_batch(9, W, false), Next::Sleep(W));
        assert_eq!(p.window_empty(), Next::Poll(P));
    }
}

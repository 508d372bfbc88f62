//! How many of the fast path's workers take new datagrams: the adaptive active-worker count.
//!
//! Why: the workers' `SO_REUSEPORT` sockets split the traffic, so at a given packet rate N
//! workers each wake up for 1/N of every arrival burst and pay a wake-up and a
//! `recvmmsg`/`sendmmsg` pair per smaller batch: two workers on two cores measured 1.7-2x the
//! CPU per packet of one (benches/RESULTS.md). So the relay starts every worker (capacity for
//! a saturating load) but steers datagrams (a classic BPF program on the reuseport group,
//! see `socket::FastPathSocket::steer`) by channel pair to only the first `active` of them,
//! and this policy moves `active` with the load: one more worker when the active ones are
//! busy, fewer when the whole load would fit on fewer. At a light load one worker carries
//! everything in full batches; under a saturating one every worker is used.
//!
//! Owns the decision only, from each worker's on-CPU fraction over the last interval (the
//! service measures it from `/proc` and applies the result); pure, tested without threads.

/// A worker this busy on average (fraction of a core) makes room for one more.
pub const UP_BUSY: f64 = 0.6;
/// The load (sum over workers, cores) one worker is planned for when scaling.
pub const TARGET_BUSY: f64 = 0.5;
/// Fewer workers when the total load is below this much per remaining worker.
pub const DOWN_BUSY: f64 = 0.3;

/// The active-worker count and the rule that moves it.
#[derive(Debug, Clone)]
pub struct Steering {
    workers: usize,
    active: usize,
}

impl Steering {
    /// `workers` started, one active at first.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            active: 1,
        }
    }

    pub fn active(&self) -> usize {
        self.active
    }

    /// `busy[i]`: worker i's on-CPU fraction over the last interval (workers past `active`
    /// only drain what was queued before they left). Returns the new count when it changes.
    pub fn update(&mut self, busy: &[f64]) -> Option<usize> {
        let load: f64 = busy.iter().sum();
        let active = &busy[..self.active.min(busy.len())];
        let avg = if active.is_empty() {
            0.0
        } else {
            active.iter().sum::<f64>() / active.len() as f64
        };
        let target = ((load / TARGET_BUSY).ceil() as usize).clamp(1, self.workers);
        let next = if avg > UP_BUSY && self.active < self.workers {
            target.max(self.active + 1)
        } else if self.active > 1 && load < DOWN_BUSY * (self.active - 1) as f64 {
            target.min(self.active - 1)
        } else {
            self.active
        };
        (next != self.active).then(|| {
            self.active = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_carries_a_light_load() {
        let mut s = Steering::new(32);
        assert_eq!(s.active(), 1);
        for _ in 0..10 {
            assert_eq!(s.update(&[0.3; 1]), None);
        }
        assert_eq!(s.active(), 1);
    }

    #[test]
    fn a_busy_worker_brings_in_more_at_once_when_the_load_needs_them() {
        let mut s = Steering::new(32);
        // Just past the threshold: one more.
        assert_eq!(s.update(&[0.65]), Some(2));
        // Two saturated workers: the load (2 cores) asks for 4.
        assert_eq!(s.update(&[1.0, 1.0]), Some(4));
        assert_eq!(s.update(&[0.5, 0.5, 0.5, 0.5]), None, "settled");
        // Never more than were started.
        let mut s = Steering::new(2);
        assert_eq!(s.update(&[1.0]), Some(2));
        assert_eq!(s.update(&[1.0, 1.0]), None);
    }

    #[test]
    fn fewer_workers_when_the_load_fits_with_hysteresis() {
        let mut s = Steering::new(8);
        assert_eq!(s.update(&[1.0]), Some(2));
        assert_eq!(s.update(&[1.0, 1.0]), Some(4));
        // 1.0 core in all over 4 workers: fits on fewer, but not below what it needs.
        assert_eq!(
            s.update(&[0.25; 4]),
            None,
            "0.25 avg: no change (1.0 > 0.3 x 3)"
        );
        assert_eq!(s.update(&[0.2, 0.2, 0.2, 0.1]), Some(2));
        // Between the thresholds nothing moves (no flapping).
        assert_eq!(s.update(&[0.4, 0.4]), None);
        assert_eq!(s.update(&[0.1, 0.1]), Some(1));
        assert_eq!(s.update(&[0.01]), None, "never below one");
    }
}

//! Token-bucket rate limiters for one endpoint.
//!
//! Owns the arithmetic of "how much may this endpoint send now". Each limiter is owned by
//! the one task that reads that endpoint's traffic, so it takes `&mut self` and no lock.
//! It does not decide what happens to the excess (the caller drops and counts it) and has
//! no clock of its own (callers pass `now`).

use std::time::Instant;

/// A bucket of `burst` tokens refilled at `rate` tokens per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate: rate_per_sec as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    #[inline]
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Whether `n` tokens are available now (refilling first); does not take them.
    #[inline]
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Takes `n` tokens if available.
    #[inline]
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        if self.has(n, now) {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    #[inline]
    fn take_unchecked(&mut self, n: u64) {
        self.tokens -= n as f64;
    }
}

/// Admits or refuses one media packet of `len` bytes at `now`: the per-endpoint budget,
/// whichever structure holds it.
pub trait Admission {
    fn admit(&mut self, len: usize, now: Instant) -> bool;
}

/// Media limits of one endpoint: packets per second and bytes per second, one second of
/// burst each. A packet passes only if both buckets have room; a refused packet takes nothing.
#[derive(Debug, Clone)]
pub struct MediaLimiter {
    packets: TokenBucket,
    bytes: TokenBucket,
}

impl MediaLimiter {
    pub fn new(packets_per_sec: u32, bytes_per_sec: u64, now: Instant) -> Self {
        Self {
            packets: TokenBucket::new(packets_per_sec.into(), packets_per_sec.into(), now),
            bytes: TokenBucket::new(bytes_per_sec, bytes_per_sec, now),
        }
    }
}

impl Admission for MediaLimiter {
    /// Admits one packet of `len` bytes, or refuses it.
    #[inline]
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        let len = len as u64;
        if self.packets.has(1, now) && self.bytes.has(len, now) {
            self.packets.take_unchecked(1);
            self.bytes.take_unchecked(len);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 10, t0);
        for _ in 0..10 {
            assert!(b.try_take(1, t0));
        }
        assert!(!b.try_take(1, t0));
        assert!(b.try_take(1, t0 + Duration::from_millis(100)));
        assert!(!b.try_take(1, t0 + Duration::from_millis(100)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..10 {
            assert!(b.try_take(1, later));
        }
        assert!(!b.try_take(1, later));
    }

    #[test]
    fn media_limiter_checks_packets_and_bytes() {
        let t0 = Instant::now();
        let mut m = MediaLimiter::new(100, 1000, t0);
        assert!(m.admit(600, t0));
        assert!(!m.admit(600, t0), "bytes exhausted");
        assert!(m.admit(400, t0), "a refused packet took nothing");
        let mut m = MediaLimiter::new(2, 1_000_000, t0);
        assert!(m.admit(1, t0));
        assert!(m.admit(1, t0));
        assert!(!m.admit(1, t0), "packets exhausted");
    }
}

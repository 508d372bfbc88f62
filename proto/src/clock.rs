//! The one wall-clock read of Duet's drivers.
//!
//! Protocol logic never reads a clock: it takes `now` (an `Instant`, or Unix seconds for
//! anything that crosses machines, like token expiry and ticket lifetimes). Drivers, CLIs
//! and test helpers that need "Unix seconds now" to pass in call [`unix_now`] instead of
//! writing out `SystemTime::now().duration_since(UNIX_EPOCH)` each time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch. A clock set before 1970 reads as the epoch itself: every
/// check against it then fails closed (tokens look not yet valid, nothing looks expired
/// long ago), which is the safe reading of a broken clock.
pub fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Whole seconds since the Unix epoch (see [`unix_time`]).
pub fn unix_now() -> u64 {
    unix_time().as_secs()
}

/// Milliseconds since the Unix epoch (see [`unix_time`]); reports and logs.
pub fn unix_now_ms() -> u64 {
    u64::try_from(unix_time().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_plausible_time() {
        // 2020-01-01: a machine running these tests is past it.
        assert!(unix_now() > 1_577_836_800);
        assert!(unix_now_ms() / 1000 >= unix_now() - 1);
    }
}

//! Live progress on stderr: an indicatif bar with current rates when stderr is a terminal,
//! one plain line per second otherwise (CI logs, `kubectl logs`).
//!
//! Owns the display and the rate arithmetic between two samples. It does not measure
//! anything (it reads [`Totals`] from the collector) and writes only to stderr, so stdout
//! stays clean for the final summary.

use std::io::IsTerminal;
use std::str::FromStr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Totals;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    Off,
}

impl FromStr for ProgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "bar" => Ok(Self::Bar),
            "plain" => Ok(Self::Plain),
            "off" => Ok(Self::Off),
            o => Err(format!("{o:?}: expected auto, bar, plain or off")),
        }
    }
}

/// Rates between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub tx_fps: f64,
    pub rx_fps: f64,
    pub tx_mbps: f64,
    pub rx_mbps: f64,
    pub tx_dps: f64,
}

pub fn rates(prev: &Totals, now: &Totals, dt: Duration) -> Rates {
    let s = dt.as_secs_f64().max(1e-3);
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / s;
    Rates {
        tx_fps: d(prev.frames_sent, now.frames_sent),
        rx_fps: d(prev.frames_received, now.frames_received),
        tx_mbps: d(prev.bytes_sent, now.bytes_sent) * 8.0 / 1e6,
        rx_mbps: d(prev.bytes_received, now.bytes_received) * 8.0 / 1e6,
        tx_dps: d(prev.datagrams_sent, now.datagrams_sent),
    }
}

/// One status line (shared by the bar's message and the plain output).
pub fn line(t: &Totals, r: &Rates, planned: u64) -> String {
    let loss = if t.frames_sent == 0 {
        0.0
    } else {
        100.0 * t.frames_sent.saturating_sub(t.frames_received) as f64 / t.frames_sent as f64
    };
    format!(
        "calls {}/{} up, {} active, {} failed | tx {:.0} fr/s {:.0} dg/s {:.2} Mbit/s | rx {:.0} fr/s {:.2} Mbit/s | in flight+lost {:.2}%",
        t.established, planned, t.active, t.failed, r.tx_fps, r.tx_dps, r.tx_mbps, r.rx_fps, r.rx_mbps, loss
    )
}

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    planned: u64,
}

impl Progress {
    /// `total` is the planned run time (ramp + duration).
    pub fn new(mode: ProgressMode, total: Duration, planned: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let (bar, plain) = match mode {
            ProgressMode::Off => (false, false),
            ProgressMode::Bar => (true, false),
            ProgressMode::Plain => (false, true),
            ProgressMode::Auto => (tty, !tty),
        };
        let bar = bar.then(|| {
            let b = ProgressBar::with_draw_target(
                Some(total.as_secs().max(1)),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len}s {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b
        });
        Self {
            bar,
            plain,
            planned,
        }
    }

    pub fn update(&self, elapsed: Duration, t: &Totals, r: &Rates) {
        let msg = line(t, r, self.planned);
        if let Some(b) = &self.bar {
            b.set_position(elapsed.as_secs());
            b.set_message(msg);
        } else if self.plain {
            eprintln!("[{:>6.1}s] {msg}", elapsed.as_secs_f64());
        }
    }

    /// Prints a notice above the bar (or as a plain line).
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_line() {
        let a = Totals::default();
        let b = Totals {
            frames_sent: 100,
            frames_received: 99,
            bytes_sent: 125_000,
            datagrams_sent: 100,
            established: 2,
            ..Totals::default()
        };
        let r = rates(&a, &b, Duration::from_secs(1));
        assert_eq!(r.tx_fps, 100.0);
        assert_eq!(r.tx_mbps, 1.0);
        let l = line(&b, &r, 3);
        assert!(l.contains("calls 2/3"), "{l}");
        assert!(l.contains("1.00%"), "{l}");
        assert_eq!("plain".parse::<ProgressMode>(), Ok(ProgressMode::Plain));
        assert!("loud".parse::<ProgressMode>().is_err());
    }
}

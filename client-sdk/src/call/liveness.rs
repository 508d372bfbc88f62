//! Whether the relay at the far end of a link is still there, decided from the path itself
//! rather than from the QUIC idle timeout. Silence counts only while the relay owes an
//! answer: from the first thing this end sent after the relay was last heard (media,
//! a keep-alive: QUIC acknowledges what it receives). An idle call therefore sends no
//! probes of its own between keep-alives. Once the relay has owed an answer for
//! `probe_after`, the driver sends a probe (a control `Ping`: the relay answers it and QUIC
//! acknowledges it); a relay that has owed one for `max(silence, probe_after + rtts × RTT)`
//! is taken for dead. While it owes nothing the driver need not look at all: it sleeps
//! until something is sent (it wakes on the app's sends) or, for what QUIC sends by itself
//! (keep-alive PINGs), at most `2 × silence`; an idle link thus costs one wake-up per
//! `2 × silence` (one a second by default) instead of ten per `silence`. Halfway there the link is
//! *suspect*: recovery may open a connection to the next node (a QUIC handshake, no join),
//! so a move costs only the join once the verdict comes.
//!
//! Sans-IO: fed with instants, a counter of what arrived from the relay and the path's
//! smoothed RTT; it reads no clock and touches no socket. Owns the thresholds and the
//! verdicts; what recovery does with them is `recovery`'s, the polling `link`'s.

use std::time::{Duration, Instant};

use crate::options::DeadRelay;

/// What the link looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Alive,
    /// Silent past half the dead threshold, probes unanswered.
    Suspect,
    /// Silent past the dead threshold: move the call.
    Dead,
}

/// What the driver should do after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// Send one probe now (and report it with [`Liveness::probe_sent`]).
    Probe,
    /// The health changed to this.
    Became(Health),
}

/// When the driver should observe next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NextCheck {
    /// The next observation while the relay owes an answer; while it owes nothing, the
    /// earliest one after a send.
    pub(crate) at: Instant,
    /// `Some`: the relay owes nothing, so nothing can change the verdict until something
    /// is sent. Observe at the first send (but not before `at`) or at this instant,
    /// whichever comes first: QUIC's own keep-alives are sent without the driver knowing.
    pub(crate) idle_until: Option<Instant>,
}

/// One link's liveness detector.
#[derive(Debug)]
pub(crate) struct Liveness {
    cfg: DeadRelay,
    heard: u64,
    sent: u64,
    /// Since when the relay owes an answer: the first poll that saw something sent after
    /// the relay was last heard. `None`: it owes nothing, however long it is quiet.
    owed_since: Option<Instant>,
    rtt: Duration,
    /// The last probe sent during the current silence.
    probed_at: Option<Instant>,
    health: Health,
}

impl Liveness {
    pub(crate) fn new(cfg: DeadRelay, heard: u64, sent: u64) -> Self {
        Self {
            cfg,
            heard,
            sent,
            owed_since: None,
            rtt: Duration::ZERO,
            probed_at: None,
            health: Health::Alive,
        }
    }

    /// Silence that makes the relay dead: never below the configured floor, so a lossy or
    /// jittery path (whose RTT estimate may be tiny) does not move calls.
    pub(crate) fn dead_after(&self) -> Duration {
        let by_rtt = self.cfg.probe_after + self.rtt.saturating_mul(self.cfg.rtts);
        self.cfg.silence.max(by_rtt)
    }

    fn suspect_after(&self) -> Duration {
        (self.dead_after() / 2).max(self.cfg.probe_after)
    }

    /// How often the counter is looked at: a tenth of the floor, so a reading that is one
    /// poll late shifts the verdict by at most that.
    fn tick(&self) -> Duration {
        (self.cfg.silence / 10).max(Duration::from_millis(5))
    }

    /// One observation at `now`: `heard` counts everything received from the relay so far
    /// (QUIC datagrams, fast-path datagrams), `sent` everything sent to it, `rtt` is the
    /// path's smoothed RTT.
    pub(crate) fn observe(&mut self, now: Instant, heard: u64, sent: u64, rtt: Duration) -> Action {
        self.rtt = rtt;
        let sent_more = sent != self.sent;
        self.sent = sent;
        if heard != self.heard {
            self.heard = heard;
            // What was sent in the same interval may have been answered: the clock starts
            // again at the next send.
            self.owed_since = None;
            self.probed_at = None;
            if self.health != Health::Alive {
                self.health = Health::Alive;
                return Action::Became(Health::Alive);
            }
            return Action::Nothing;
        }
        if sent_more && self.owed_since.is_none() {
            self.owed_since = Some(now);
        }
        let silence = self
            .owed_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let health = if silence >= self.dead_after() {
            Health::Dead
        } else if silence >= self.suspect_after() {
            Health::Suspect
        } else {
            Health::Alive
        };
        // Dead is final for a link: recovery replaces it.
        if health != self.health && self.health != Health::Dead {
            self.health = health;
            return Action::Became(health);
        }
        if self.health != Health::Dead && silence >= self.cfg.probe_after && self.probe_due(now) {
            return Action::Probe;
        }
        Action::Nothing
    }

    fn probe_due(&self, now: Instant) -> bool {
        let every = self.cfg.probe_after.max(self.rtt);
        self.probed_at
            .is_none_or(|p| now.saturating_duration_since(p) >= every)
    }

    pub(crate) fn probe_sent(&mut self, now: Instant) {
        self.probed_at = Some(now);
    }

    #[cfg(test)]
    pub(crate) fn health(&self) -> Health {
        self.health
    }

    /// When to observe next.
    pub(crate) fn next_check(&self, now: Instant) -> NextCheck {
        let idle = self.owed_since.is_none() && self.health == Health::Alive;
        NextCheck {
            at: now + self.tick(),
            idle_until: idle.then(|| now + self.idle_poll()),
        }
    }

    /// How long an idle link goes unobserved when nothing is sent: bounds how late a send
    /// the driver is not told of (QUIC's keep-alive PING) starts the silence clock.
    fn idle_poll(&self) -> Duration {
        self.cfg.silence.saturating_mul(2).max(self.tick())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> DeadRelay {
        DeadRelay {
            probe_after: 150 * MS,
            silence: 600 * MS,
            rtts: 4,
            peer_wait: 1500 * MS,
        }
    }

    /// Drives the detector every `step` from `t0` with a silent relay until `until`;
    /// returns (probes sent, when it became suspect, when dead).
    fn silent(
        l: &mut Liveness,
        t0: Instant,
        step: Duration,
        until: Duration,
        rtt: Duration,
    ) -> (u32, Option<Duration>, Option<Duration>) {
        let (mut probes, mut suspect, mut dead) = (0, None, None);
        let mut t = t0;
        // Media goes out every 20 ms; nothing comes back.
        let mut sent = 0;
        while t <= t0 + until {
            sent += 2;
            match l.observe(t, 0, sent, rtt) {
                Action::Probe => {
                    probes += 1;
                    l.probe_sent(t);
                }
                Action::Became(Health::Suspect) => suspect = Some(t - t0),
                Action::Became(Health::Dead) => dead = Some(t - t0),
                _ => {}
            }
            t += step;
        }
        (probes, suspect, dead)
    }

    #[test]
    fn a_silent_relay_is_probed_then_suspect_then_dead_at_the_floor() {
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        let (probes, suspect, dead) = silent(&mut l, t0, 10 * MS, 2000 * MS, MS);
        // The clock starts at the first send (the first poll).
        assert_eq!(suspect, Some(300 * MS));
        assert_eq!(dead, Some(600 * MS));
        // One at 150 ms, then every 150 ms until dead, none after.
        assert_eq!(probes, 3);
        assert_eq!(l.health(), Health::Dead);
    }

    #[test]
    fn a_long_round_trip_raises_the_threshold() {
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        let (_, suspect, dead) = silent(&mut l, t0, 10 * MS, 3000 * MS, 300 * MS);
        // 150 ms + 4 × 300 ms.
        assert_eq!(dead, Some(1350 * MS));
        assert_eq!(suspect, Some(680 * MS));
    }

    #[test]
    fn anything_heard_resets_the_silence_and_clears_suspicion() {
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        assert_eq!(l.observe(t0, 0, 1, MS), Action::Nothing);
        assert_eq!(
            l.observe(t0 + 350 * MS, 0, 2, MS),
            Action::Became(Health::Suspect)
        );
        assert_eq!(
            l.observe(t0 + 360 * MS, 1, 3, MS),
            Action::Became(Health::Alive)
        );
        // Owed since the send seen at 370 ms; 590 ms later: not dead yet.
        assert_eq!(l.observe(t0 + 370 * MS, 1, 4, MS), Action::Nothing);
        assert_ne!(
            l.observe(t0 + 960 * MS, 1, 5, MS),
            Action::Became(Health::Dead)
        );
        assert_eq!(
            l.observe(t0 + 970 * MS, 1, 6, MS),
            Action::Became(Health::Dead)
        );
    }

    #[test]
    fn a_lossy_path_that_still_delivers_now_and_then_never_dies() {
        // A packet gets through every 500 ms (heavy loss): below the 600 ms floor, so the
        // link stays up however small the RTT estimate.
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        let mut heard = 0;
        for i in 1..=200u32 {
            let t = t0 + i * 10 * MS;
            if i % 50 == 0 {
                heard += 1;
            }
            if let Action::Probe = l.observe(t, heard, u64::from(i), MS) {
                l.probe_sent(t);
            }
            assert_ne!(l.health(), Health::Dead, "at {i}0 ms");
        }
    }

    #[test]
    fn dead_is_final_and_probes_stop() {
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        let _ = silent(&mut l, t0, 10 * MS, 700 * MS, MS);
        assert_eq!(l.health(), Health::Dead);
        assert_eq!(l.observe(t0 + 5000 * MS, 0, 999, MS), Action::Nothing);
    }

    #[test]
    fn a_quiet_relay_that_is_owed_nothing_is_never_probed() {
        // An idle call: nothing sent, nothing heard, for a minute. Then a keep-alive goes
        // out and is answered at once.
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        for i in 1..=6000u32 {
            assert_eq!(l.observe(t0 + i * 10 * MS, 0, 0, MS), Action::Nothing);
        }
        assert_eq!(l.observe(t0 + 60_010 * MS, 0, 1, MS), Action::Nothing);
        assert_eq!(l.observe(t0 + 60_020 * MS, 1, 1, MS), Action::Nothing);
        assert_eq!(l.health(), Health::Alive);
    }

    #[test]
    fn polls_come_a_tenth_of_the_floor_apart_while_an_answer_is_owed() {
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        assert_eq!(l.observe(t0, 0, 1, MS), Action::Nothing);
        assert_eq!(
            l.next_check(t0),
            NextCheck {
                at: t0 + 60 * MS,
                idle_until: None
            }
        );
    }

    #[test]
    fn an_idle_link_waits_for_a_send_or_twice_the_floor() {
        let t0 = Instant::now();
        let mut l = Liveness::new(cfg(), 0, 0);
        // Nothing owed from the start, and again once everything sent was answered.
        let idle = NextCheck {
            at: t0 + 60 * MS,
            idle_until: Some(t0 + 1200 * MS),
        };
        assert_eq!(l.next_check(t0), idle);
        assert_eq!(l.observe(t0, 0, 1, MS), Action::Nothing);
        assert_eq!(l.next_check(t0).idle_until, None);
        assert_eq!(l.observe(t0, 1, 1, MS), Action::Nothing);
        assert_eq!(l.next_check(t0), idle);
        // A suspect link is watched closely even if it sends nothing more.
        assert_eq!(l.observe(t0, 1, 2, MS), Action::Nothing);
        assert_eq!(
            l.observe(t0 + 300 * MS, 1, 2, MS),
            Action::Became(Health::Suspect)
        );
        assert_eq!(l.next_check(t0 + 300 * MS).idle_until, None);
    }
}

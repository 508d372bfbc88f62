//! Admission of incoming QUIC connections: for each `Incoming`, before any handshake state
//! or task exists, one of Retry (ask the client to prove its address: a stateless packet
//! smaller than its Initial), refuse (a stateless close), or accept (counted in flight until
//! the handshake ends, in all and per source prefix).
//!
//! Owns the rule and its counters (`duet_quic_handshakes_total{outcome}`,
//! `duet_quic_handshakes_in_flight`), not the quinn plumbing (`endpoint`). An address that
//! has answered a Retry is validated; no reply to an unvalidated address is ever larger than
//! what it sent, so the relay amplifies nothing while it asks for validation.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Label};

use crate::config::AdmissionConfig;
use crate::metrics::RelayMetrics;

/// What to do with one incoming connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send a Retry: the client must echo its token from the same address.
    Retry,
    /// Refuse it (a stateless CONNECTION_REFUSED), for `reason`.
    Refuse(Refusal),
    /// Handshake; in flight until the permit is dropped.
    Accept(Permit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `admission.max_handshakes` in flight.
    TooManyHandshakes,
    /// `admission.max_handshakes_per_source` in flight from its prefix.
    PerSource,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooManyHandshakes => "too_many_handshakes",
            Self::PerSource => "per_source",
        }
    }
}

/// A source prefix: the address with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Prefix(IpAddr);

fn prefix(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> Prefix {
    // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4_bits)).unwrap_or(0);
            Prefix(IpAddr::V4((u32::from(a) & mask).into()))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6_bits)).unwrap_or(0);
            Prefix(IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)))
        }
    }
}

struct Counters {
    accepted: Counter,
    retried: Counter,
    refused: [Counter; 2],
    in_flight: Gauge,
}

/// The admission state of one relay.
pub(crate) struct Admission {
    cfg: AdmissionConfig,
    in_flight: AtomicUsize,
    /// Handshakes in flight per source prefix; an entry goes when its count reaches 0.
    per_source: Mutex<HashMap<Prefix, u32>>,
    counters: Counters,
}

/// One handshake in flight; dropping it (handshake done, failed or timed out) frees its place.
pub(crate) struct Permit {
    admission: Arc<Admission>,
    source: Prefix,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({:?})", self.source.0)
    }
}

impl PartialEq for Permit {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Permit {}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        a.counters.in_flight.decrement(1.0);
        let mut m = a.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

impl Admission {
    pub fn new(cfg: AdmissionConfig, metrics: &RelayMetrics) -> Arc<Self> {
        let outcome = |o: &'static str| {
            metrics.counter(
                "duet_quic_handshakes_total",
                vec![Label::from_static_parts("outcome", o)],
            )
        };
        let refused = |r: Refusal| {
            metrics.counter(
                "duet_quic_handshakes_refused_total",
                vec![Label::from_static_parts("reason", r.as_str())],
            )
        };
        let counters = Counters {
            accepted: outcome("accepted"),
            retried: outcome("retried"),
            refused: [
                refused(Refusal::TooManyHandshakes),
                refused(Refusal::PerSource),
            ],
            in_flight: metrics.gauge("duet_quic_handshakes_in_flight"),
        };
        counters.in_flight.set(0.0);
        Arc::new(Self {
            cfg,
            in_flight: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            counters,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The verdict for a connection attempt from `remote`. `validated`: the client echoed a
    /// Retry token; `may_retry`: a Retry can still be sent (not after one was answered).
    pub fn decide(
        self: &Arc<Self>,
        remote: SocketAddr,
        validated: bool,
        may_retry: bool,
    ) -> Verdict {
        let c = &self.cfg;
        let in_flight = self.in_flight();
        if !validated && may_retry && in_flight >= c.retry_above_handshakes as usize {
            self.counters.retried.increment(1);
            return Verdict::Retry;
        }
        if in_flight >= c.max_handshakes as usize {
            return self.refuse(Refusal::TooManyHandshakes);
        }
        let source = prefix(remote.ip(), c.source_prefix_v4, c.source_prefix_v6);
        {
            let mut m = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(source).or_insert(0);
            if *n >= c.max_handshakes_per_source {
                drop(m);
                return self.refuse(Refusal::PerSource);
            }
            *n += 1;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.counters.in_flight.increment(1.0);
        self.counters.accepted.increment(1);
        Verdict::Accept(Permit {
            admission: self.clone(),
            source,
        })
    }

    fn refuse(&self, r: Refusal) -> Verdict {
        self.counters.refused[r as usize].increment(1);
        Verdict::Refuse(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(cfg: AdmissionConfig) -> Arc<Admission> {
        Admission::new(cfg, &RelayMetrics::new())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_clear_host_bits_and_unmap_v4() {
        let p = |s: &str, v4, v6| prefix(s.parse().unwrap(), v4, v6).0.to_string();
        assert_eq!(p("10.1.2.3", 24, 64), "10.1.2.0");
        assert_eq!(p("10.1.2.3", 32, 64), "10.1.2.3");
        assert_eq!(p("::ffff:10.1.2.3", 16, 64), "10.1.0.0");
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 32, 64), "2001:db8:1:2::");
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 32, 128), "2001:db8:1:2:3:4:5:6");
    }

    #[test]
    fn retry_above_the_threshold_only_for_unvalidated_addresses() {
        let a = admission(AdmissionConfig {
            retry_above_handshakes: 1,
            ..AdmissionConfig::default()
        });
        let first = a.decide(addr("10.0.0.1:1"), false, true);
        assert!(matches!(first, Verdict::Accept(_)), "{first:?}");
        assert_eq!(a.decide(addr("10.0.0.2:1"), false, true), Verdict::Retry);
        // After answering the Retry it is handshaked, not asked again.
        let validated = a.decide(addr("10.0.0.2:1"), true, false);
        assert!(matches!(validated, Verdict::Accept(_)));
        assert_eq!(a.in_flight(), 2);
        drop(first);
        drop(validated);
        assert_eq!(a.in_flight(), 0);
        assert!(a.per_source.lock().unwrap().is_empty(), "entries go at 0");
    }

    #[test]
    fn caps_in_all_and_per_source() {
        let a = admission(AdmissionConfig {
            retry_above_handshakes: 3,
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            source_prefix_v4: 24,
            ..AdmissionConfig::default()
        });
        let p1 = a.decide(addr("10.0.0.1:1"), true, false);
        let p2 = a.decide(addr("10.0.0.9:1"), true, false);
        assert!(matches!(p2, Verdict::Accept(_)));
        assert_eq!(
            a.decide(addr("10.0.0.200:1"), true, false),
            Verdict::Refuse(Refusal::PerSource),
            "same /24"
        );
        let p3 = a.decide(addr("10.0.1.1:1"), true, false);
        assert!(matches!(p3, Verdict::Accept(_)));
        assert_eq!(
            a.decide(addr("10.0.2.1:1"), true, false),
            Verdict::Refuse(Refusal::TooManyHandshakes)
        );
        // Unvalidated at the cap: a Retry (stateless), not a refusal.
        assert_eq!(a.decide(addr("10.0.2.1:1"), false, true), Verdict::Retry);
        drop((p1, p2, p3));
        assert!(matches!(
            a.decide(addr("10.0.0.1:1"), true, false),
            Verdict::Accept(_)
        ));
    }
}

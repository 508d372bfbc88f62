//! The process's open-file limit (`RLIMIT_NOFILE`): `serve` raises the soft limit to the
//! hard one at start, since many shells and container runtimes still hand out a soft 1,024,
//! and warns when even that is below what the configured session cap could need.
//!
//! Owns the arithmetic and the one `setrlimit`; what holds descriptors is the relay's
//! sockets (measured: they do not grow with sessions, see `deploy/systemd/duet-relay.service`).

use crate::config::Config;

/// Descriptors `cfg` is sized for: one per endpoint at `limits.max_sessions` (two per
/// session; today's relay shares one UDP socket, this is headroom), plus 1,024 for HTTP
/// clients, fast-path sockets and the runtime. The systemd unit's `LimitNOFILE` uses the
/// same sum.
pub fn wanted(cfg: &Config) -> u64 {
    2 * u64::from(cfg.limits.max_sessions) + 1024
}

/// The limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit to the hard limit; logs the result, and a warning when it is
/// below [`wanted`]. An error (none expected: raising up to the hard limit needs no
/// privilege) is logged and changes nothing.
#[cfg(unix)]
pub fn raise(cfg: &Config) -> Option<FdLimit> {
    let got = raise_to_hard();
    let want = wanted(cfg);
    match got {
        Ok(l) => {
            tracing::info!(
                soft = l.soft,
                hard = l.hard,
                was = l.soft_before,
                "open-file limit (RLIMIT_NOFILE)"
            );
            if l.soft < want {
                tracing::warn!(
                    limit = l.soft,
                    wanted = want,
                    max_sessions = cfg.limits.max_sessions,
                    "open-file limit is below what limits.max_sessions is sized for \
                     (2 per session + 1024): raise LimitNOFILE / ulimit -Hn or lower max_sessions"
                );
            }
            Some(l)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            None
        }
    }
}

#[cfg(not(unix))]
pub fn raise(_cfg: &Config) -> Option<FdLimit> {
    None
}

#[cfg(unix)]
fn raise_to_hard() -> std::io::Result<FdLimit> {
    // SAFETY: getrlimit/setrlimit read and write one plain struct owned here.
    unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let soft_before = lim.rlim_cur as u64;
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
        Ok(FdLimit {
            soft_before,
            soft: lim.rlim_cur as u64,
            hard: lim.rlim_max as u64,
        })
    }
}

//! Chaos during a run: `--chaos kill:PID@20s`, `--chaos term:PID@20s`,
//! `--chaos drain:HOST:PORT@20s`. At the given time after the first call starts, the
//! generator SIGKILLs a relay process (a crash), SIGTERMs it (its own graceful drain), or
//! asks its ops listener to drain (`POST /admin/drain`, bearer token from
//! `--ops-token-file`). Each action is done once and reported with when it ran and whether it
//! worked; the run's `media_gap` and `calls` then show what the calls felt.
//!
//! Parsing is sans-IO; [`run`] does the actions.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What to do to a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChaosAction {
    /// SIGKILL this process: a crash, no goodbye to any client.
    Kill(u32),
    /// SIGTERM this process: the relay's own shutdown (drain, then exit).
    Term(u32),
    /// `POST /admin/drain` on this ops address.
    Drain(SocketAddr),
}

/// One `--chaos` value: an action and when, after the first call starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosSpec {
    pub action: ChaosAction,
    pub at: Duration,
}

impl fmt::Display for ChaosSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = duet_proto::format_duration(self.at);
        match &self.action {
            ChaosAction::Kill(p) => write!(f, "kill:{p}@{at}"),
            ChaosAction::Term(p) => write!(f, "term:{p}@{at}"),
            ChaosAction::Drain(a) => write!(f, "drain:{a}@{at}"),
        }
    }
}

impl FromStr for ChaosSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected kill:PID@TIME, term:PID@TIME or drain:HOST:PORT@TIME";
        let (what, at) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("{s:?}: {expected}"))?;
        let at = duet_proto::parse_duration(at).map_err(|e| format!("{s:?}: time: {e}"))?;
        let (verb, arg) = what
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: {expected}"))?;
        let pid = || {
            arg.parse::<u32>()
                .ok()
                .filter(|p| *p > 1)
                .ok_or_else(|| format!("{s:?}: {arg:?} is not a process id"))
        };
        let action = match verb {
            "kill" => ChaosAction::Kill(pid()?),
            "term" => ChaosAction::Term(pid()?),
            "drain" => ChaosAction::Drain(
                arg.parse()
                    .map_err(|_| format!("{s:?}: {arg:?} is not an ops HOST:PORT"))?,
            ),
            _ => return Err(format!("{s:?}: unknown action {verb:?}; {expected}")),
        };
        Ok(ChaosSpec { action, at })
    }
}

/// What one action did, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosEvent {
    /// The `--chaos` value.
    pub spec: String,
    /// Seconds after the first call started that it ran.
    pub at_s: f64,
    /// Whether it worked (the signal was delivered, the drain was accepted).
    pub ok: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

fn signal(pid: u32, sig: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| "pid out of range".to_owned())?;
    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

async fn drain(addr: SocketAddr, token: Option<&str>) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /admin/drain HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\n\
         content-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut resp))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!(
            "drain answered {}",
            resp.lines().next().unwrap_or("nothing")
        ))
    }
}

/// Does every action at its time after `t0`, in time order; returns what each did. Bounded
/// by the latest `at` (plus a few seconds per drain request).
pub async fn run(
    mut specs: Vec<ChaosSpec>,
    t0: Instant,
    ops_token: Option<String>,
) -> Vec<ChaosEvent> {
    specs.sort_by_key(|s| s.at);
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        tokio::time::sleep_until((t0 + spec.at).into()).await;
        let at_s = crate::hist::round3(t0.elapsed().as_secs_f64());
        let r = match &spec.action {
            ChaosAction::Kill(p) => signal(*p, libc::SIGKILL),
            ChaosAction::Term(p) => signal(*p, libc::SIGTERM),
            ChaosAction::Drain(a) => drain(*a, ops_token.as_deref()).await,
        };
        out.push(ChaosEvent {
            spec: spec.to_string(),
            at_s,
            ok: r.is_ok(),
            error: r.err().unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["kill:1234@20s", "term:77@1m", "drain:127.0.0.1:9090@500ms"] {
            let spec: ChaosSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        let k: ChaosSpec = "kill:1234@20s".parse().unwrap();
        assert_eq!(k.action, ChaosAction::Kill(1234));
        assert_eq!(k.at, Duration::from_secs(20));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, want) in [
            ("kill:1234", "expected"),
            ("kill:abc@1s", "not a process id"),
            ("kill:1@1s", "not a process id"),
            ("drain:nowhere@1s", "HOST:PORT"),
            ("explode:1@1s", "unknown action"),
            ("kill:12@soon", "time"),
        ] {
            let e = s.parse::<ChaosSpec>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[tokio::test]
    async fn a_kill_reaches_its_process_and_a_dead_drain_target_is_reported() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let specs = vec![
            ChaosSpec {
                action: ChaosAction::Kill(child.id()),
                at: Duration::from_millis(50),
            },
            ChaosSpec {
                action: ChaosAction::Drain("127.0.0.1:1".parse().unwrap()),
                at: Duration::ZERO,
            },
        ];
        let ev = run(specs, Instant::now(), None).await;
        assert_eq!(ev.len(), 2);
        assert!(!ev[0].ok && ev[0].spec.starts_with("drain:"), "{ev:?}");
        assert!(ev[1].ok && ev[1].at_s >= 0.05, "{ev:?}");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}

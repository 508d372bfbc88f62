//! The exit status of the `duet-relay` binary by kind of failure, so a supervisor can tell
//! "fix the configuration" from "try again": systemd's `RestartPreventExitStatus=78` stops a
//! restart loop on a bad config file while a crash or a busy port is still restarted.
//!
//! Owns the classification only; the binary maps its error to the code.

use crate::config::ConfigError;
use crate::ops_cli::OpsCliError;
use crate::tls::TlsError;
use crate::RelayError;

/// `EX_CONFIG` from sysexits.h: the configuration (file, flags, files it names) is wrong.
/// Restarting with the same configuration cannot help.
pub const CONFIG: u8 = 78;
/// Anything else (a port in use, an I/O failure at run time, ...).
pub const FAILURE: u8 = 1;

/// The exit status for a failure whose error chain is `chain` (outermost first, as
/// `anyhow::Error::chain` yields it).
pub fn for_chain<'a>(mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> u8 {
    if chain.any(is_config_error) {
        CONFIG
    } else {
        FAILURE
    }
}

/// True for a bad config file or flag, an invalid field, or a file the configuration names
/// (token key, certificate, key, ops credential) that cannot be read or parsed, however
/// deeply it is wrapped.
pub fn is_config_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = e;
    loop {
        if cur.is::<ConfigError>() || cur.downcast_ref::<TlsError>().is_some_and(tls_is_config) {
            return true;
        }
        // A `#[error(transparent)]` variant hands its `source()` through from the error it
        // wraps, so that error is never in the chain `for_chain` walks: step into it here.
        match transparent_inner(cur) {
            Some(inner) => cur = inner,
            None => return false,
        }
    }
}

/// The error a transparent variant of one of this crate's error types wraps. Every such
/// variant that can carry a configuration error must be listed here (the test below
/// names each).
fn transparent_inner<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(r) = e.downcast_ref::<RelayError>() {
        return match r {
            RelayError::Config(c) => Some(c),
            RelayError::Tls(t) => Some(t),
            RelayError::Bind { .. } | RelayError::Thread { .. } => None,
        };
    }
    if let Some(TlsError::Config(c)) = e.downcast_ref::<TlsError>() {
        return Some(c);
    }
    if let Some(OpsCliError::Config(c)) = e.downcast_ref::<OpsCliError>() {
        return Some(c);
    }
    None
}

fn tls_is_config(e: &TlsError) -> bool {
    match e {
        TlsError::Config(_)
        | TlsError::Read { .. }
        | TlsError::Pem { .. }
        | TlsError::Validity { .. } => true,
        TlsError::Generate(_) | TlsError::Rustls(_) | TlsError::Quic(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    fn status(e: &(dyn std::error::Error + 'static)) -> u8 {
        for_chain(std::iter::successors(Some(e), |e| e.source()))
    }

    #[test]
    fn config_errors_are_78_others_1() {
        let invalid = ConfigError::Invalid {
            field: "limits.max_sessions",
            reason: "must be > 0".into(),
        };
        assert_eq!(status(&invalid), CONFIG);
        let wrapped = RelayError::Config(ConfigError::Flags("x".into()));
        assert_eq!(status(&wrapped), CONFIG);
        let unreadable_key = RelayError::Tls(TlsError::Read {
            path: PathBuf::from("/etc/duet/key.pem"),
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
        assert_eq!(status(&unreadable_key), CONFIG);
        let busy = RelayError::Bind {
            what: "QUIC",
            addr: SocketAddr::from(([127, 0, 0, 1], 4433)),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        assert_eq!(status(&busy), FAILURE);
        assert_eq!(status(&std::io::Error::other("boom")), FAILURE);
    }

    /// A `ConfigError` behind a transparent wrapper other than `RelayError`/`TlsError`
    /// (`OpsCliError`, as `duet-relay drain` returns it, then inside `anyhow`): the old
    /// check looked only at the outermost error and those two types, so this was 1.
    #[test]
    fn config_errors_behind_any_transparent_wrapper_are_78() {
        let bad_file = || ConfigError::Invalid {
            field: "token_file",
            reason: "cannot read /nonexistent".into(),
        };
        assert_eq!(status(&OpsCliError::Config(bad_file())), CONFIG);
        let any = anyhow::Error::from(OpsCliError::Config(bad_file()));
        assert_eq!(for_chain(any.chain()), CONFIG);
        let ctx = anyhow::Error::from(OpsCliError::Config(bad_file())).context("drain");
        assert_eq!(for_chain(ctx.chain()), CONFIG);
        let deep = RelayError::Tls(TlsError::Config(bad_file()));
        assert_eq!(status(&deep), CONFIG);
        let io = OpsCliError::Io {
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(status(&io), FAILURE);
    }
}

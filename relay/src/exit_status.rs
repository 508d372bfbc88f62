//! The exit status of the `duet-relay` binary by kind of failure, so a supervisor can tell
//! "fix the configuration" from "try again": systemd's `RestartPreventExitStatus=78` stops a
//! restart loop on a bad config file while a crash or a busy port is still restarted.
//!
//! Owns the classification only; the binary maps its error to the code.

use crate::config::ConfigError;
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
/// (token key, certificate, key, admin credential) that cannot be read or parsed.
pub fn is_config_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<ConfigError>() {
        return true;
    }
    // `RelayError` and `TlsError` wrap a `ConfigError` transparently, which hides it from
    // `source()`: look inside them.
    if let Some(r) = e.downcast_ref::<RelayError>() {
        return match r {
            RelayError::Config(_) => true,
            RelayError::Tls(t) => tls_is_config(t),
            RelayError::PolicyStore(_) | RelayError::Bind { .. } => false,
        };
    }
    e.downcast_ref::<TlsError>().is_some_and(tls_is_config)
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
}

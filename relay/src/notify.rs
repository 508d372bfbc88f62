//! Tells a service manager where the relay is in its life: systemd's `Type=notify`
//! protocol (`READY=1` once every socket listens, `STOPPING=1` when the drain starts).
//!
//! Owns only the messages; the datagram itself is sent by the `sd-notify` crate. Every call
//! is a no-op when `NOTIFY_SOCKET` is unset (a terminal, a container, a test), and a failed
//! send is logged, never fatal: the relay serves the same with or without a manager.

use sd_notify::NotifyState;

/// Every socket is bound: systemd may start units ordered after this one.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The drain has begun: `systemctl status` shows it, and systemd stops waiting for readiness.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A free-form line for `systemctl status` (e.g. after a certificate reload).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

//! systemd notifications: `READY=1` once the first gateway is ready, `STATUS=` on every
//! change, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` while a first start is gated, and
//! `WATCHDOG=1` while the supervisor's loop turns, when the unit asks for a watchdog.
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.
//!
//! `NOTIFY_SOCKET` stays in this process's environment (sd-notify reads it on each call);
//! children never see it, see [`super::child`].

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "cannot notify systemd");
    }
}

/// Tells systemd the service is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this pid), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pets the watchdog. The supervisor's loop calls this as it turns, so the watchdog
/// reflects the supervisor's own liveness, never a gateway's health: a database outage or
/// a crash-looping gateway must not get the whole unit (and its listener) killed.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Asks systemd for `extra` more time to finish starting (`EXTEND_TIMEOUT_USEC`), while a
/// first gateway is still gated (long migrations on a large database).
pub fn extend_start(extra: Duration) {
    let usec = u32::try_from(extra.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

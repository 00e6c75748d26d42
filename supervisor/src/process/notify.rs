//! systemd notifications: `READY=1` once the first gateway is ready, `STATUS=` on every
//! change, `STOPPING=1`, and `WATCHDOG=1` while the active gateway is healthy when the unit
//! asks for a watchdog. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.
//!
//! `NOTIFY_SOCKET` stays in this process's environment (sd-notify reads it on each call);
//! children never see it, see [`super::child`].

use std::net::SocketAddr;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use super::probe;

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

/// Pets the watchdog at half its interval while the active gateway (pid and probe address,
/// published by the supervisor) answers `/healthz` as itself. Runs until the sender drops.
pub async fn watchdog(interval: Duration, mut active: watch::Receiver<Option<(u32, SocketAddr)>>) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = active.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let target = *active.borrow();
        if let Some((pid, addr)) = target
            && probe::healthy(addr, pid).await
        {
            send(&[NotifyState::Watchdog]);
        }
    }
}

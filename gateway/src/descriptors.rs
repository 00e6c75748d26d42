//! The descriptor budget: the soft `RLIMIT_NOFILE` raised to the hard limit, and the
//! connection cap fitted under it with room to spare, so a full cap never runs the gateway
//! out of descriptors (an accept failing with EMFILE would also starve the probe listener,
//! and the supervisor would take a busy gateway for a dead one).
//!
//! The soft limit is often 1024 for a process started by hand, while the hard limit is far
//! higher; raising it is what systemd's documentation asks of a program that needs many
//! descriptors, and what Go's runtime does for every program.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept out of the connection cap: the probe listener's connections, the
/// database pools, the leader's connection, the listeners and the runtime's own; webhook
/// deliveries are reserved on top ([`fit`]). Halved for a limit so low that this would
/// leave nothing.
pub const RESERVED: u64 = 256;
/// The highest soft limit asked for when the hard limit is unlimited (the kernel's usual
/// `fs.nr_open`).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// The connection cap that fits under `soft_limit` descriptors beside `deliveries` webhook
/// connections: `cap`, or less.
pub fn fit_cap(cap: usize, deliveries: usize, soft_limit: u64) -> usize {
    let wanted = RESERVED.saturating_add(u64::try_from(deliveries).unwrap_or(u64::MAX));
    let reserve = wanted.min(soft_limit / 2);
    let room = usize::try_from(soft_limit - reserve).unwrap_or(usize::MAX);
    cap.min(room).max(1)
}

/// Raises the soft descriptor limit to the hard one and returns the connection cap that
/// fits under the limit then in force beside up to `deliveries` webhook POSTs in flight:
/// `cap` itself unless the limit is too low, which is logged with what to change.
pub fn fit(cap: usize, deliveries: usize) -> usize {
    let soft = match raise_soft_limit() {
        Ok(soft) => soft,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read RLIMIT_NOFILE; the connection cap is not checked against it");
            return cap;
        }
    };
    let fitted = fit_cap(cap, deliveries, soft);
    if fitted < cap {
        tracing::warn!(
            configured = cap,
            serving = fitted,
            descriptor_limit = soft,
            "AIHUMMER_MAX_CONNECTIONS does not fit under the descriptor limit: capping \
             connections lower (raise LimitNOFILE or lower AIHUMMER_MAX_CONNECTIONS)"
        );
    }
    fitted
}

/// The soft limit after raising it as far as the hard limit allows.
fn raise_soft_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        UNLIMITED_TARGET
    } else {
        hard
    };
    if soft == nix::sys::resource::RLIM_INFINITY || soft >= target {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => Ok(target),
        Err(err) => {
            tracing::warn!(error = %err, soft, hard, "cannot raise the soft descriptor limit");
            Ok(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_that_fits_under_the_limit_is_kept() {
        assert_eq!(fit_cap(10_000, 320, 65_536), 10_000);
        assert_eq!(fit_cap(16, 320, 1024), 16);
    }

    #[test]
    fn a_cap_above_the_limit_is_lowered_to_leave_the_reserve() {
        assert_eq!(fit_cap(10_000, 0, 1024), 1024 - RESERVED as usize);
        assert_eq!(fit_cap(10_000, 200, 1024), 1024 - RESERVED as usize - 200);
    }

    #[test]
    fn a_tiny_limit_keeps_half_for_the_reserve_and_at_least_one_connection() {
        assert_eq!(fit_cap(10_000, 320, 64), 32);
        assert_eq!(fit_cap(10_000, 320, 1), 1);
        assert_eq!(fit_cap(10_000, 320, 0), 1);
    }

    #[test]
    fn an_unlimited_descriptor_limit_keeps_the_cap() {
        assert_eq!(fit_cap(10_000, 20_480, u64::MAX), 10_000);
    }
}

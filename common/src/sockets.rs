//! The inherited-socket contract between a supervisor (or systemd socket activation) and
//! the gateway: sockets are passed from fd 3 on, counted in `LISTEN_FDS` and named in
//! `LISTEN_FDNAMES`, systemd-style. Both sides use these names, so they cannot drift.

/// The first passed descriptor, as systemd defines it.
pub const FIRST_FD: i32 = 3;
/// Name of the public listener every gateway accepts client traffic from.
pub const PUBLIC: &str = "public";
/// Name of a gateway's private loopback listener that only its supervisor probes.
pub const PROBE: &str = "probe";
/// The variables that carry the passed sockets; a process must not hand them on.
pub const LISTEN_VARS: &[&str] = &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

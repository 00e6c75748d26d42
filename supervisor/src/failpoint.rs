//! Crash points for the crash-safety suites. In a debug build, `AIHUMMER_FAILPOINT=<name>`
//! makes the process SIGKILL itself when it reaches the point of that name, exactly as a
//! `kill -9` at that instant would; a release build compiles every point to nothing. The
//! points: `switch.start`, `switch.state-saved`, `switch.current-linked`,
//! `switch.previous-linked`.

/// Dies by SIGKILL here if `AIHUMMER_FAILPOINT` names `point` (debug builds only).
pub fn hit(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("AIHUMMER_FAILPOINT").is_ok_and(|name| name == point) {
        tracing::warn!(point, "failpoint reached; dying by SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

//! Helpers for the packaging suites: the checkout's `packaging/` folder, and tools a test
//! needs from the system (skipped on a developer's machine that lacks them, a failure in
//! CI, where `.ci/run` installs them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout's `packaging/` folder.
pub fn packaging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// Whether `program args` runs successfully. When it does not: in CI (`CI=true`) a
/// failure naming what `.ci/run` should have installed; elsewhere `false`, after saying
/// the test is skipped.
pub fn tool_available(program: &str, args: &[&str], why: &str) -> bool {
    let works = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success());
    if !works {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{program} {}` does not run in CI; .ci/run installs it ({why})",
            args.join(" ")
        );
        eprintln!("SKIPPED: `{program}` is not available ({why})");
    }
    works
}

/// Whether this process runs as root; outside CI a test that needs root says it skips.
pub fn is_root(why: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root ({why})"
        );
        eprintln!("SKIPPED: not root ({why})");
    }
    root
}

/// The permission bits of `path` (e.g. `0o750`), panicking with the path when missing.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

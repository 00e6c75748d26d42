//! Test helpers shared by the install dir's unit tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use semver::Version;

/// A version from its text.
pub fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// A stand-in gateway: a shell script in `dir` running `body`, e.g. one that prints what
/// `--version` should.
pub fn fake_gateway(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

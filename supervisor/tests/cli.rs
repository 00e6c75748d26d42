//! The `aihummer` and `aihummer-publish` command lines, run as real processes. Being an
//! integration test also makes `cargo test`/`nextest` build the executables the
//! end-to-end suites use.

use std::process::Command;

fn version_line(bin: &str) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_binary_prints_its_name_and_a_semver() {
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_aihummer"), "aihummer"),
        (env!("CARGO_BIN_EXE_aihummer-publish"), "aihummer-publish"),
    ] {
        let line = version_line(bin);
        let (shown, version) = line.split_once(' ').expect("<name> <version>");
        assert_eq!(shown, name);
        assert!(semver::Version::parse(version).is_ok(), "{line}");
    }
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_aihummer"))
        .arg("frobnicate")
        .output()
        .expect("run aihummer");
    assert_eq!(out.status.code(), Some(2));
}

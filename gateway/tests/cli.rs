//! The gateway's command line, run as a real process. Being an integration test also makes
//! `cargo test`/`nextest` build the `aihummer-gateway` executable the end-to-end suites use.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aihummer-gateway"))
        .args(args)
        .output()
        .expect("run aihummer-gateway");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().to_string();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn version_prints_the_name_and_a_semver() {
    let (ok, stdout, _) = run(&["--version"]);
    assert!(ok);
    let (name, version) = stdout.split_once(' ').expect("<name> <version>");
    assert_eq!(name, "aihummer-gateway");
    assert!(semver::Version::parse(version).is_ok(), "{stdout}");
}

#[test]
fn outbox_commands_without_a_database_say_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_aihummer-gateway"))
        .args(["outbox", "stats"])
        .env_remove("AIHUMMER_DATABASE_URL")
        .output()
        .expect("run aihummer-gateway");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AIHUMMER_DATABASE_URL is not set"));
}

//! The install dir under stress: a rollback works while the installed version crash-loops
//! (nothing serves), and a supervisor killed with SIGKILL at each step of a switch leaves
//! an install that the next supervisor starts consistently: the version `state.json`
//! names, with the `current` and `previous` links repaired to match. Real gateways stamped
//! 1.0.0 and 1.1.0, in health-only mode; the crash loop is a script answering `--version`.

use std::path::Path;
use std::time::Duration;

use aihummer::install::{self, Layout};
use aihummer_tests::supervisor::{Supervisor, alive};
use aihummer_tests::update::stamped_gateway;
use aihummer_tests::updating::{fake_gateway, healthz_version, link_version};
use aihummer_tests::wait_for;
use semver::Version;

fn v(version: &str) -> Version {
    Version::parse(version).expect("version")
}

/// Installs each binary as its own version, then points `current` at `current` with
/// `previous` as the rollback target.
async fn prepare(state: &Path, binaries: &[&Path], current: &str, previous: &str) {
    let layout = Layout::new(state);
    for binary in binaries {
        install::install_bootstrap(&layout, binary, install::SMOKE_TIMEOUT)
            .await
            .expect("install a version");
    }
    let mut saved = layout.load_state().expect("state");
    layout.switch(&mut saved, &v(previous)).expect("switch");
    layout.switch(&mut saved, &v(current)).expect("switch");
    assert_eq!(saved.previous, Some(v(previous)));
}

/// Waits until `supervisor` serves; fails with its log.
async fn serving(supervisor: &Supervisor, what: &str) -> u32 {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = supervisor.status().await
            && status["state"] == "running"
            && status["active"]["state"] == "ready"
            && let Some(pid) = status["active"]["pid"].as_u64()
        {
            return u32::try_from(pid).expect("pid");
        }
        assert!(
            std::time::Instant::now() < end,
            "{what}: not serving within 30s; log:\n{}",
            supervisor.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start(state: &Path, env: &[(&str, &str)]) -> Supervisor {
    let mut all = vec![("AIHUMMER_STATE_DIR", state.to_str().expect("utf-8 path"))];
    all.extend_from_slice(env);
    Supervisor::start(&all)
}

#[tokio::test]
async fn a_rollback_during_a_crash_loop_starts_the_previous_version_at_once() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let looping = fake_gateway(scripts.path(), "1.1.0", "exit 3");
    let state = tempfile::tempdir().expect("tempdir");
    prepare(
        state.path(),
        &[&stamped_gateway("1.0.0"), &looping],
        "1.1.0",
        "1.0.0",
    )
    .await;
    let supervisor = start(state.path(), &[]);
    wait_for(Duration::from_secs(20), "the crash loop", || async {
        let status = supervisor.status().await?;
        let error = status["last_error"]["message"].as_str()?;
        error.contains("exited with exit code 3").then_some(())
    })
    .await;

    let out = supervisor.cli(&["rollback", "--json"]).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        supervisor.logs()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["version"], "1.0.0", "{report}");
    assert_eq!(
        healthz_version(&supervisor.url("/healthz"))
            .await
            .as_deref(),
        Some("1.0.0")
    );
    let status = supervisor.status().await.expect("status");
    assert!(
        status["quarantined"]
            .to_string()
            .contains("1.1.0: rolled back to 1.0.0"),
        "{status}"
    );
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.0.0")
    );
    assert_eq!(link_version(state.path(), "previous"), None);
    // The crash-looping release is no rollback target any more.
    let out = supervisor.cli(&["rollback"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no previous version"));
}

#[tokio::test]
async fn a_supervisor_killed_at_each_step_of_a_switch_restarts_on_a_consistent_install() {
    let (old, new) = (stamped_gateway("1.0.0"), stamped_gateway("1.1.0"));
    for (point, expect) in [
        ("switch.start", "1.0.0"),
        ("switch.state-saved", "1.1.0"),
        ("switch.current-linked", "1.1.0"),
        ("switch.previous-linked", "1.1.0"),
    ] {
        let state = tempfile::tempdir().expect("tempdir");
        prepare(state.path(), &[&old, &new], "1.0.0", "1.1.0").await;
        let mut dying = start(state.path(), &[("AIHUMMER_FAILPOINT", point)]);
        let old_pid = serving(&dying, point).await;
        let out = dying.cli(&["rollback"]).await;
        assert!(
            !out.status.success(),
            "{point}: the supervisor died mid-switch"
        );
        let status = dying.wait_exit(Duration::from_secs(10)).await;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{point}: killed at the point");
        // Its gateways notice their supervisor is gone and exit by themselves.
        wait_for(
            Duration::from_secs(15),
            "the orphaned gateway to exit",
            || async { (!alive(old_pid)).then_some(()) },
        )
        .await;

        let next = start(state.path(), &[]);
        serving(&next, point).await;
        assert_eq!(
            healthz_version(&next.url("/healthz")).await.as_deref(),
            Some(expect),
            "{point}: {}",
            next.logs()
        );
        let saved = Layout::new(state.path()).load_state().expect("state");
        assert_eq!(saved.current, Some(v(expect)), "{point}");
        let other = if expect == "1.0.0" { "1.1.0" } else { "1.0.0" };
        assert_eq!(saved.previous, Some(v(other)), "{point}");
        assert_eq!(
            link_version(state.path(), "current").as_deref(),
            Some(expect),
            "{point}: the link is repaired to match the state"
        );
        assert_eq!(
            link_version(state.path(), "previous").as_deref(),
            Some(other),
            "{point}"
        );
        println!("killed at {point}: restarted on {expect}, links consistent");
    }
}

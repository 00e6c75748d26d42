//! A candidate that cannot take over is stopped, and the old gateway keeps serving untouched.

use std::time::Duration;

use aihummer_tests::supervisor::{Supervisor, alive, install_script};
use aihummer_tests::{TestDb, binary, get_json, http};

/// Starts a supervisor whose gateway binary is a script in its scratch dir, so a test can
/// swap what the next `restart` runs; returns it with the active gateway's pid.
async fn supervisor_with_swappable_gateway(db: &TestDb) -> (Supervisor, std::path::PathBuf, u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("gateway");
    let real = binary("aihummer-gateway");
    install_script(&script, &format!("exec {} \"$@\"", real.display()));
    let supervisor = Supervisor::start_in(
        dir,
        &[
            ("AIHUMMER_DATABASE_URL", &db.url()),
            ("AIHUMMER_GATEWAY_BIN", script.to_str().expect("utf-8 path")),
            ("AIHUMMER_READY_TIMEOUT", "3s"),
        ],
    );
    let pid = supervisor.wait_serving(Duration::from_secs(30)).await;
    (supervisor, script, pid)
}

/// `/v1/ping` answers from `pid`, on a fresh connection each time.
async fn assert_served_by(supervisor: &Supervisor, pid: u32) {
    let client = http();
    for _ in 0..5 {
        let (status, body) = get_json(&client, &supervisor.url("/v1/ping"))
            .await
            .expect("ping answers");
        assert_eq!(status, 200);
        assert_eq!(body["pid"], pid, "the old gateway answers");
    }
}

#[tokio::test]
async fn a_candidate_that_exits_at_once_leaves_the_old_gateway_serving_and_status_names_the_reason()
{
    let db = TestDb::create().await;
    let (supervisor, script, old) = supervisor_with_swappable_gateway(&db).await;
    install_script(&script, "exit 1");

    let out = supervisor.cli(&["restart"]).await;
    assert_eq!(out.status.code(), Some(1), "a failed restart exits 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited with exit code 1 before it was ready"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("aihummer:"))
            .count(),
        1,
        "{stderr}"
    );

    assert!(alive(old));
    assert_served_by(&supervisor, old).await;
    let status = supervisor.status().await.expect("status");
    assert_eq!(status["active"]["pid"], old);
    assert_eq!(status["state"], "running");
    assert!(status["candidate"].is_null());
    let reason = status["last_error"]["message"]
        .as_str()
        .expect("last_error");
    assert!(
        reason.contains("exited with exit code 1")
            && reason.contains(&format!("pid {old} keeps serving")),
        "{reason}"
    );
    assert_eq!(status["last_handoff"]["ok"], false);
    let human = supervisor.cli(&["status"]).await;
    assert!(String::from_utf8_lossy(&human.stdout).contains("last error:"));
}

#[tokio::test]
async fn a_candidate_that_never_becomes_ready_is_stopped_and_the_old_gateway_keeps_serving() {
    let db = TestDb::create().await;
    let (supervisor, script, old) = supervisor_with_swappable_gateway(&db).await;
    // A database nobody listens on: the gateway serves health but /readyz stays 503.
    let real = binary("aihummer-gateway");
    install_script(
        &script,
        &format!(
            "AIHUMMER_DATABASE_URL=postgres://postgres@127.0.0.1:9/none exec {} \"$@\"",
            real.display()
        ),
    );

    let out = supervisor.cli(&["restart", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was not ready within 3s"), "{stderr}");
    assert!(
        stderr.contains("database"),
        "the gateway's own reason is passed on: {stderr}"
    );

    assert!(alive(old));
    assert_served_by(&supervisor, old).await;
    let status = supervisor.status().await.expect("status");
    assert_eq!(status["active"]["pid"], old);
    assert!(status["candidate"].is_null());
    let reason = status["last_error"]["message"]
        .as_str()
        .expect("last_error");
    assert!(reason.contains("was not ready within 3s"), "{reason}");
    let children = aihummer_tests::supervisor::children_of(supervisor.pid());
    assert_eq!(children, vec![old], "the failed candidate is gone");

    // Put the real gateway back: the next restart succeeds.
    install_script(&script, &format!("exec {} \"$@\"", real.display()));
    let out = supervisor.cli(&["restart"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(old));
}

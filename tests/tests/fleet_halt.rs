//! A node's side of fleet coordination, one supervisor against a real database: a version
//! halted fleet-wide is not installed by `apply`, a plain `aihummer update` refuses it and
//! says how to override, `aihummer update --version X` installs it anyway on this node,
//! and `aihummer fleet resume` lifts the halt. Also `aihummer fleet status` with and without
//! a supervisor, `aihummer-publish release --rollout`, and an update window that is closed.

use std::time::Duration;

use aihummer_tests::supervisor::Supervisor;
use aihummer_tests::update::stamped_gateway;
use aihummer_tests::updating::{Offering, aihummer};
use aihummer_tests::{TestDb, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;

fn stdout_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn a_halted_version_waits_for_an_operator_who_may_install_it_or_lift_the_halt() {
    let db = TestDb::create().await;
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let state = tempfile::tempdir().expect("tempdir");
    let old = stamped_gateway("1.0.0");
    let url = db.url();
    let supervisor = Supervisor::start(&[
        ("AIHUMMER_DATABASE_URL", &url),
        ("AIHUMMER_GATEWAY_BIN", old.to_str().expect("utf-8 path")),
        (
            "AIHUMMER_STATE_DIR",
            state.path().to_str().expect("utf-8 path"),
        ),
        ("AIHUMMER_AUTO_UPDATE", "apply"),
        ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
        ("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url()),
        ("AIHUMMER_UPDATE_INTERVAL", "1h"),
    ]);
    supervisor.wait_serving(Duration::from_secs(30)).await;
    // The node registers itself; then another node halts 1.1.0.
    let fleet = wait_for(Duration::from_secs(20), "the node registered", || async {
        let out = supervisor.cli(&["fleet", "status", "--json"]).await;
        let report = stdout_json(&out);
        let registered = report["nodes"].as_array()?.len() == 1;
        (registered && report["nodes"][0]["version"] == "1.0.0").then_some(report)
    })
    .await;
    assert_eq!(fleet["nodes"][0]["version"], "1.0.0", "{fleet}");
    assert_eq!(fleet["nodes"][0]["state"], "running", "{fleet}");
    sqlx::query(
        "INSERT INTO aihummer_fleet.halted_versions (version, node_id, reason, halted_at)
         VALUES ('1.1.0', 'node-b', 'crash loop: died 3 times', now())",
    )
    .execute(&db.pool().await)
    .await
    .expect("halt 1.1.0");

    supervisor.signal(Signal::SIGHUP);
    let line = supervisor
        .wait_check_result("halted fleet-wide", Duration::from_secs(30))
        .await;
    assert!(
        line.contains("node-b") && line.contains("--version 1.1.0"),
        "{line}"
    );
    assert!(
        !state.path().join("versions/1.1.0").exists(),
        "nothing staged"
    );

    let plain = supervisor.cli(&["update"]).await;
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success(), "{stderr}");
    assert!(
        stderr.contains("halted") && stderr.contains("--version 1.1.0"),
        "{stderr}"
    );

    let text = supervisor.cli(&["fleet", "status"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("1.1.0 by node node-b") && text.contains("rollout lease: free"),
        "{text}"
    );

    let forced = supervisor
        .cli(&["update", "--version", "1.1.0", "--json"])
        .await;
    assert!(
        forced.status.success(),
        "--version overrides the halt on this node: {}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(
        supervisor.status().await.expect("status")["active"]["version"],
        "1.1.0"
    );

    let resumed = supervisor
        .cli(&["fleet", "resume", "1.1.0", "--json"])
        .await;
    assert_eq!(stdout_json(&resumed)["was_halted"], true);
    let report = stdout_json(&supervisor.cli(&["fleet", "status", "--json"]).await);
    assert_eq!(report["halted"], serde_json::json!([]), "{report}");

    // Without a supervisor, the CLI reads the database this shell names, or says it has none.
    let socket = supervisor.socket.to_str().expect("utf-8 path").to_string();
    let elsewhere = format!("{socket}.none");
    let here = aihummer(
        &[
            ("AIHUMMER_SUPERVISOR_SOCKET", &elsewhere),
            ("AIHUMMER_DATABASE_URL", &url),
        ],
        &["fleet", "status", "--json"],
    )
    .await;
    assert_eq!(
        stdout_json(&here)["nodes"].as_array().map(Vec::len),
        Some(1)
    );
    let nowhere = aihummer(
        &[("AIHUMMER_SUPERVISOR_SOCKET", &elsewhere)],
        &["fleet", "status"],
    )
    .await;
    assert_eq!(
        nowhere.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&nowhere.stderr)
    );
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("AIHUMMER_DATABASE_URL"));
}

#[tokio::test]
async fn outside_the_update_window_apply_stages_nothing_and_says_when_it_opens() {
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let state = tempfile::tempdir().expect("tempdir");
    let old = stamped_gateway("1.0.0");
    // A one-minute window twelve hours from now: closed whenever this runs.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let minute = (now / 60 + 12 * 60) % (24 * 60);
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        minute / 60,
        minute % 60,
        (minute + 1) % (24 * 60) / 60,
        (minute + 1) % 60
    );
    let supervisor = Supervisor::start(&[
        ("AIHUMMER_GATEWAY_BIN", old.to_str().expect("utf-8 path")),
        (
            "AIHUMMER_STATE_DIR",
            state.path().to_str().expect("utf-8 path"),
        ),
        ("AIHUMMER_AUTO_UPDATE", "apply"),
        ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
        ("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url()),
        ("AIHUMMER_UPDATE_WINDOW", &window),
    ]);
    supervisor.wait_serving(Duration::from_secs(30)).await;
    supervisor.signal(Signal::SIGHUP);
    let line = supervisor
        .wait_check_result("update window", Duration::from_secs(30))
        .await;
    println!("{line}");
    assert!(
        line.contains(&window) && line.contains("checking again in 11h"),
        "{line}"
    );
    assert_eq!(
        supervisor.status().await.expect("status")["active"]["version"],
        "1.0.0"
    );
    assert!(
        !state.path().join("versions/1.1.0").exists(),
        "nothing staged"
    );
    // An operator is not held back by the window.
    let update = supervisor.cli(&["update", "--json"]).await;
    assert!(
        update.status.success(),
        "{}",
        String::from_utf8_lossy(&update.stderr)
    );
}

#[tokio::test]
async fn the_publisher_writes_the_rollout_percentage_and_refuses_one_above_100() {
    let cdn = tempfile::tempdir().expect("tempdir");
    let gateway = stamped_gateway("1.1.0");
    let publish = |rollout: &str| {
        std::process::Command::new(aihummer_tests::binary("aihummer-publish"))
            .args(["release", "--version", "1.1.0", "--binary"])
            .arg(&gateway)
            .arg("--out")
            .arg(cdn.path())
            .args(["--rollout", rollout])
            .output()
            .expect("run aihummer-publish")
    };
    let refused = publish("150");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--rollout"));
    let out = publish("10");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(cdn.path().join("stable/latest.json")).expect("latest.json"),
    )
    .expect("json");
    assert_eq!(manifest["rollout"], 10, "{manifest}");
}

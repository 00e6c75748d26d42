//! The soak window: an update whose gateway passes its gate but then keeps dying is rolled
//! back to `previous` by the supervisor itself, quarantined, and reported in status. The
//! crash-looping release is the real 1.1.0 gateway behind a script that kills it two
//! seconds after each start (exec keeps the pid, so the inherited sockets still match).

use std::time::Duration;

use aihummer_tests::supervisor::Supervisor;
use aihummer_tests::update::stamped_gateway;
use aihummer_tests::updating::{Offering, fake_gateway, healthz_version, link_version};
use aihummer_tests::wait_for;

#[tokio::test]
async fn a_version_that_crash_loops_after_the_switch_is_rolled_back_and_quarantined() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let real = stamped_gateway("1.1.0");
    let dying = fake_gateway(
        scripts.path(),
        "1.1.0",
        &format!(
            "( exec 3>&- 4>&- 5>&-; sleep 2; kill -9 $$ ) &\nexec {}",
            real.display()
        ),
    );
    let offering = Offering::start(&dying, "1.1.0").await;
    let state = tempfile::tempdir().expect("tempdir");
    let old = stamped_gateway("1.0.0");
    let supervisor = Supervisor::start(&[
        ("AIHUMMER_GATEWAY_BIN", old.to_str().expect("utf-8 path")),
        (
            "AIHUMMER_STATE_DIR",
            state.path().to_str().expect("utf-8 path"),
        ),
        ("AIHUMMER_AUTO_UPDATE", "off"),
        ("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url()),
    ]);
    supervisor.wait_serving(Duration::from_secs(30)).await;

    let out = supervisor.cli(&["update", "--json"]).await;
    assert!(
        out.status.success(),
        "the update itself succeeds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.1.0")
    );

    let status = wait_for(
        Duration::from_secs(30),
        "the automatic rollback to 1.0.0",
        || async {
            let status = supervisor.status().await?;
            let back = status["active"]["version"] == "1.0.0" && status["state"] == "running";
            back.then_some(status)
        },
    )
    .await;
    let error = status["last_error"]["message"].as_str().unwrap_or_default();
    println!(
        "status after the crash loop: {error}; quarantined {}",
        status["quarantined"]
    );
    assert!(
        error.contains("automatic rollback from 1.1.0 to 1.0.0") && error.contains("crash loop"),
        "{error}"
    );
    assert!(
        status["quarantined"]
            .to_string()
            .contains("1.1.0: crash loop"),
        "{}",
        status["quarantined"]
    );
    assert!(
        status["crash_restarts"].as_u64().unwrap_or(0) >= 3,
        "{status}"
    );
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.0.0")
    );
    // The crash-looping release is no rollback target: a second rollback must not
    // reinstall it (and quarantine the good version in its turn).
    assert_eq!(link_version(state.path(), "previous"), None);
    let out = supervisor.cli(&["rollback"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no previous version"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        supervisor
            .logs()
            .contains("automatic rollback from 1.1.0 to 1.0.0")
    );
    // It stays on 1.0.0: served, and nothing reinstalls the quarantined version.
    assert_eq!(
        healthz_version(&supervisor.url("/healthz"))
            .await
            .as_deref(),
        Some("1.0.0")
    );
    let out = supervisor.cli(&["update"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("quarantined"));
}

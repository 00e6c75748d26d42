//! A database outage is not the release's fault. In `apply` mode the automatic update
//! waits for the fleet's rollout lease (in the same database) rather than start a handoff;
//! an operator's `aihummer update` goes ahead, and its candidate cannot become ready, but
//! neither can the gateway serving beside it, so the release is not quarantined; once the
//! database is back, the supervisor tries again by itself and installs it. The outage is a TCP proxy in front of the shared server, cut and restored
//! by the test. Real gateways stamped 1.0.0 and 1.1.0.

use std::time::Duration;

use aihummer_tests::supervisor::Supervisor;
use aihummer_tests::update::stamped_gateway;
use aihummer_tests::updating::{Offering, healthz_version, link_version};
use aihummer_tests::{Proxy, TestDb, get_json, http, wait_for};
use nix::sys::signal::Signal;

#[tokio::test]
async fn a_database_outage_during_an_apply_handoff_does_not_quarantine_the_release() {
    let db = TestDb::create().await;
    let mut proxy = Proxy::new();
    proxy.start().await;
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let state = tempfile::tempdir().expect("tempdir");
    let old = stamped_gateway("1.0.0");
    let database = proxy.url(&db);
    let supervisor = Supervisor::start(&[
        ("AIHUMMER_GATEWAY_BIN", old.to_str().expect("utf-8 path")),
        (
            "AIHUMMER_STATE_DIR",
            state.path().to_str().expect("utf-8 path"),
        ),
        ("AIHUMMER_DATABASE_URL", &database),
        ("AIHUMMER_AUTO_UPDATE", "apply"),
        ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
        ("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url()),
        ("AIHUMMER_READY_TIMEOUT", "5s"),
    ]);
    supervisor.wait_serving(Duration::from_secs(60)).await;

    proxy.stop().await;
    let client = http();
    wait_for(
        Duration::from_secs(20),
        "the serving gateway to turn unready",
        || async {
            let (status, _) = get_json(&client, &supervisor.url("/readyz")).await?;
            (status == 503).then_some(())
        },
    )
    .await;
    // An automatic update needs the fleet's rollout lease, in the same database: it waits
    // for it instead of starting a handoff the outage would fail.
    supervisor.signal(Signal::SIGHUP);
    let line = supervisor
        .wait_check_result("waiting", Duration::from_secs(60))
        .await;
    assert!(line.contains("AIHUMMER_DATABASE_URL"), "{line}");
    let status = supervisor.status().await.expect("status");
    assert!(
        status["last_handoff"].is_null(),
        "no handoff was tried: {status}"
    );
    // An operator's update goes ahead; its handoff fails through no fault of the release.
    let update = supervisor.cli(&["update"]).await;
    assert!(!update.status.success());
    let status = wait_for(Duration::from_secs(60), "the failed handoff", || async {
        let status = supervisor.status().await?;
        let ok = status["last_handoff"]["ok"].as_bool()?;
        (!ok).then_some(status)
    })
    .await;
    let error = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        error.contains("not blamed") && error.contains("tried again"),
        "{status}"
    );
    assert_eq!(status["quarantined"], serde_json::json!([]), "{status}");
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.0.0")
    );

    proxy.start().await;
    wait_for(
        Duration::from_secs(90),
        "1.1.0 installed after the recovery",
        || async {
            let status = supervisor.status().await?;
            let done = status["active"]["version"] == "1.1.0" && status["state"] == "running";
            done.then_some(())
        },
    )
    .await;
    assert_eq!(
        healthz_version(&supervisor.url("/healthz"))
            .await
            .as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.1.0")
    );
    let status = supervisor.status().await.expect("status");
    assert_eq!(status["quarantined"], serde_json::json!([]), "{status}");
    println!("{}", status["last_handoff"]);
}

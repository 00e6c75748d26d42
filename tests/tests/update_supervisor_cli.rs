//! `aihummer update` and `aihummer rollback` through a running supervisor, under steady
//! HTTP load: the CDN offers 1.1.0 while 1.0.0 runs; the update brings 1.1.0 to serving
//! and the rollback brings 1.0.0 back, each without a failed request. A version rolled
//! away from is quarantined, so a plain update refuses it and `--version` installs it
//! anyway. Real binaries stamped 1.0.0 and 1.1.0; gateways in health-only mode.

use std::time::Duration;

use aihummer_tests::supervisor::{Load, Supervisor, alive};
use aihummer_tests::update::stamped_gateway;
use aihummer_tests::updating::{Offering, fake_gateway, healthz_version, link_version};
use aihummer_tests::wait_for;
use serde_json::Value;

/// Runs `args` (an update or a rollback) under load and checks the handoff: exit 0, the
/// old gateway gone, `expect` serving, no failed request. Returns the handoff's duration.
async fn hand_off_under_load(supervisor: &Supervisor, args: &[&str], expect: &str) -> u64 {
    let old_pid = supervisor.wait_serving(Duration::from_secs(30)).await;
    let load = Load::start(&supervisor.url("/v1/ping"), 2, 2, 100_000);
    wait_for(
        Duration::from_secs(10),
        "load on the old gateway",
        || async { (load.served_by(old_pid) > 20).then_some(()) },
    )
    .await;
    let started = std::time::Instant::now();
    let out = supervisor.cli(args).await;
    let command = started.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        supervisor.logs()
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["version"], expect, "{report}");
    assert_eq!(report["old_pid"], old_pid, "{report}");
    let new_pid = u32::try_from(report["new_pid"].as_u64().expect("pid")).expect("pid");
    assert!(
        !alive(old_pid),
        "the old gateway is gone when the command returns"
    );
    wait_for(
        Duration::from_secs(10),
        "load on the new gateway",
        || async { (load.served_by(new_pid) > 20).then_some(()) },
    )
    .await;
    let samples = load.stop().await;
    let failures: Vec<_> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    let duration = report["duration_ms"].as_u64().expect("duration");
    println!(
        "{args:?} -> {expect}: handoff {duration}ms (whole command {}ms), {} requests, {} failed",
        command.as_millis(),
        samples.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        healthz_version(&supervisor.url("/healthz"))
            .await
            .as_deref(),
        Some(expect)
    );
    duration
}

#[tokio::test]
async fn update_and_rollback_hand_off_under_load_without_a_failed_request() {
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
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
    let out = supervisor.cli(&["rollback"]).await;
    assert!(!out.status.success(), "nothing to roll back to yet");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no previous version"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut durations =
        vec![hand_off_under_load(&supervisor, &["update", "--json"], "1.1.0").await];
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        link_version(state.path(), "previous").as_deref(),
        Some("1.0.0")
    );
    let out = supervisor.cli(&["update"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));

    durations.push(hand_off_under_load(&supervisor, &["rollback", "--json"], "1.0.0").await);
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.0.0")
    );
    // The version rolled away from is quarantined, so it is no rollback target.
    assert_eq!(link_version(state.path(), "previous"), None);
    let status = supervisor.status().await.expect("status");
    let quarantined = status["quarantined"].to_string();
    assert!(
        quarantined.contains("1.1.0: rolled back to 1.0.0"),
        "{quarantined}"
    );

    // Rolled away from, so not installed again by itself; asked for by name, it is.
    let out = supervisor.cli(&["update"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quarantined"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    durations.push(
        hand_off_under_load(
            &supervisor,
            &["update", "--version", "1.1.0", "--json"],
            "1.1.0",
        )
        .await,
    );
    durations.push(hand_off_under_load(&supervisor, &["rollback", "--json"], "1.0.0").await);

    // A release whose gateway exits at once: the command fails with the reason, and the
    // same old gateway still serves.
    let pid = supervisor.wait_serving(Duration::from_secs(30)).await;
    let scripts = tempfile::tempdir().expect("tempdir");
    offering
        .publish(&fake_gateway(scripts.path(), "1.2.0", "exit 3"), "1.2.0")
        .await;
    let out = supervisor.cli(&["update"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exited with exit code 3") && stderr.contains("keeps serving"),
        "{stderr}"
    );
    assert_eq!(supervisor.wait_serving(Duration::from_secs(5)).await, pid);
    assert_eq!(
        healthz_version(&supervisor.url("/healthz"))
            .await
            .as_deref(),
        Some("1.0.0")
    );

    durations.sort_unstable();
    println!(
        "handoff from the command to the old gateway gone (download excluded): median {}ms, worst {}ms over {:?}",
        durations[durations.len() / 2],
        durations[durations.len() - 1],
        durations
    );
}

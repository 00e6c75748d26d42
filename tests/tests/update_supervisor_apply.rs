//! The supervisor updating itself in `apply` mode, driven by SIGHUP with no CLI: a loopback
//! CDN offers a newer gateway, the supervisor stages it, hands off under load without a
//! failed request and switches `current`; a release that fails before the switch is
//! quarantined with its reason while the old gateway keeps serving. Gateways run in
//! health-only mode, which the supervisor's gate accepts. Real binaries stamped 1.0.0 and
//! 1.1.0 (built once; see `aihummer_tests::update::stamped_gateway`).

use std::path::Path;
use std::time::Duration;

use aihummer_tests::supervisor::{Load, Supervisor, alive};
use aihummer_tests::update::{Fault, stamped_gateway};
use aihummer_tests::updating::{Offering, fake_gateway, healthz_version, link_version};
use aihummer_tests::wait_for;
use nix::sys::signal::Signal;
use serde_json::Value;

/// A supervisor in `apply` mode running stamped 1.0.0 from the install dir `state`.
fn apply_supervisor(state: &Path, base: &str) -> Supervisor {
    let old = stamped_gateway("1.0.0");
    Supervisor::start(&[
        ("AIHUMMER_GATEWAY_BIN", old.to_str().expect("utf-8 path")),
        ("AIHUMMER_STATE_DIR", state.to_str().expect("utf-8 path")),
        ("AIHUMMER_AUTO_UPDATE", "apply"),
        ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
        ("AIHUMMER_DOWNLOAD_BASE_URL", base),
    ])
}

/// Waits for `status` to satisfy `done`, returning that status.
async fn wait_status(supervisor: &Supervisor, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(60), what, || async {
        let status = supervisor.status().await?;
        done(&status).then_some(status)
    })
    .await
}

#[tokio::test]
async fn sighup_in_apply_mode_hands_off_to_the_new_version_under_load_without_a_failed_request() {
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let state = tempfile::tempdir().expect("tempdir");
    let supervisor = apply_supervisor(state.path(), &offering.base_url());
    let old_pid = supervisor.wait_serving(Duration::from_secs(30)).await;
    assert_eq!(
        healthz_version(&supervisor.url("/healthz"))
            .await
            .as_deref(),
        Some("1.0.0")
    );
    assert_eq!(
        link_version(state.path(), "current").as_deref(),
        Some("1.0.0"),
        "bootstrap installed"
    );

    let load = Load::start(&supervisor.url("/v1/ping"), 2, 2, 100_000);
    wait_for(
        Duration::from_secs(10),
        "load on the old gateway",
        || async { (load.served_by(old_pid) > 20).then_some(()) },
    )
    .await;
    supervisor.signal(Signal::SIGHUP);
    let status = wait_status(&supervisor, "1.1.0 to serve alone", |s| {
        s["active"]["version"] == "1.1.0" && s["state"] == "running" && s["draining"].is_null()
    })
    .await;
    let new_pid = u32::try_from(status["active"]["pid"].as_u64().expect("pid")).expect("pid");
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
    println!(
        "apply via SIGHUP: {} requests, {} failed; handoff {}ms",
        samples.len(),
        failures.len(),
        status["last_handoff"]["duration_ms"]
    );
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}\n{}",
        supervisor.logs()
    );
    assert!(!alive(old_pid), "the old gateway is gone");
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
    assert_eq!(
        link_version(state.path(), "previous").as_deref(),
        Some("1.0.0")
    );
    let saved: Value = serde_json::from_slice(
        &std::fs::read(state.path().join("state.json")).expect("state.json"),
    )
    .expect("state json");
    assert_eq!(saved["highest_trusted"], "1.1.0");
    assert_eq!(status["update"]["mode"], "apply");
}

#[tokio::test]
async fn releases_that_fail_before_the_switch_are_quarantined_while_the_old_gateway_serves() {
    let new = stamped_gateway("1.1.0");
    let offering = Offering::start(&new, "1.1.0").await;
    // Same length, other bytes: only the sha256 can tell.
    let mut corrupt = std::fs::read(&new).expect("read the artifact");
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    offering
        .cdn
        .fault(&Offering::artifact_path("1.1.0"), Fault::Replace(corrupt));
    let state = tempfile::tempdir().expect("tempdir");
    let supervisor = apply_supervisor(state.path(), &offering.base_url());
    let pid = supervisor.wait_serving(Duration::from_secs(30)).await;
    let scripts = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("1.1.0", None, "sha256 mismatch"),
        ("1.2.0", Some("exit 3"), "exited with"),
        ("1.3.0", Some("exec sleep 600"), "was not ready within"),
    ];
    for (version, script, reason) in cases {
        if let Some(body) = script {
            offering
                .publish(&fake_gateway(scripts.path(), version, body), version)
                .await;
        }
        supervisor.signal(Signal::SIGHUP);
        let status = wait_status(&supervisor, &format!("{version} to be quarantined"), |s| {
            s["quarantined"].as_array().is_some_and(|q| {
                q.iter()
                    .any(|e| e.as_str().is_some_and(|e| e.starts_with(version)))
            }) && s["state"] == "running"
        })
        .await;
        let entry = status["quarantined"]
            .as_array()
            .and_then(|q| {
                q.iter()
                    .find_map(|e| e.as_str().filter(|e| e.starts_with(version)))
            })
            .expect("entry")
            .to_string();
        println!("refused {version}: {entry}");
        assert!(entry.contains(reason), "{entry}");
        assert_eq!(
            status["active"]["pid"], pid,
            "the old gateway keeps serving"
        );
        assert_eq!(
            healthz_version(&supervisor.url("/healthz"))
                .await
                .as_deref(),
            Some("1.0.0")
        );
        assert_eq!(
            link_version(state.path(), "current").as_deref(),
            Some("1.0.0")
        );
    }
    let saved = std::fs::read_to_string(state.path().join("state.json")).expect("state.json");
    for (version, ..) in cases {
        assert!(
            saved.contains(&format!("\"{version}\"")),
            "{version} persisted: {saved}"
        );
    }
}

//! Checking for updates: `aihummer update --check` without a supervisor (it reads the same
//! environment one would, asks the loopback CDN, and answers with its exit code: 0 up to
//! date, 100 newer available, other non-zero with the reason); with one, it asks the
//! supervisor, so the supervisor's settings are used and the check shows in status; and a
//! supervisor in the default notify-only mode showing a newer version in status. The
//! offered release is a gateway stamped 1.1.0 (built once; see
//! `aihummer_tests::update::stamped_gateway`).

use std::time::Duration;

use aihummer_tests::supervisor::Supervisor;
use aihummer_tests::update::{Fault, stamped_gateway};
use aihummer_tests::updating::{Offering, aihummer};
use aihummer_tests::{binary, wait_for};
use nix::sys::signal::Signal;

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn update_check_without_a_supervisor_reports_available_up_to_date_and_failures() {
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody.sock");
    let socket = socket.to_str().expect("utf-8 path");
    let base = offering.base_url();
    let old = binary("aihummer-gateway");
    let old = old.to_str().expect("utf-8 path").to_string();
    let run = |gateway: String, args: &'static [&'static str]| {
        let base = base.clone();
        async move {
            let env = [
                ("AIHUMMER_SUPERVISOR_SOCKET", socket),
                ("AIHUMMER_DOWNLOAD_BASE_URL", base.as_str()),
                ("AIHUMMER_GATEWAY_BIN", gateway.as_str()),
            ];
            aihummer(&env, args).await
        }
    };

    // The workspace's gateway (0.1.0) runs: 1.1.0 is newer.
    let out = run(old.clone(), &["update", "--check"]).await;
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1.1.0"),
        "{}",
        text(&out)
    );
    let out = run(old.clone(), &["update", "--check", "--json"]).await;
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (doc["result"].as_str(), doc["version"].as_str()),
        (Some("available"), Some("1.1.0"))
    );

    // 1.1.0 itself runs: up to date.
    let new = stamped_gateway("1.1.0");
    let out = run(
        new.to_str().expect("utf-8 path").to_string(),
        &["update", "--check"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        text(&out)
    );

    // A failing CDN: non-zero, with the reason.
    offering
        .cdn
        .fault("/stable/latest.json", Fault::Status(500));
    let out = run(old.clone(), &["update", "--check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("500"),
        "{}",
        text(&out)
    );

    // No CDN configured: a clear reason, not a crash.
    let out = aihummer(
        &[("AIHUMMER_SUPERVISOR_SOCKET", socket)],
        &["update", "--check"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AIHUMMER_DOWNLOAD_BASE_URL"),
        "{}",
        text(&out)
    );
    // A bad setting names its variable.
    let out = aihummer(
        &[
            ("AIHUMMER_SUPERVISOR_SOCKET", socket),
            ("AIHUMMER_UPDATE_CHANNEL", "nightly"),
        ],
        &["update", "--check"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AIHUMMER_UPDATE_CHANNEL"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn with_a_cdn_and_no_mode_set_sighup_checks_and_shows_the_newer_version_without_installing() {
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let supervisor = Supervisor::start(&[("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url())]);
    let pid = supervisor.wait_serving(Duration::from_secs(30)).await;
    supervisor.signal(Signal::SIGHUP);
    let status = wait_for(
        Duration::from_secs(20),
        "the check's outcome in status",
        || async {
            let status = supervisor.status().await?;
            status["update"]["available"].is_string().then_some(status)
        },
    )
    .await;
    assert_eq!(status["update"]["mode"], "check", "check is the default");
    assert_eq!(status["update"]["available"], "1.1.0");
    assert_eq!(status["update"]["last_result"], "update available: 1.1.0");
    assert_eq!(
        status["active"]["pid"], pid,
        "notify only: nothing installed"
    );
    assert!(supervisor.logs().contains("update available: 1.1.0"));
    // With a supervisor running, the CLI check agrees.
    let socket = supervisor.socket.to_str().expect("utf-8 path");
    let out = aihummer(
        &[
            ("AIHUMMER_SUPERVISOR_SOCKET", socket),
            ("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url()),
        ],
        &["update", "--check"],
    )
    .await;
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
}

#[tokio::test]
async fn update_check_asks_the_running_supervisor_with_its_settings_and_status_shows_it() {
    let offering = Offering::start(&stamped_gateway("1.1.0"), "1.1.0").await;
    let supervisor = Supervisor::start(&[
        ("AIHUMMER_DOWNLOAD_BASE_URL", &offering.base_url()),
        ("AIHUMMER_AUTO_UPDATE", "check"),
    ]);
    supervisor.wait_serving(Duration::from_secs(30)).await;
    let before = supervisor.status().await.expect("status");
    assert!(before["update"]["last_check"].is_null(), "{before}");
    // The operator's shell knows nothing of the CDN: the supervisor's settings are used.
    let socket = supervisor.socket.to_str().expect("utf-8 path");
    let only_socket = [("AIHUMMER_SUPERVISOR_SOCKET", socket)];
    let out = aihummer(&only_socket, &["update", "--check"]).await;
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("update available: 1.1.0"),
        "{}",
        text(&out)
    );
    let status = supervisor.status().await.expect("status");
    assert_eq!(status["update"]["last_result"], "update available: 1.1.0");
    assert_eq!(status["update"]["available"], "1.1.0");
    assert!(status["update"]["last_check"].is_string(), "{status}");

    let out = aihummer(&only_socket, &["update", "--check", "--json"]).await;
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            doc["result"].as_str(),
            doc["version"].as_str(),
            doc["channel"].as_str()
        ),
        (Some("available"), Some("1.1.0"), Some("stable"))
    );

    // The supervisor's failed check is the CLI's failure, with the reason, and in status.
    offering
        .cdn
        .fault("/stable/latest.json", Fault::Status(500));
    let out = aihummer(&only_socket, &["update", "--check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("500"),
        "{}",
        text(&out)
    );
    let status = supervisor.status().await.expect("status");
    let last = status["update"]["last_result"].as_str().unwrap_or_default();
    assert!(last.starts_with("check failed"), "{status}");
}

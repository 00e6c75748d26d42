//! What an operator watching an update sees, through the updater's own pipeline: a dead
//! CDN's error names `AIHUMMER_DOWNLOAD_BASE_URL` and its URL once, each retry is reported
//! as it happens (the supervisor turns these into progress events for `aihummer update`),
//! and a version already staged still reports its size as progress.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aihummer::install::{Layout, SMOKE_TIMEOUT, smoke_test};
use aihummer::update::{Channel, Updater, UpdaterOptions, parse_base_url};
use aihummer_tests::binary;
use aihummer_tests::update::Cdn;
use aihummer_tests::updating::{Offering, publish_into};
use semver::Version;
use tempfile::TempDir;

fn updater(base: &str, layout: Option<Layout>) -> Updater {
    let base = parse_base_url(base, false).unwrap();
    Updater::new(UpdaterOptions {
        layout,
        check_retry: (Duration::from_millis(10), Duration::from_millis(20)),
        ..UpdaterOptions::new(base, Channel::Stable)
    })
    .unwrap()
}

#[tokio::test]
async fn a_dead_cdn_names_the_setting_and_its_url_once_and_each_retry_is_reported() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/");
    let retries = Arc::new(Mutex::new(Vec::new()));
    let run = updater(&base, None)
        .run(&Version::new(0, 0, 1), None, false, |_, _| {}, {
            let retries = retries.clone();
            move |err, delay| retries.lock().unwrap().push((err.to_string(), delay))
        })
        .await;
    let err = run.checked.unwrap_err().to_string();
    assert!(err.contains("AIHUMMER_DOWNLOAD_BASE_URL"), "{err}");
    let url = format!("http://127.0.0.1:{port}/stable/latest.json");
    assert_eq!(err.matches(&url).count(), 1, "the URL once: {err}");
    let retries = retries.lock().unwrap();
    assert_eq!(
        retries.len(),
        2,
        "two retries before giving up: {retries:?}"
    );
    assert!(retries.iter().all(|(e, _)| e.contains(&url)), "{retries:?}");
    assert!(retries[0].1 < retries[1].1, "backing off: {retries:?}");
}

#[tokio::test]
async fn a_version_already_staged_reports_its_whole_size_as_progress() {
    let dir = TempDir::new().unwrap();
    let gateway = binary("aihummer-gateway");
    let version = smoke_test(&gateway, None, SMOKE_TIMEOUT).await.unwrap();
    let cdn_dir = dir.path().join("cdn");
    publish_into(&cdn_dir, &gateway, &version.to_string()).await;
    let cdn = Cdn::start(&cdn_dir).await;
    let layout = Layout::new(dir.path().join("state"));
    let size = std::fs::metadata(&gateway).unwrap().len();
    for attempt in ["download", "already staged"] {
        let mut seen = Vec::new();
        let run = updater(&cdn.base_url(), Some(layout.clone()))
            .run(
                &Version::new(0, 0, 1),
                None,
                true,
                |done, total| seen.push((done, total)),
                |_, _| {},
            )
            .await;
        let (_, staged) = run.staged.expect("a stage");
        staged.expect("staged");
        assert_eq!(seen.last(), Some(&(size, size)), "{attempt}: {seen:?}");
    }
    let artifact = Offering::artifact_path(&version.to_string());
    let downloads = cdn.hits().iter().filter(|h| h.path == artifact).count();
    assert_eq!(downloads, 1, "the second stage downloaded nothing");
}

//! The release channel against freeze, replay, bad luck and endless data, through the
//! updater's own pipeline (`aihummer::update::Updater`) and the CLIs, against a loopback
//! CDN serving a layout written by the publisher:
//!
//! - a replayed older signed manifest is refused, also by a restarted updater (the newest
//!   accepted `published_at` lives in `state.json`);
//! - a download corrupted once is fetched again past the caches and installed;
//! - a smoke test slow once is retried with a longer timeout, and a slow one is never the
//!   release's fault;
//! - a manifest announcing more than the size cap is refused before any download;
//! - `aihummer update --check` on a node ahead of its channel is up to date (exit 0);
//! - `aihummer run` in `apply` mode without a key refuses to start;
//! - `aihummer-publish` writes `expires` by default, and a huge lifetime is an error.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use aihummer::install::{Layout, SMOKE_TIMEOUT, smoke_test};
use aihummer::publish::{self, Release, SigningKey, generate_keypair};
use aihummer::update::decide::Refusal;
use aihummer::update::manifest::{self, TARGET};
use aihummer::update::{
    Channel, Checked, TrustedKeys, Updater, UpdaterError, UpdaterOptions as Options, parse_base_url,
};
use aihummer_tests::binary;
use aihummer_tests::supervisor::install_script;
use aihummer_tests::update::{Cdn, Fault};
use aihummer_tests::updating::{Offering, aihummer, fake_gateway};
use semver::Version;
use tempfile::TempDir;

const MANIFEST: &str = "/stable/latest.json";
const SIGNATURE: &str = "/stable/latest.json.minisig";

/// The version below every published one, so each is an update.
fn old() -> Version {
    Version::new(0, 0, 1)
}

fn release(binary: &Path, version: &Version, out: &Path) -> Release {
    Release {
        binary: binary.to_path_buf(),
        version: version.clone(),
        channel: Channel::Stable,
        target: TARGET.to_string(),
        out: out.to_path_buf(),
        published_at: SystemTime::now(),
        expires_in: Some(Duration::from_secs(3600)),
        min_version: None,
        notes_url: None,
        rollout: None,
        key: None,
        verify_binary: true,
    }
}

/// An updater for `cdn` with `layout`, adjusted by `adjust`.
fn updater(cdn: &Cdn, layout: Option<&Layout>, adjust: impl FnOnce(&mut Options)) -> Updater {
    let base = parse_base_url(&cdn.base_url(), false).unwrap();
    let mut options = Options {
        layout: layout.cloned(),
        ..Options::new(base, Channel::Stable)
    };
    adjust(&mut options);
    Updater::new(options).unwrap()
}

async fn gateway_version(bin: &Path) -> Version {
    smoke_test(bin, None, SMOKE_TIMEOUT).await.unwrap()
}

#[tokio::test]
async fn a_replayed_old_signed_manifest_is_refused_also_after_a_restart() {
    let dir = TempDir::new().unwrap();
    let keys = generate_keypair(None).unwrap();
    let key_file = dir.path().join("release.key");
    std::fs::write(&key_file, &keys.secret_key).unwrap();
    let gateway = binary("aihummer-gateway");
    let version = gateway_version(&gateway).await;
    let signed = |published_at: SystemTime, out: &Path| {
        let mut r = release(&gateway, &version, out);
        r.published_at = published_at;
        r.key = Some(SigningKey {
            path: key_file.clone(),
            password: None,
        });
        r
    };
    // Yesterday's manifest, validly signed, kept by an attacker.
    let old_tree = dir.path().join("old");
    let day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
    publish::publish(&signed(day_ago, &old_tree)).await.unwrap();
    let replay = std::fs::read(old_tree.join("stable/latest.json")).unwrap();
    let replay_sig = std::fs::read(old_tree.join("stable/latest.json.minisig")).unwrap();
    // Today's manifest on the CDN.
    let cdn_dir = dir.path().join("cdn");
    publish::publish(&signed(SystemTime::now(), &cdn_dir))
        .await
        .unwrap();
    let cdn = Cdn::start(&cdn_dir).await;
    let layout = Layout::new(dir.path().join("state"));
    let pinned = TrustedKeys::parse(&keys.public_key).unwrap();
    let with_key = |o: &mut Options| o.key = Some(pinned.clone());

    let first = updater(&cdn, Some(&layout), with_key);
    assert!(matches!(
        first.check(&old(), None).await.unwrap(),
        Checked::Available(_)
    ));
    cdn.fault(MANIFEST, Fault::Replace(replay));
    cdn.fault(SIGNATURE, Fault::Replace(replay_sig));
    let replayed = |checked: Checked| match checked {
        Checked::Refused(refusal @ Refusal::Replayed { .. }) => refusal.to_string(),
        other => panic!("a replayed manifest was not refused: {other:?}"),
    };
    let reason = replayed(first.check(&old(), None).await.unwrap());
    assert!(
        reason.ends_with("refusing a replayed old manifest"),
        "{reason}"
    );
    // A restarted supervisor remembers through state.json.
    let restarted = updater(&cdn, Some(&layout), with_key);
    replayed(restarted.check(&old(), None).await.unwrap());
    let state = layout.load_state().unwrap();
    assert!(state.published_at("stable").is_some(), "{state:?}");
    // Without an install dir the process remembers.
    let cdn2 = Cdn::start(&cdn_dir).await;
    let memory = updater(&cdn2, None, with_key);
    assert!(matches!(
        memory.check(&old(), None).await.unwrap(),
        Checked::Available(_)
    ));
    cdn2.fault(
        MANIFEST,
        Fault::Replace(std::fs::read(old_tree.join("stable/latest.json")).unwrap()),
    );
    cdn2.fault(
        SIGNATURE,
        Fault::Replace(std::fs::read(old_tree.join("stable/latest.json.minisig")).unwrap()),
    );
    replayed(memory.check(&old(), None).await.unwrap());
}

#[tokio::test]
async fn a_download_corrupted_once_is_fetched_again_past_the_caches_and_installed() {
    let dir = TempDir::new().unwrap();
    let gateway = binary("aihummer-gateway");
    let version = gateway_version(&gateway).await;
    let cdn_dir = dir.path().join("cdn");
    publish::publish(&release(&gateway, &version, &cdn_dir))
        .await
        .unwrap();
    let cdn = Cdn::start(&cdn_dir).await;
    let artifact = format!("/stable/{version}/{}", publish::artifact_name(TARGET));
    let mut corrupt = std::fs::read(&gateway).unwrap();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x01;
    cdn.fault_once(&artifact, Fault::Replace(corrupt));
    let layout = Layout::new(dir.path().join("state"));
    let run = updater(&cdn, Some(&layout), |_| {})
        .run(&old(), None, true, |_, _| {}, |_, _| {})
        .await;
    let (staged_version, staged) = run.staged.expect("a stage");
    let path = staged.expect("installed after the fresh download");
    assert_eq!(staged_version, version);
    assert_eq!(gateway_version(&path).await, version);
    let hits: Vec<_> = cdn
        .hits()
        .into_iter()
        .filter(|h| h.path == artifact)
        .collect();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].cache_control, None);
    assert_eq!(hits[1].cache_control.as_deref(), Some("no-cache"));
    assert!(
        hits[1]
            .query
            .as_deref()
            .is_some_and(|q| q.starts_with("aihummer-fresh=")),
        "{hits:?}"
    );
}

#[tokio::test]
async fn a_smoke_test_slow_once_is_retried_and_a_slow_one_is_not_the_releases_fault() {
    let dir = TempDir::new().unwrap();
    let marker = dir.path().join("answered-slowly-once");
    // Slow on its first `--version` only, like a binary on a host busy for a moment.
    let slow_once = dir.path().join("slow-once");
    install_script(
        &slow_once,
        &format!(
            "if [ ! -e {m} ]; then : > {m}; sleep 3; fi\necho 'aihummer-gateway 1.1.0'",
            m = marker.display()
        ),
    );
    let cdn_dir = dir.path().join("cdn");
    let mut r = release(&slow_once, &Version::new(1, 1, 0), &cdn_dir);
    r.verify_binary = false;
    publish::publish(&r).await.unwrap();
    let cdn = Cdn::start(&cdn_dir).await;
    let layout = Layout::new(dir.path().join("state"));
    let run = updater(&cdn, Some(&layout), |o| {
        o.smoke_timeout = Duration::from_millis(500);
        o.smoke_retry_timeout = Duration::from_secs(30);
    })
    .run(&old(), None, true, |_, _| {}, |_, _| {})
    .await;
    let (_, staged) = run.staged.expect("a stage");
    let path = staged.expect("installed on the retry with the longer timeout");
    assert!(path.is_file() && marker.exists());

    // Always slow: reported as a timeout, which does not blame (quarantine) the release.
    let always_slow = dir.path().join("always-slow");
    install_script(&always_slow, "sleep 3\necho 'aihummer-gateway 1.2.0'");
    let mut r = release(&always_slow, &Version::new(1, 2, 0), &cdn_dir);
    r.verify_binary = false;
    publish::publish(&r).await.unwrap();
    let run = updater(&cdn, Some(&layout), |o| {
        o.smoke_timeout = Duration::from_millis(200);
        o.smoke_retry_timeout = Duration::from_millis(400);
    })
    .run(&old(), None, true, |_, _| {}, |_, _| {})
    .await;
    let err = run.staged.expect("a stage").1.unwrap_err();
    assert!(err.to_string().contains("did not answer within"), "{err}");
    assert!(!err.blames_release(), "{err}");
}

#[tokio::test]
async fn a_manifest_announcing_more_than_the_size_cap_is_refused_before_any_download() {
    let dir = TempDir::new().unwrap();
    let gateway = binary("aihummer-gateway");
    let version = gateway_version(&gateway).await;
    let cdn_dir = dir.path().join("cdn");
    publish::publish(&release(&gateway, &version, &cdn_dir))
        .await
        .unwrap();
    let cdn = Cdn::start(&cdn_dir).await;
    let layout = Layout::new(dir.path().join("state"));
    let run = updater(&cdn, Some(&layout), |o| o.fetch.artifact_cap = 1024)
        .run(&old(), None, true, |_, _| {}, |_, _| {})
        .await;
    let err = run.checked.unwrap_err();
    assert!(
        matches!(err, UpdaterError::ArtifactTooLarge { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("(AIHUMMER_UPDATE_MAX_SIZE)"),
        "{err}"
    );
    assert!(run.staged.is_none());
    assert!(
        cdn.hits().iter().all(|h| h.path == MANIFEST),
        "nothing but the manifest was asked for: {:?}",
        cdn.hits()
    );
}

#[tokio::test]
async fn update_check_on_a_node_ahead_of_its_channel_is_up_to_date_with_both_versions() {
    let gateway = binary("aihummer-gateway");
    let offered = gateway_version(&gateway).await;
    let offering = Offering::start(&gateway, &offered.to_string()).await;
    let dir = TempDir::new().unwrap();
    let ahead = fake_gateway(dir.path(), "99.0.0", "exit 3");
    let socket = dir.path().join("nobody.sock");
    let base = offering.base_url();
    let env = [
        ("AIHUMMER_SUPERVISOR_SOCKET", socket.to_str().unwrap()),
        ("AIHUMMER_DOWNLOAD_BASE_URL", base.as_str()),
        ("AIHUMMER_GATEWAY_BIN", ahead.to_str().unwrap()),
    ];
    let out = aihummer(&env, &["update", "--check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains(&format!(
            "up to date: 99.0.0 runs; the channel offers {offered}"
        )),
        "{stdout}"
    );
    let out = aihummer(&env, &["update", "--check", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["result"], "up_to_date", "{doc}");
    assert_eq!(doc["running"], "99.0.0", "{doc}");
    assert_eq!(doc["offered"], offered.to_string(), "{doc}");
}

#[tokio::test]
async fn apply_mode_without_a_key_refuses_to_start() {
    let dir = TempDir::new().unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("s.sock");
    let env = [
        ("AIHUMMER_SUPERVISOR_SOCKET", socket.to_str().unwrap()),
        ("AIHUMMER_STATE_DIR", state.to_str().unwrap()),
        ("AIHUMMER_GATEWAY_ADDR", "127.0.0.1:0"),
        ("AIHUMMER_AUTO_UPDATE", "apply"),
        (
            "AIHUMMER_DOWNLOAD_BASE_URL",
            "https://releases.example.com/",
        ),
    ];
    let child = tokio::process::Command::new(binary("aihummer"))
        .arg("run")
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("refused at startup, not left running")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("AIHUMMER_UPDATE_PUBKEY")
            && stderr.contains("AIHUMMER_UPDATE_ALLOW_UNSIGNED=true"),
        "{stderr}"
    );
    assert!(!state.join("versions").exists(), "nothing was installed");
}

#[tokio::test]
async fn the_publisher_writes_expires_by_default_and_refuses_a_huge_lifetime() {
    let dir = TempDir::new().unwrap();
    let gateway = binary("aihummer-gateway");
    let version = gateway_version(&gateway).await.to_string();
    let publish_cli = |extra: &'static [&'static str]| {
        let out = dir.path().join("cdn");
        let gateway = gateway.clone();
        let version = version.clone();
        async move {
            tokio::process::Command::new(binary("aihummer-publish"))
                .args(["release", "--version", &version, "--binary"])
                .arg(&gateway)
                .arg("--out")
                .arg(&out)
                .args(extra)
                .output()
                .await
                .unwrap()
        }
    };
    let out = publish_cli(&[]).await;
    assert!(out.status.success(), "{out:?}");
    let m = manifest::parse(&std::fs::read(dir.path().join("cdn/stable/latest.json")).unwrap())
        .unwrap();
    let lifetime = m.expires.expect("expires by default") - m.published_at;
    assert_eq!(lifetime.whole_days(), 14);

    let out = publish_cli(&["--expires-in", "20000years"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error, not a panic: {stderr}"
    );
    assert!(stderr.contains("beyond the year 9999"), "{stderr}");

    let out = publish_cli(&["--no-expiry"]).await;
    assert!(out.status.success(), "{out:?}");
    let m = manifest::parse(&std::fs::read(dir.path().join("cdn/stable/latest.json")).unwrap())
        .unwrap();
    assert_eq!(m.expires, None);
}

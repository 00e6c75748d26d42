//! The self-update pipeline end to end, short of the handoff: a real HTTP CDN on loopback
//! serving a layout written by the publisher from the real `aihummer-gateway`, and the
//! supervisor's building blocks (fetch, signature, manifest, decide, stage, install)
//! driven in the order the supervisor will drive them.
//!
//! Every refusal is checked for a clear reason and for an install dir with nothing in
//! `versions/` and nothing but the lock in `staging/`.
//!
//! The good path publishes the built gateway as the version it reports and pretends the
//! running version is older, so no second build is needed; a binary "reporting the wrong
//! version" is the same gateway published under another version. One ignored test uses a
//! build stamped `1.1.0` (see `aihummer_tests::update::stamped_gateway`: minutes the
//! first time, seconds afterwards).
//!
//! One file on purpose (it runs past 500 lines): the cases follow the pipeline's order and
//! share one CDN fixture.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aihummer::install::{
    KEEP_VERSIONS, Layout, SMOKE_TIMEOUT, State, install_bootstrap, smoke_test,
};
use aihummer::publish::{self, Release, SigningKey, generate_keypair};
use aihummer::update::decide::{Decision, Inputs, decide};
use aihummer::update::fetch::{FetchOptions, Fetcher, ManifestFetch};
use aihummer::update::manifest::{self, TARGET};
use aihummer::update::signature::verify;
use aihummer::update::stage::{Attempt, stage};
use aihummer::update::{Channel, TrustedKeys, parse_base_url};
use aihummer_tests::binary;
use aihummer_tests::update::{Cdn, Fault, stamped_gateway};
use semver::Version;
use tempfile::TempDir;
use url::Url;

const MANIFEST: &str = "/stable/latest.json";

/// A CDN tree, its server and an empty install dir.
struct Fixture {
    dir: TempDir,
    cdn: Cdn,
    layout: Layout,
    /// The version the published gateway reports.
    version: Version,
}

/// What the pipeline is run with.
struct Run {
    running: Version,
    key: Option<TrustedKeys>,
    fetch: FetchOptions,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            running: Version::new(0, 0, 1),
            key: None,
            fetch: FetchOptions {
                // Generous: the suites share two cores with each other.
                connect_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(10),
                manifest_timeout: Duration::from_secs(20),
                ..FetchOptions::default()
            },
        }
    }
}

async fn gateway_version(bin: &Path) -> Version {
    smoke_test(bin, None, SMOKE_TIMEOUT)
        .await
        .expect("the built gateway answers --version")
}

impl Fixture {
    /// Publishes the built gateway as its own version on `stable`, unsigned, and serves it.
    async fn new() -> Fixture {
        Self::with(|_| {}).await
    }

    /// Like [`Fixture::new`], letting the test adjust the release first.
    async fn with(adjust: impl FnOnce(&mut Release)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = binary("aihummer-gateway");
        let version = gateway_version(&bin).await;
        let mut release = Release {
            binary: bin,
            version: version.clone(),
            channel: Channel::Stable,
            target: TARGET.to_string(),
            out: dir.path().join("cdn"),
            published_at: SystemTime::now(),
            expires_in: Some(Duration::from_secs(3600)),
            min_version: None,
            notes_url: None,
            rollout: None,
            key: None,
            verify_binary: true,
        };
        adjust(&mut release);
        let version = release.version.clone();
        publish::publish(&release).await.expect("publish");
        let cdn = Cdn::start(&dir.path().join("cdn")).await;
        let layout = Layout::new(dir.path().join("state"));
        Fixture {
            dir,
            cdn,
            layout,
            version,
        }
    }

    fn artifact_path(&self) -> String {
        format!("/stable/{}/aihummer-gateway-{TARGET}", self.version)
    }

    fn artifact_bytes(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("cdn").join(&self.artifact_path()[1..])).unwrap()
    }

    fn manifest_json(&self) -> serde_json::Value {
        let path = self.dir.path().join("cdn/stable/latest.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    async fn update(&self, run: &Run) -> Result<Option<PathBuf>, String> {
        update_once(&self.cdn.base_url(), &self.layout, run).await
    }

    /// Runs the pipeline expecting a refusal whose message contains `reason`, and checks
    /// that nothing was left behind.
    async fn refused(&self, run: &Run, reason: &str) -> String {
        let err = match self.update(run).await {
            Ok(staged) => panic!("expected a refusal ({reason}), staged {staged:?}"),
            Err(err) => err,
        };
        eprintln!("refused: {err}");
        assert!(err.contains(reason), "expected {reason:?} in: {err}");
        assert_nothing_left(&self.layout);
        err
    }
}

/// The supervisor's update check and stage, step by step as docs/architecture.md's handoff lists
/// them; any error is the message an operator would read.
async fn update_once(base: &str, layout: &Layout, run: &Run) -> Result<Option<PathBuf>, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let base = parse_base_url(base, false).map_err(|e| text(&e))?;
    let fetcher = Fetcher::new(run.fetch.clone()).map_err(|e| text(&e))?;
    let fetched = match fetcher
        .fetch_manifest(&base, Channel::Stable, None, run.key.is_some())
        .await
        .map_err(|e| text(&e))?
    {
        ManifestFetch::Fetched(f) => f,
        ManifestFetch::NotModified => return Ok(None),
    };
    verify(
        run.key.as_ref(),
        &fetched.body,
        fetched.signature.as_deref(),
    )
    .map_err(|e| text(&e))?;
    let manifest = manifest::parse(&fetched.body).map_err(|e| text(&e))?;
    let artifact = manifest.artifact_for(TARGET).map_err(|e| text(&e))?;
    let state = layout.load_state().map_err(|e| text(&e))?;
    let version = match decide(Inputs {
        running: &run.running,
        manifest: &manifest,
        channel: Channel::Stable,
        highest_trusted: state.highest_trusted.as_ref(),
        last_published_at: state.published_at("stable"),
        quarantined: &state.quarantined,
        requested: None,
        cohort: None,
        now: SystemTime::now(),
    }) {
        Decision::UpToDate | Decision::Ahead { .. } | Decision::OutsideRollout { .. } => {
            return Ok(None);
        }
        Decision::Refused(reason) => return Err(reason.to_string()),
        Decision::Update(version) => version,
    };
    let url = fetcher
        .artifact_url(&fetched.url, artifact)
        .map_err(|e| text(&e))?;
    stage(
        layout,
        &fetcher,
        (&version, &url, artifact),
        Attempt {
            smoke_timeout: SMOKE_TIMEOUT,
            fresh: false,
        },
        |_| {},
    )
    .await
    .map(Some)
    .map_err(|e| text(&e))
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn assert_nothing_left(layout: &Layout) {
    assert_eq!(
        entries(&layout.versions_dir()),
        Vec::<String>::new(),
        "versions/"
    );
    assert_eq!(
        entries(&layout.staging_dir()),
        Vec::<String>::new(),
        "staging/"
    );
}

#[tokio::test]
async fn a_published_gateway_is_staged_into_its_version_dir_and_switched_to() {
    let f = Fixture::new().await;
    let staged = f.update(&Run::default()).await.unwrap().expect("an update");
    assert_eq!(staged, f.layout.binary(&f.version));
    assert_eq!(gateway_version(&staged).await, f.version);
    assert_eq!(std::fs::read(&staged).unwrap(), f.artifact_bytes());
    assert_eq!(entries(&f.layout.staging_dir()), Vec::<String>::new());
    let mut state = State::default();
    f.layout.switch(&mut state, &f.version).unwrap();
    assert_eq!(f.layout.current().unwrap(), Some(f.version.clone()));
    assert_eq!(
        f.layout.load_state().unwrap().highest_trusted,
        Some(f.version.clone())
    );
    // One version installed: nothing to prune, and never the current one.
    assert_eq!(
        f.layout.prune(KEEP_VERSIONS).unwrap(),
        Vec::<Version>::new()
    );
    // A repeated check with the version installed and running is up to date.
    let run = Run {
        running: f.version.clone(),
        ..Run::default()
    };
    assert_eq!(f.update(&run).await.unwrap(), None);
}

#[tokio::test]
async fn a_retried_stage_of_an_installed_version_reuses_it_without_downloading() {
    let f = Fixture::new().await;
    f.update(&Run::default()).await.unwrap().expect("an update");
    let downloads = || {
        f.cdn
            .hits()
            .iter()
            .filter(|h| h.path == f.artifact_path())
            .count()
    };
    assert_eq!(downloads(), 1);
    f.update(&Run::default())
        .await
        .unwrap()
        .expect("staged again");
    assert_eq!(downloads(), 1);
}

#[tokio::test]
async fn a_signed_manifest_verifies_under_the_pinned_key_and_stages() {
    let keys = generate_keypair(None).unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("release.key");
    std::fs::write(&key_file, &keys.secret_key).unwrap();
    let f = Fixture::with(|r| {
        r.key = Some(SigningKey {
            path: key_file.clone(),
            password: None,
        })
    })
    .await;
    let run = Run {
        key: Some(TrustedKeys::parse(&keys.public_key).unwrap()),
        ..Run::default()
    };
    assert!(f.update(&run).await.unwrap().is_some());
}

#[tokio::test]
async fn a_sha256_mismatch_is_refused() {
    let f = Fixture::new().await;
    let mut bytes = f.artifact_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    f.cdn.fault(&f.artifact_path(), Fault::Replace(bytes));
    f.refused(&Run::default(), "sha256 mismatch for").await;
}

#[tokio::test]
async fn a_download_cut_short_is_refused() {
    let f = Fixture::new().await;
    f.cdn.fault(&f.artifact_path(), Fault::Cut(1_000_000));
    f.refused(&Run::default(), "broke off after").await;
}

#[tokio::test]
async fn an_interrupted_stage_leaves_no_partial_file_and_can_be_retried() {
    let f = Fixture::new().await;
    f.cdn.fault(&f.artifact_path(), Fault::Stall(4_000_000));
    // The supervisor gives up on (drops) a stage, as on shutdown: the half-written file
    // goes with it.
    let run = Run::default();
    // Boxed, so that dropping it below really drops the stage (a pinned local would live
    // to the end of the scope).
    let mut update = Box::pin(f.update(&run));
    tokio::select! {
        result = &mut update => panic!("a stalled download cannot finish: {result:?}"),
        partial = aihummer_tests::wait_for(Duration::from_secs(10), "a partial download", || async {
            entries(&f.layout.staging_dir()).into_iter().find(|n| n.ends_with(".part"))
        }) => eprintln!("partial download in staging/: {partial}"),
    }
    drop(update);
    assert_nothing_left(&f.layout);
    // A file left by a killed process is removed by the next stage, which succeeds.
    let stale = f.layout.staging_dir().join("aihummer-gateway.killed.part");
    std::fs::write(&stale, b"half a binary").unwrap();
    let f2 = Fixture::new().await;
    let staged = update_once(&f2.cdn.base_url(), &f.layout, &Run::default())
        .await
        .unwrap()
        .expect("an update");
    assert!(staged.is_file());
    assert!(!stale.exists());
}

#[tokio::test]
async fn a_truncated_artifact_is_refused() {
    let f = Fixture::new().await;
    let bytes = f.artifact_bytes();
    let half = bytes[..bytes.len() / 2].to_vec();
    f.cdn.fault(&f.artifact_path(), Fault::Replace(half));
    let err = f.refused(&Run::default(), "ended after").await;
    assert!(err.contains("bytes the manifest announces"), "{err}");
}

#[tokio::test]
async fn an_oversized_artifact_is_refused() {
    let f = Fixture::new().await;
    let mut bytes = f.artifact_bytes();
    bytes.extend_from_slice(b"trailing garbage");
    f.cdn.fault(&f.artifact_path(), Fault::Replace(bytes));
    f.refused(&Run::default(), "sent more than the").await;
}

#[tokio::test]
async fn a_binary_reporting_another_version_is_refused() {
    let f = Fixture::with(|r| {
        r.version = Version::new(99, 0, 0);
        r.verify_binary = false;
    })
    .await;
    let err = f
        .refused(&Run::default(), "not `aihummer-gateway 99.0.0`")
        .await;
    assert!(
        err.contains("the binary for 99.0.0 reports \"aihummer-gateway "),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let f = Fixture::new().await;
    f.cdn.fault(
        MANIFEST,
        Fault::Replace(b"{\"schema\": 1, \"channel\": ".to_vec()),
    );
    f.refused(&Run::default(), "latest.json is not valid JSON")
        .await;
}

#[tokio::test]
async fn a_missing_field_is_refused_by_name() {
    let f = Fixture::new().await;
    let mut json = f.manifest_json();
    json["artifacts"][TARGET]
        .as_object_mut()
        .unwrap()
        .remove("sha256");
    f.cdn
        .fault(MANIFEST, Fault::Replace(json.to_string().into_bytes()));
    f.refused(
        &Run::default(),
        &format!("missing field `artifacts.{TARGET}.sha256`"),
    )
    .await;
}

#[tokio::test]
async fn an_expired_manifest_is_refused() {
    let f = Fixture::with(|r| {
        r.published_at = SystemTime::now() - Duration::from_secs(7200);
        r.expires_in = Some(Duration::from_secs(3600));
    })
    .await;
    f.refused(
        &Run::default(),
        "channel stable is stale: its latest.json expired at",
    )
    .await;
}

#[tokio::test]
async fn a_manifest_older_than_the_running_version_installs_nothing() {
    let f = Fixture::new().await;
    let run = Run {
        running: Version::new(99, 0, 0),
        ..Run::default()
    };
    assert_eq!(
        f.update(&run).await,
        Ok(None),
        "the node is ahead: up to date"
    );
    assert_nothing_left(&f.layout);
}

#[tokio::test]
async fn a_manifest_below_the_highest_trusted_version_is_refused() {
    let f = Fixture::new().await;
    let mut state = State::default();
    state.trust(&Version::new(50, 0, 0));
    f.layout.save_state(&state).unwrap();
    f.refused(&Run::default(), "the highest version already trusted")
        .await;
}

#[tokio::test]
async fn a_quarantined_version_is_refused() {
    let f = Fixture::new().await;
    let mut state = State::default();
    state.quarantine(&f.version, "never became ready");
    f.layout.save_state(&state).unwrap();
    f.refused(&Run::default(), "is quarantined (never became ready)")
        .await;
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let keys = generate_keypair(None).unwrap();
    let other = generate_keypair(None).unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("release.key");
    std::fs::write(&key_file, &keys.secret_key).unwrap();
    let f = Fixture::with(|r| {
        r.key = Some(SigningKey {
            path: key_file.clone(),
            password: None,
        })
    })
    .await;
    // The manifest changed after signing: one byte more.
    let mut body = serde_json::to_vec_pretty(&f.manifest_json()).unwrap();
    body.extend_from_slice(b"\n\n");
    f.cdn.fault(MANIFEST, Fault::Replace(body));
    let run = Run {
        key: Some(TrustedKeys::parse(&keys.public_key).unwrap()),
        ..Run::default()
    };
    f.refused(&run, "does not verify over latest.json").await;
    // The right bytes, signed by a key that is not the pinned one.
    let f = Fixture::with(|r| {
        r.key = Some(SigningKey {
            path: key_file.clone(),
            password: None,
        })
    })
    .await;
    let run = Run {
        key: Some(TrustedKeys::parse(&other.public_key).unwrap()),
        ..Run::default()
    };
    f.refused(&run, "made by another key").await;
}

#[tokio::test]
async fn a_missing_signature_is_refused_when_a_key_is_set() {
    let keys = generate_keypair(None).unwrap();
    let f = Fixture::new().await;
    let run = Run {
        key: Some(TrustedKeys::parse(&keys.public_key).unwrap()),
        ..Run::default()
    };
    f.refused(&run, "refusing an unsigned manifest").await;
}

#[tokio::test]
async fn a_cdn_answering_500_is_refused() {
    let f = Fixture::new().await;
    f.cdn.fault(MANIFEST, Fault::Status(500));
    f.refused(&Run::default(), "answered 500 Internal Server Error")
        .await;
    let f = Fixture::new().await;
    f.cdn.fault(&f.artifact_path(), Fault::Status(503));
    f.refused(&Run::default(), "answered 503 Service Unavailable")
        .await;
}

#[tokio::test]
async fn a_hanging_cdn_times_out() {
    let quick = || Run {
        fetch: FetchOptions {
            read_timeout: Duration::from_millis(300),
            // Far longer than the read timeout, so the test shows which one fired.
            manifest_timeout: Duration::from_secs(30),
            ..Run::default().fetch
        },
        ..Run::default()
    };
    let f = Fixture::new().await;
    f.cdn.fault(MANIFEST, Fault::Hang);
    let started = Instant::now();
    f.refused(&quick(), "timed out").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let f = Fixture::new().await;
    f.cdn.fault(&f.artifact_path(), Fault::Hang);
    f.refused(&quick(), "timed out").await;
}

#[tokio::test]
async fn an_artifact_for_another_platform_only_is_refused() {
    let f = Fixture::with(|r| {
        r.target = "riscv64gc-unknown-linux-gnu".into();
        r.verify_binary = false;
    })
    .await;
    f.refused(
        &Run::default(),
        &format!("no artifact for this platform {TARGET}"),
    )
    .await;
}

#[tokio::test]
async fn an_oversized_manifest_is_refused() {
    let f = Fixture::new().await;
    f.cdn
        .fault(MANIFEST, Fault::Replace(vec![b' '; 2 * 1024 * 1024]));
    f.refused(&Run::default(), "larger than the 1048576-byte cap")
        .await;
}

#[tokio::test]
async fn an_unchanged_manifest_is_not_modified_on_a_conditional_get() {
    let f = Fixture::new().await;
    let base = Url::parse(&f.cdn.base_url()).unwrap();
    let fetcher = Fetcher::new(Run::default().fetch).unwrap();
    let ManifestFetch::Fetched(first) = fetcher
        .fetch_manifest(&base, Channel::Stable, None, false)
        .await
        .unwrap()
    else {
        panic!("the first fetch has no ETag to match");
    };
    let etag = first.etag.expect("the CDN sends an ETag");
    let again = fetcher
        .fetch_manifest(&base, Channel::Stable, Some(&etag), false)
        .await
        .unwrap();
    assert!(matches!(again, ManifestFetch::NotModified));
    let last = f.cdn.hits().pop().unwrap();
    assert_eq!(last.if_none_match.as_deref(), Some(etag.as_str()));
}

#[tokio::test]
async fn a_file_mirror_stages_like_a_cdn() {
    let f = Fixture::new().await;
    let base = Url::from_directory_path(f.dir.path().join("cdn")).unwrap();
    let staged = update_once(base.as_str(), &f.layout, &Run::default())
        .await
        .unwrap()
        .expect("an update");
    assert_eq!(gateway_version(&staged).await, f.version);
}

#[tokio::test]
async fn the_bootstrap_gateway_is_installed_under_its_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let bin = binary("aihummer-gateway");
    let version = install_bootstrap(&layout, &bin, SMOKE_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(version, gateway_version(&bin).await);
    assert_eq!(layout.installed().unwrap(), vec![version.clone()]);
    assert_eq!(gateway_version(&layout.binary(&version)).await, version);
}

/// Builds a real second gateway stamped 1.1.0 (see `stamped_gateway`).
#[tokio::test]
async fn a_build_stamped_1_1_0_is_published_and_staged_as_1_1_0() {
    let bin = stamped_gateway("1.1.0");
    let f = Fixture::with(|r| {
        r.binary = bin.clone();
        r.version = Version::new(1, 1, 0);
    })
    .await;
    let run = Run {
        running: Version::new(1, 0, 0),
        ..Run::default()
    };
    let staged = f.update(&run).await.unwrap().expect("1.1.0 is newer");
    assert_eq!(staged, f.layout.binary(&Version::new(1, 1, 0)));
    assert_eq!(gateway_version(&staged).await, Version::new(1, 1, 0));
}

/// Download throughput on loopback for a ~20 MB artifact, against `curl` for the same
/// file when curl is installed. Prints the numbers; asserts only that it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_throughput_on_loopback_is_measured_against_curl() {
    const SIZE: usize = 20 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::create_dir_all(dir.path().join("cdn/stable")).unwrap();
    std::fs::write(dir.path().join("cdn/stable/blob"), &blob).unwrap();
    let cdn = Cdn::start(&dir.path().join("cdn")).await;
    let url = Url::parse(&format!("{}stable/blob", cdn.base_url())).unwrap();
    let fetcher = Fetcher::new(Run::default().fetch).unwrap();
    let out_path = dir.path().join("out");
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let mut out = tokio::io::BufWriter::with_capacity(
            1024 * 1024,
            tokio::fs::File::create(&out_path).await.unwrap(),
        );
        let started = Instant::now();
        let done = fetcher
            .download(&url, SIZE as u64, false, &mut out, |_| {})
            .await
            .unwrap();
        best = best.min(started.elapsed());
        assert_eq!(done.size, SIZE as u64);
    }
    let mib = SIZE as f64 / (1024.0 * 1024.0);
    eprintln!(
        "aihummer download: {mib:.0} MiB in {best:?} = {:.0} MiB/s (hashing and writing to disk)",
        mib / best.as_secs_f64()
    );
    let mut curl_best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let status = tokio::process::Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&out_path)
            .arg(url.as_str())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => curl_best = curl_best.min(started.elapsed()),
            _ => {
                eprintln!("curl is not available; no comparison");
                return;
            }
        }
    }
    eprintln!(
        "curl:              {mib:.0} MiB in {curl_best:?} = {:.0} MiB/s (writing to disk)",
        mib / curl_best.as_secs_f64()
    );
}

#[tokio::test]
async fn the_publish_cli_writes_a_signed_layout_the_updater_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let publish_bin = binary("aihummer-publish");
    let keygen = tokio::process::Command::new(&publish_bin)
        .args(["keygen", "--unencrypted", "--out-dir"])
        .arg(dir.path().join("keys"))
        .output()
        .await
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let gateway = binary("aihummer-gateway");
    let version = gateway_version(&gateway).await;
    let release = tokio::process::Command::new(&publish_bin)
        .args(["release", "--channel", "stable", "--expires-in", "1h"])
        .arg("--version")
        .arg(version.to_string())
        .arg("--binary")
        .arg(&gateway)
        .arg("--out")
        .arg(dir.path().join("cdn"))
        .arg("--secret-key")
        .arg(dir.path().join("keys/aihummer-release.key"))
        .output()
        .await
        .unwrap();
    assert!(release.status.success(), "{release:?}");
    let stdout = String::from_utf8_lossy(&release.stdout);
    assert!(stdout.contains("latest.json.minisig"), "{stdout}");
    let public = std::fs::read_to_string(dir.path().join("keys/aihummer-release.pub")).unwrap();
    let cdn = Cdn::start(&dir.path().join("cdn")).await;
    let layout = Layout::new(dir.path().join("state"));
    let run = Run {
        key: Some(TrustedKeys::parse(&public).unwrap()),
        ..Run::default()
    };
    let staged = update_once(&cdn.base_url(), &layout, &run)
        .await
        .unwrap()
        .expect("an update");
    assert_eq!(gateway_version(&staged).await, version);
    // A mislabelled binary is refused by the publisher itself, with its reason.
    let wrong = tokio::process::Command::new(&publish_bin)
        .args(["release", "--version", "99.0.0", "--binary"])
        .arg(&gateway)
        .arg("--out")
        .arg(dir.path().join("cdn"))
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("not a gateway of version 99.0.0"),
        "{stderr}"
    );
}

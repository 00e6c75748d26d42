//! Harness for the self-update suites: a release CDN on loopback and gateway binaries
//! stamped with another version.
//!
//! - [`Cdn`]: a static file server (axum on `127.0.0.1:0`) over a directory written by
//!   `aihummer-publish`, with `ETag`/`If-None-Match`, that a test can make misbehave per
//!   path ([`Fault`]): answer an error status, hang, cut the body short, serve other bytes;
//!   for good or for the next request only ([`Cdn::fault_once`]).
//! - [`stamped_gateway`]: `aihummer-gateway` built with `AIHUMMER_BUILD_VERSION`, for
//!   suites that need a real binary reporting another version. Its own target dir is
//!   seeded with the workspace's compiled dependencies, so a build costs seconds; parallel
//!   tests wait on a file lock.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// How the CDN misbehaves for one path.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with a short body.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// Announce the full length, send only this many bytes, then drop the connection.
    Cut(usize),
    /// Announce the full length, send this many bytes, then stall for ever.
    Stall(usize),
    /// Serve these bytes instead of the file (with their own, correct length).
    Replace(Vec<u8>),
}

/// One request the CDN saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The request path, e.g. `/stable/latest.json`.
    pub path: String,
    /// Its `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
    /// Its query string, if any.
    pub query: Option<String>,
    /// Its `Cache-Control` header, if any.
    pub cache_control: Option<String>,
}

struct CdnState {
    root: PathBuf,
    faults: Mutex<HashMap<String, Fault>>,
    once: Mutex<HashMap<String, Fault>>,
    hits: Mutex<Vec<Hit>>,
}

/// A release CDN on loopback, serving `root`; stopped when dropped.
pub struct Cdn {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<CdnState>,
    task: JoinHandle<()>,
}

impl Cdn {
    /// Serves `root` on an ephemeral loopback port.
    pub async fn start(root: &Path) -> Cdn {
        let state = Arc::new(CdnState {
            root: root.to_path_buf(),
            faults: Mutex::new(HashMap::new()),
            once: Mutex::new(HashMap::new()),
            hits: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the CDN");
        let addr = listener.local_addr().expect("CDN address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Cdn { addr, state, task }
    }

    /// The base URL to configure as `AIHUMMER_DOWNLOAD_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Makes `path` (e.g. `/stable/latest.json`) misbehave from now on.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .expect("faults")
            .insert(path.to_string(), fault);
    }

    /// Makes the next request for `path` misbehave; later ones are served normally (or
    /// with the fault set by [`Cdn::fault`]).
    pub fn fault_once(&self, path: &str, fault: Fault) {
        self.state
            .once
            .lock()
            .expect("faults")
            .insert(path.to_string(), fault);
    }

    /// Every request so far, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits").clone()
    }
}

impl Drop for Cdn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(state): State<Arc<CdnState>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.hits.lock().expect("hits").push(Hit {
        path: path.clone(),
        if_none_match: if_none_match.clone(),
        query: uri.query().map(str::to_string),
        cache_control: headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let once = state.once.lock().expect("faults").remove(&path);
    let fault = once.or_else(|| state.faults.lock().expect("faults").get(&path).cloned());
    let file = || {
        let rel = Path::new(path.trim_start_matches('/'));
        // Only plain names below the root: the test CDN must not serve the machine.
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        std::fs::read(state.root.join(rel)).ok()
    };
    let bytes = match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "injected failure\n").into_response();
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(fault @ (Fault::Cut(n) | Fault::Stall(n))) => {
            let Some(bytes) = file() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let total = bytes.len();
            let head = bytes::Bytes::from(bytes).slice(..n.min(total));
            let head = futures_util::stream::iter([Ok::<_, std::io::Error>(head)]);
            let body = if matches!(fault, Fault::Cut(_)) {
                let cut = std::io::Error::other("connection cut by the test CDN");
                Body::from_stream(head.chain(futures_util::stream::iter([Err(cut)])))
            } else {
                Body::from_stream(head.chain(futures_util::stream::pending()))
            };
            return ([(header::CONTENT_LENGTH, total.to_string())], body).into_response();
        }
        Some(Fault::Replace(bytes)) => bytes,
        None => match file() {
            Some(bytes) => bytes,
            None => return StatusCode::NOT_FOUND.into_response(),
        },
    };
    // ETags for small files (manifests, signatures) only: hashing a 30 MB debug-build
    // artifact on every request would cost the test CDN seconds.
    if bytes.len() > 1024 * 1024 {
        return bytes.into_response();
    }
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..16]);
    if if_none_match.as_deref() == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::ETAG, etag)], bytes).into_response()
}

/// The workspace root (this crate's parent).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `aihummer-gateway` built with `AIHUMMER_BUILD_VERSION=version`, copied to
/// `target/stamped/<version>/aihummer-gateway`. Every version builds in one shared target
/// dir seeded from the workspace's own, so a build recompiles just the gateway crate. A
/// copy newer than the workspace's own gateway binary was built from the current sources
/// and is reused as is.
pub fn stamped_gateway(version: &str) -> PathBuf {
    let root = workspace_root();
    stamped_build(
        version,
        &root,
        &root.join("target").join("stamped").join(version),
    )
}

/// A release whose new version adds a migration: `aihummer-gateway` built as `version`
/// from a copy of the workspace with `migrations/<name>` (containing `sql`) added, copied
/// to `target/stamped/<version>+<name>/aihummer-gateway`. The copy of the sources lives
/// under `target/stamped/src-<version>` and shares the stamped target dir, so only the
/// workspace's own crates compile again.
pub fn stamped_gateway_with_migration(version: &str, name: &str, sql: &str) -> PathBuf {
    let root = workspace_root();
    let stamped = root.join("target").join("stamped");
    let source = stamped.join(format!("src-{version}"));
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source).expect("create the source copy");
    // `cp -a` keeps modification times, so an unchanged copy does not rebuild.
    for entry in std::fs::read_dir(&root).expect("read the workspace") {
        let path = entry.expect("workspace entry").path();
        if path
            .file_name()
            .is_some_and(|n| n == "target" || n == ".git")
        {
            continue;
        }
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&path)
            .arg(&source)
            .status()
            .expect("run cp");
        assert!(status.success(), "copying {} failed", path.display());
    }
    let migration = source.join("migrations").join(name);
    std::fs::write(&migration, sql).expect("write the migration");
    stamped_build(version, &source, &stamped.join(format!("{version}+{name}")))
}

/// Builds the gateway in `source` as `version` into the shared stamped target dir and
/// copies it to `dir/aihummer-gateway`, unless a copy newer than the workspace's own
/// gateway is there already.
fn stamped_build(version: &str, source: &Path, dir: &Path) -> PathBuf {
    let root = workspace_root();
    let stamped = root.join("target").join("stamped");
    let copy = dir.join("aihummer-gateway");
    std::fs::create_dir_all(dir).expect("create the version dir");
    let lock = File::create(stamped.join(".build.lock")).expect("create the build lock");
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).expect("take the build lock");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let sources = modified(&crate::binary("aihummer-gateway"));
    if modified(&copy).is_some_and(|built| Some(built) > sources) {
        return copy;
    }
    let target = stamped.join("build");
    let seeded = target.join("debug");
    if !seeded.exists() {
        // Seeded with the workspace's own compiled dependencies, the stamped build only
        // compiles the gateway (seconds, not minutes). Best effort: whatever is missing
        // is simply compiled.
        std::fs::create_dir_all(&seeded).expect("create the stamped target dir");
        let main = crate::target_dir();
        let _ = std::process::Command::new("cp")
            .arg("-a")
            .args(["deps", ".fingerprint", "build"].map(|d| main.join(d)))
            .arg(&seeded)
            .status();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "aihummer-gateway", "--target-dir"])
        .arg(&target)
        .env("AIHUMMER_BUILD_VERSION", version)
        .current_dir(source)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the {version} gateway failed");
    let tmp = copy.with_extension("tmp");
    std::fs::copy(target.join("debug").join("aihummer-gateway"), &tmp)
        .expect("copy the stamped gateway");
    std::fs::rename(&tmp, &copy).expect("move the stamped gateway into place");
    copy
}

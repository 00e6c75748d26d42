//! The release binaries the bench runs: `aihummer` and `aihummer-gateway` from
//! `target/release` (built first; cargo makes that a no-op when they are fresh), and
//! release gateways stamped with other versions, for real upgrades through the CDN.
//!
//! The supervisor's staging smoke-tests a downloaded gateway's `--version` against the
//! manifest, so an upgrade needs a binary that was compiled under another
//! `AIHUMMER_BUILD_VERSION`. They build in their own target dir under
//! `target/bench-stamped/`, seeded from `target/release` so only the gateway crate
//! recompiles, and are kept there: a copy newer than `target/release/aihummer-gateway`
//! was built from the current sources and is reused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The versions the handoff run upgrades to, in order.
pub const STAMPS: [&str; 2] = ["1.1.0", "1.2.0"];

/// Paths of the binaries, and what building them cost.
pub struct Binaries {
    /// The supervisor and CLI.
    pub aihummer: PathBuf,
    /// The gateway built from the workspace as it is.
    pub gateway: PathBuf,
    /// Gateways stamped with [`STAMPS`], in that order.
    pub stamped: Vec<(&'static str, PathBuf)>,
    /// How long building the stamped gateways took in this run (`None`: all reused).
    pub stamp_build: Option<Duration>,
}

/// Variables `cargo run` sets for the bench about the bench's own package. Build scripts
/// (ring's, through `cc`) rerun when they change, so passed on they would make the inner
/// build recompile half the dependency tree on every run.
const PACKAGE_VARS: [&str; 8] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || PACKAGE_VARS.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds what is missing or stale and returns the paths; `gateway` replaces the
/// workspace's gateway in the scenarios that run a gateway without a supervisor.
pub fn prepare(gateway: Option<PathBuf>) -> anyhow::Result<Binaries> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "aihummer",
            "-p",
            "aihummer-gateway",
        ])
        .args(["--bin", "aihummer", "--bin", "aihummer-gateway"])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build for the release supervisor and gateway")?;
    if !status.success() {
        bail!("building the release supervisor and gateway failed: {status}");
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let release = exe
        .parent()
        .context("the bench binary has a directory")?
        .to_path_buf();
    let own = release.join("aihummer-gateway");
    let started = Instant::now();
    let mut built = false;
    let mut stamped = Vec::new();
    for version in STAMPS {
        let (path, fresh_build) = stamped_gateway(&release, &own, version)?;
        built |= fresh_build;
        stamped.push((version, path));
    }
    Ok(Binaries {
        aihummer: release.join("aihummer"),
        gateway: gateway.unwrap_or(own),
        stamped,
        stamp_build: built.then(|| started.elapsed()),
    })
}

/// The release gateway stamped `version`, and whether it had to be built now.
fn stamped_gateway(release: &Path, own: &Path, version: &str) -> anyhow::Result<(PathBuf, bool)> {
    let base = release
        .parent()
        .context("target/release has a parent")?
        .join("bench-stamped");
    let copy = base.join(version).join("aihummer-gateway");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(sources)) = (modified(&copy), modified(own))
        && built > sources
    {
        return Ok((copy, false));
    }
    let target = base.join("build");
    let seeded = target.join("release");
    if !seeded.exists() {
        // Best effort: whatever the copy misses is simply compiled.
        std::fs::create_dir_all(&seeded)
            .with_context(|| format!("creating {}", seeded.display()))?;
        let _ = Command::new("cp")
            .arg("-a")
            .args(["deps", ".fingerprint", "build"].map(|d| release.join(d)))
            .arg(&seeded)
            .status();
    }
    println!(
        "bench: building the release gateway stamped {version} (once; kept under target/bench-stamped)"
    );
    let status = cargo()
        .args(["build", "--release", "-q", "-p", "aihummer-gateway"])
        .args(["--bin", "aihummer-gateway", "--target-dir"])
        .arg(&target)
        .env("AIHUMMER_BUILD_VERSION", version)
        .current_dir(workspace_root())
        .status()
        .context("running cargo build for a stamped gateway")?;
    if !status.success() {
        bail!("building the gateway stamped {version} failed: {status}");
    }
    let dir = copy.parent().context("the stamped copy has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = copy.with_extension("tmp");
    std::fs::copy(seeded.join("aihummer-gateway"), &tmp)
        .with_context(|| format!("copying the {version} gateway"))?;
    std::fs::rename(&tmp, &copy).with_context(|| format!("placing {}", copy.display()))?;
    Ok((copy, true))
}

//! A release `aihummer run` started by the bench, with its own port, control socket,
//! install dir and log, and the `aihummer` CLI pointed at it. (The harness's
//! `Supervisor` runs the debug binaries of the test target dir; the bench runs release
//! ones.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use aihummer_tests::free_port;
use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use tokio::time::Instant;

/// A running supervisor, stopped gracefully (then killed) when dropped.
pub struct Supervised {
    child: Child,
    /// The public address.
    pub addr: SocketAddr,
    socket: PathBuf,
    aihummer: PathBuf,
    /// Scratch directory: socket, install dir, log.
    pub dir: TempDir,
}

impl Supervised {
    /// Starts `aihummer run` serving `gateway` with a clean environment plus `env`; the
    /// gateway runs as the bench's own user.
    pub fn start(aihummer: &Path, gateway: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating the supervisor's directory")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let socket = dir.path().join("supervisor.sock");
        let state = dir.path().join("state");
        let log = std::fs::File::create(dir.path().join("supervisor.log"))
            .context("creating the supervisor's log")?;
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .context("looking up the bench's own user")?;
        let child = std::process::Command::new(aihummer)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AIHUMMER_GATEWAY_ADDR", addr.to_string())
            .env("AIHUMMER_SUPERVISOR_SOCKET", &socket)
            .env("AIHUMMER_STATE_DIR", &state)
            .env("AIHUMMER_GATEWAY_BIN", gateway)
            .env("AIHUMMER_GATEWAY_USER", user)
            .env("AIHUMMER_AUTO_UPDATE", "off")
            .env("AIHUMMER_READY_TIMEOUT", "30s")
            .env("AIHUMMER_DRAIN_TIMEOUT", "5s")
            .env("AIHUMMER_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", aihummer.display()))?;
        Ok(Supervised {
            child,
            addr,
            socket,
            aihummer: aihummer.to_path_buf(),
            dir,
        })
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://addr/path` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The end of the supervisor's log, for an error message.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("supervisor.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs the CLI with `args` against this supervisor.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        tokio::process::Command::new(&self.aihummer)
            .args(args)
            .env("AIHUMMER_SUPERVISOR_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running aihummer {args:?}"))
    }

    /// Runs the CLI with `args` (ending in `--json`) and returns its JSON report.
    pub async fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.cli(args).await?;
        if !out.status.success() {
            bail!(
                "aihummer {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("aihummer {args:?}'s JSON"))
    }

    /// Waits until a gateway is active and ready with nothing else under way; its pid.
    pub async fn wait_serving(&self, deadline: Duration) -> anyhow::Result<u32> {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(status) = self.cli_json(&["status", "--json"]).await
                && status["state"] == "running"
                && status["active"]["state"] == "ready"
                && let Some(pid) = status["active"]["pid"].as_u64()
            {
                return Ok(u32::try_from(pid)?);
            }
            if Instant::now() > end {
                bail!(
                    "the supervisor did not serve within {deadline:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Graceful first, so its gateways are drained and reaped rather than orphaned.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            for _ in 0..200 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

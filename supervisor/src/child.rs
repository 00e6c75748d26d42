//! One gateway child: spawned with its two sockets, signalled with `nix`, reaped only
//! through tokio's [`tokio::process::Child::wait`] (never `waitpid(-1)`, which would steal
//! exit statuses from tokio).
//!
//! The child inherits this process's environment (so every `AIHUMMER_*` setting, including
//! `AIHUMMER_DRAIN_TIMEOUT`, reaches it unchanged) minus what belongs to the supervisor
//! alone: systemd's notification and watchdog variables and any `LISTEN_*` left over.
//! Its stdout and stderr are the supervisor's, so under systemd both land in the journal.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use command_fds::CommandFdExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::fds::{self, CHILD_FD_NAMES, FdError};

/// Variables a child must not inherit: systemd talks to the supervisor only, and a child's
/// sockets are described afresh.
const SCRUBBED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// A child that could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// Its sockets could not be prepared.
    #[error(transparent)]
    Sockets(#[from] FdError),
    /// The descriptor mapping was invalid (a bug: the mappings are fixed).
    #[error("invalid descriptor mapping for {0}")]
    Mapping(PathBuf),
    /// `exec` failed.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// What was run.
        binary: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The process vanished before its pid could be read.
    #[error("{0} exited before its pid could be read")]
    NoPid(PathBuf),
}

/// How a stop ended.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// The exit status, when the process could be reaped.
    pub status: Option<ExitStatus>,
    /// Whether it had to be killed at the deadline.
    pub killed: bool,
}

/// A running (or exited but not yet reaped) gateway process.
#[derive(Debug)]
pub struct Gateway {
    /// Its process id; valid for signals until [`Gateway::exited`] has returned.
    pub pid: u32,
    /// Its private probe listener.
    pub probe: SocketAddr,
    /// The binary it runs.
    pub binary: PathBuf,
    /// When it was started.
    pub started: Instant,
    /// When it was started, by the wall clock (for reports).
    pub started_at: SystemTime,
    /// The version it reported, once a probe has answered.
    pub version: Option<String>,
    /// Whether it reported running without a database.
    pub health_only: bool,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Gateway {
    /// Starts `binary` with a duplicate of `public` on fd 3 and a fresh probe listener on
    /// fd 4. Must run inside a tokio runtime.
    pub fn spawn(binary: &Path, public: &TcpListener) -> Result<Gateway, ChildError> {
        let sockets = fds::child_sockets(public)?;
        let mut command = Command::new(binary);
        for var in SCRUBBED {
            command.env_remove(var);
        }
        command
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", CHILD_FD_NAMES)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        command
            .fd_mappings(sockets.mappings)
            .map_err(|_| ChildError::Mapping(binary.to_path_buf()))?;
        let child = command.spawn().map_err(|source| ChildError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
        // Dropping `command` here closes this process's copies of the probe listener and
        // of the public duplicate; the child holds its own.
        drop(command);
        let pid = child
            .id()
            .ok_or_else(|| ChildError::NoPid(binary.to_path_buf()))?;
        Ok(Gateway {
            pid,
            probe: sockets.probe,
            binary: binary.to_path_buf(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            version: None,
            health_only: false,
            child,
            exit: None,
        })
    }

    /// Waits until the process exits and reaps it. Cancel-safe, and returns at once (with
    /// the same status) once it has exited.
    pub async fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            match self.child.wait().await {
                Ok(status) => self.exit = Some(status),
                Err(err) => {
                    tracing::error!(pid = self.pid, error = %err, "cannot wait for the gateway");
                    // Waiting failed for good; report it as gone rather than spin.
                    return None;
                }
            }
        }
        self.exit
    }

    /// Whether the process is known to have exited (reaping it if it has).
    fn has_exited(&mut self) -> bool {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit.is_some()
    }

    /// Sends SIGTERM: the gateway turns `/readyz` 503 and drains. A process that already
    /// exited is not signalled, so a reused pid can never be hit (an unreaped child keeps
    /// its pid, and only [`Gateway::exited`] reaps).
    pub fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    fn signal(&mut self, signal: Signal) {
        if self.has_exited() {
            return;
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(err) = kill(Pid::from_raw(raw), signal) {
            tracing::warn!(pid = self.pid, %signal, error = %err, "cannot signal the gateway");
        }
    }

    /// Stops the process: SIGTERM, up to `deadline` for its drain, then SIGKILL, then reap.
    pub async fn stop(&mut self, deadline: Duration) -> Stopped {
        self.terminate();
        self.wait_or_kill(deadline).await
    }

    /// Waits up to `deadline` for an exit already asked for, then SIGKILLs and reaps.
    pub async fn wait_or_kill(&mut self, deadline: Duration) -> Stopped {
        if let Ok(status) = tokio::time::timeout(deadline, self.exited()).await {
            return Stopped {
                status,
                killed: false,
            };
        }
        tracing::warn!(pid = self.pid, timeout = ?deadline, "the gateway did not exit in time; killing it");
        self.signal(Signal::SIGKILL);
        Stopped {
            status: self.exited().await,
            killed: true,
        }
    }
}

/// Describes an exit status for people: `exit code 1`, `signal 9 (SIGKILL)`.
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "an unknown status".to_string(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => format!("signal {sig} ({name})"),
                Err(_) => format!("signal {sig}"),
            },
            (None, None) => status.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn exit_statuses_read_as_codes_or_signal_names() {
        assert_eq!(describe(Some(ExitStatus::from_raw(1 << 8))), "exit code 1");
        assert_eq!(
            describe(Some(ExitStatus::from_raw(9))),
            "signal 9 (SIGKILL)"
        );
        assert_eq!(describe(None), "an unknown status");
    }
}

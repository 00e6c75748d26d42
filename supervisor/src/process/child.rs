//! One gateway child: spawned with its two sockets, signalled with `nix`, reaped only
//! through tokio's [`tokio::process::Child::wait`] (never `waitpid(-1)`, which would steal
//! exit statuses from tokio), by one task that owns it.
//!
//! The child inherits this process's environment (so the gateway's own settings, such as
//! `AIHUMMER_DRAIN_TIMEOUT` and the database URLs, reach it unchanged) minus what belongs
//! to the supervisor alone: [`config::supervisor_only`] settings (the control socket, the
//! update key and CDN, the install dir), systemd's notification and watchdog variables and
//! any `LISTEN_*` left over. Its stdout and stderr are the supervisor's, so under systemd
//! both land in the journal.
//!
//! Each child leads a process group of its own, remembered in [`GatewayGroups`] so the
//! control server can refuse the gateway's processes, and a root supervisor starts it as
//! [`RunAs`] (see [`super::identity`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use command_fds::CommandFdExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::fds::{self, FdError};
use super::groups::GatewayGroups;
use super::identity::RunAs;
use crate::config;
use aihummer_common::sockets;

/// Variables a child must not inherit: systemd talks to the supervisor only, and a child's
/// sockets are described afresh.
const SCRUBBED: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How gateways are started: as whom, and where their process groups are recorded.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The identity a root supervisor switches to; `None`: this process's own.
    pub run_as: Option<RunAs>,
    /// The process groups of the gateways started so far.
    pub groups: GatewayGroups,
}

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

/// A running gateway process. A task owns the process: it reaps it and sends it signals,
/// so a signal can never reach a pid that was reaped and reused.
#[derive(Debug)]
pub struct Gateway {
    /// Its process id.
    pub pid: u32,
    /// Its private probe listener.
    pub probe: SocketAddr,
    signals: mpsc::UnboundedSender<Signal>,
}

impl Gateway {
    /// Starts `binary` as `launch` says, in a process group of its own, with a duplicate
    /// of `public` on fd 3 and a fresh probe listener on fd 4; `on_exit` is called with its
    /// exit status once it has exited and been reaped. Must run inside a tokio runtime.
    pub fn spawn(
        binary: &Path,
        public: &TcpListener,
        launch: &Launch,
        on_exit: impl FnOnce(Option<ExitStatus>) + Send + 'static,
    ) -> Result<Gateway, ChildError> {
        let sockets = fds::child_sockets(public)?;
        let mut command = Command::new(binary);
        for var in SCRUBBED.iter().chain(sockets::LISTEN_VARS) {
            command.env_remove(var);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(config::supervisor_only) {
                command.env_remove(name);
            }
        }
        if let Some(run_as) = &launch.run_as {
            run_as.apply(&mut command);
        }
        command
            .process_group(0)
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", fds::child_fd_names())
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
        // Its pgid is its pid (process_group(0)); a pid always fits a pid_t.
        if let Ok(pgid) = i32::try_from(pid) {
            launch.groups.add(pgid);
        }
        let (signals, inbox) = mpsc::unbounded_channel();
        tokio::spawn(own(child, pid, inbox, on_exit));
        Ok(Gateway {
            pid,
            probe: sockets.probe,
            signals,
        })
    }

    /// Sends SIGTERM: the gateway turns `/readyz` 503, drains and exits.
    pub fn terminate(&self) {
        let _ = self.signals.send(Signal::SIGTERM);
    }

    /// Sends SIGUSR1: the gateway turns `/readyz` 503 and keeps serving, so proxies take
    /// it out of rotation before it drains.
    pub fn withdraw(&self) {
        let _ = self.signals.send(Signal::SIGUSR1);
    }

    /// Sends SIGKILL: its drain deadline passed.
    pub fn kill(&self) {
        let _ = self.signals.send(Signal::SIGKILL);
    }
}

/// Waits for the child while passing it signals. Reaping and signalling happen in this
/// one task, so no signal is sent after the reap that frees the pid; an exited but not
/// yet reaped child keeps its pid, and a signal to it is harmless.
async fn own(
    mut child: Child,
    pid: u32,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    on_exit: impl FnOnce(Option<ExitStatus>),
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(status) => Some(status),
                Err(err) => {
                    tracing::error!(pid, error = %err, "cannot wait for the gateway");
                    None
                }
            },
            Some(signal) = signals.recv() => {
                let Ok(raw) = i32::try_from(pid) else { continue };
                if let Err(err) = kill(Pid::from_raw(raw), signal) {
                    tracing::warn!(pid, %signal, error = %err, "cannot signal the gateway");
                }
            }
        }
    };
    on_exit(status);
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

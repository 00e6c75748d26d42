//! Helpers for the supervisor suites: an `aihummer run` process with its own port, control
//! socket and log; the `aihummer` CLI pointed at it; process facts read from `/proc`; and a
//! steady HTTP load that counts every answer and every failure.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{binary, free_port, runnable, wait_for};

/// A running `aihummer run`, stopped gracefully (then killed) when dropped.
pub struct Supervisor {
    /// The supervisor process.
    pub child: std::process::Child,
    /// The public address its gateways serve on.
    pub addr: SocketAddr,
    /// Its control socket (in `dir`, unless `env` named another).
    pub socket: PathBuf,
    /// A scratch directory owned by the test (socket, log, scripts).
    pub dir: TempDir,
    log: PathBuf,
}

impl Supervisor {
    /// Starts `aihummer run` on a free loopback port with a clean environment plus `env`.
    /// Defaults, which `env` may override: the workspace's gateway, a 5s ready timeout, a
    /// 3s drain timeout, and the gateway running as root when the suite runs as root
    /// (`AIHUMMER_GATEWAY_USER=root`: the suites' scripts and scratch directories are
    /// root's own; `supervisor_privileges` tests the split).
    pub fn start(env: &[(&str, &str)]) -> Supervisor {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, env)
    }

    /// Like [`Supervisor::start`], in a directory the test prepared (e.g. with scripts).
    pub fn start_in(dir: TempDir, env: &[(&str, &str)]) -> Supervisor {
        Self::start_with(dir, env, |_| {})
    }

    /// Like [`Supervisor::start_in`]; `prepare` may adjust the command (e.g. pass a socket
    /// the way systemd does). An `AIHUMMER_GATEWAY_ADDR` in `env` names the public address.
    pub fn start_with(
        dir: TempDir,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Supervisor {
        Self::start_wrapped(dir, env, &[], prepare)
    }

    /// Like [`Supervisor::start_with`], started through `wrapper` (a program and its
    /// arguments, say `setpriv` limiting capabilities), which must exec `aihummer run`.
    pub fn start_wrapped(
        dir: TempDir,
        env: &[(&str, &str)],
        wrapper: &[String],
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Supervisor {
        let log = dir.path().join("supervisor.log");
        let socket = env
            .iter()
            .find(|(k, _)| *k == "AIHUMMER_SUPERVISOR_SOCKET")
            .map_or_else(
                || dir.path().join("supervisor.sock"),
                |(_, v)| PathBuf::from(v),
            );
        let addr: SocketAddr = env
            .iter()
            .find(|(k, _)| *k == "AIHUMMER_GATEWAY_ADDR")
            .map_or_else(
                || format!("127.0.0.1:{}", free_port()),
                |(_, v)| v.to_string(),
            )
            .parse()
            .expect("addr");
        // Runnable copies: the supervisor, or its gateway, may run as another user.
        let gateway = runnable("aihummer-gateway");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = std::process::Command::new(program);
                cmd.args(args).arg(runnable("aihummer"));
                cmd
            }
            None => std::process::Command::new(runnable("aihummer")),
        };
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AIHUMMER_GATEWAY_ADDR", addr.to_string())
            .env("AIHUMMER_SUPERVISOR_SOCKET", &socket)
            .env("AIHUMMER_GATEWAY_BIN", &gateway)
            .env("AIHUMMER_READY_TIMEOUT", "5s")
            .env("AIHUMMER_DRAIN_TIMEOUT", "3s")
            .env("AIHUMMER_GATEWAY_USER", "root")
            .env("AIHUMMER_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            );
        prepare(&mut cmd);
        let child = cmd.spawn().expect("spawn aihummer run");
        Supervisor {
            child,
            addr,
            socket,
            dir,
            log,
        }
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://addr/path` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the supervisor and its gateways logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `aihummer` CLI against this supervisor's socket.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.socket, args).await
    }

    /// `aihummer status --json`, parsed; `None` when it fails.
    pub async fn status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]).await;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until a gateway is active and ready with nothing else under way; returns its pid.
    pub async fn wait_serving(&self, deadline: Duration) -> u32 {
        wait_for(
            deadline,
            "the supervisor to serve with a ready gateway",
            || async {
                let status = self.status().await?;
                let ready = status["state"] == "running" && status["active"]["state"] == "ready";
                let pid = status["active"]["pid"].as_u64()?;
                ready.then(|| u32::try_from(pid).expect("pid fits u32"))
            },
        )
        .await
    }

    /// Waits until the last update check's result (`status`'s `update.last_result`)
    /// contains `text`; returns that line.
    pub async fn wait_check_result(&self, text: &str, deadline: Duration) -> String {
        wait_for(
            deadline,
            &format!("an update check result containing {text:?}"),
            || async {
                let status = self.status().await?;
                let line = status["update"]["last_result"].as_str()?.to_string();
                line.contains(text).then_some(line)
            },
        )
        .await
    }

    /// Sends `signal` to the supervisor.
    pub fn signal(&self, signal: Signal) {
        send(self.pid(), signal);
    }

    /// Waits for the supervisor to exit, panicking with its log after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the supervisor did not exit within {deadline:?}; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Graceful first, so the gateways are drained and reaped rather than orphaned.
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

/// Runs the `aihummer` CLI with `args` against the control socket at `socket`.
pub async fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("aihummer"))
        .args(args)
        .env("AIHUMMER_SUPERVISOR_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the aihummer CLI")
}

/// Sends `signal` to `pid`.
pub fn send(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).expect("send a signal");
}

/// Whether `pid` is a running process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && alive(child) {
            children.push(child);
        }
    }
    children
}

/// How many established TCP connections on local `port` the process `pid` has accepted
/// (holds a descriptor for): a connection still in the listen queue has none.
pub fn accepted_connections(pid: u32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().to_string();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    // A set, not a count: /proc/net/tcp is read in chunks, and a socket opened or closed
    // between two chunks can make the kernel list another one twice.
    let mut accepted = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 01 is ESTABLISHED.
            if local_port == Some(port) && *state == "01" && inodes.contains(*inode) {
                accepted.insert(inode.to_string());
            }
        }
    }
    accepted.len()
}

/// Puts an executable shell script at `path` atomically (write beside it, then rename), so
/// a process starting `path` sees either the old file or the new one, never half of one.
pub fn install_script(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    std::fs::rename(&tmp, path).expect("rename script into place");
}

/// One answer (or failure) seen by the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent.
    pub sent: Instant,
    /// The pid that answered, or the failure.
    pub outcome: Result<u32, String>,
    /// Whether it came over a keep-alive client (else a fresh connection per request).
    pub keep_alive: bool,
}

/// A steady HTTP load on `/v1/ping`: some workers reuse keep-alive connections, others open
/// a fresh connection per request. Bounded: each worker stops after `max_per_worker`
/// requests or when [`Load::stop`] is called, whichever comes first.
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<HashMap<u32, usize>>>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `keep_alive` + `fresh` workers against `url`.
    pub fn start(url: &str, keep_alive: usize, fresh: usize, max_per_worker: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(HashMap::new()));
        let mut workers = Vec::new();
        for index in 0..keep_alive + fresh {
            let is_keep_alive = index < keep_alive;
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(5));
            if !is_keep_alive {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().expect("http client");
            let url = url.to_string();
            let stop = stop.clone();
            let served = served.clone();
            workers.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) && samples.len() < max_per_worker {
                    let sent = Instant::now();
                    let outcome = ping(&client, &url).await;
                    if let (Ok(pid), Ok(mut served)) = (&outcome, served.lock()) {
                        *served.entry(*pid).or_default() += 1;
                    }
                    samples.push(Sample {
                        sent,
                        outcome,
                        keep_alive: is_keep_alive,
                    });
                    if !is_keep_alive {
                        // Paces fresh connections so TIME_WAIT sockets cannot exhaust the
                        // loopback's ephemeral ports during a long run.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                samples
            }));
        }
        Load {
            stop,
            served,
            workers,
        }
    }

    /// How many answers came from `pid` so far.
    pub fn served_by(&self, pid: u32) -> usize {
        self.served
            .lock()
            .map(|served| served.get(&pid).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Stops every worker and returns all samples.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for worker in self.workers {
            all.extend(worker.await.expect("load worker"));
        }
        all
    }
}

async fn ping(client: &reqwest::Client, url: &str) -> Result<u32, String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    body["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("no pid in {body}"))
}

/// The environment of process `pid`, as `NAME=value` strings.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect()
}

/// The socket inodes behind the descriptors of process `pid`, by descriptor number.
pub fn socket_fds(pid: u32) -> Vec<(u32, String)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut sockets: Vec<(u32, String)> = fds
        .flatten()
        .filter_map(|fd| {
            let number = fd.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(fd.path())
                .ok()?
                .to_string_lossy()
                .to_string();
            let inode = target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .to_string();
            Some((number, inode))
        })
        .collect();
    sockets.sort();
    sockets
}

/// The inode of the unix socket listening at `path`, from `/proc/net/unix`.
pub fn unix_socket_inode(path: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let path = path.to_str()?;
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.last() == Some(&path)).then(|| fields.get(6).map(|s| s.to_string()))?
    })
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

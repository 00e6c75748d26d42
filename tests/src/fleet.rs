//! Fleets for the suites: several supervisors on loopback ports, one state dir each, one
//! database, behind the shipped HAProxy configuration (`packaging/proxy/haproxy.cfg`,
//! only its addresses replaced), and what the suites watch while they roll it: each
//! node's supervisor state, sampled over time, and the gateways' leadership.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::supervisor::Supervisor;
use crate::{free_port, wait_for};

/// The HAProxy binary, if installed.
pub fn haproxy_binary() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|path| Path::new(path).exists())
}

/// Whether HAProxy can be used; without it a suite skips loudly, and fails under `CI`.
pub fn haproxy_or_skip() -> Option<&'static str> {
    let binary = haproxy_binary();
    if binary.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "haproxy is missing; .ci/run installs it"
        );
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy)");
    }
    binary
}

/// The shipped configuration with the test's addresses in place of the examples.
pub fn config(front: u16, nodes: &[u16]) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/proxy/haproxy.cfg"),
    )
    .expect("read packaging/proxy/haproxy.cfg");
    let mut out = String::new();
    let mut servers = nodes.iter().enumerate();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{front}\n"));
        } else if trimmed.starts_with("server ") {
            if let Some((i, port)) = servers.next() {
                out.push_str(&format!(
                    "    server node{} 127.0.0.1:{port} check\n",
                    i + 1
                ));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        servers.next().is_none(),
        "the shipped file names three servers"
    );
    out
}

/// HAProxy in the foreground in front of `nodes`, killed when dropped.
pub struct Haproxy {
    child: Child,
    dir: TempDir,
    /// The port clients connect to.
    pub front: u16,
}

impl Haproxy {
    /// Checks the configuration (`haproxy -c`), starts HAProxy and waits until it serves.
    pub async fn start(binary: &str, nodes: &[u16]) -> Haproxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let front = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(front, nodes)).expect("write the config");
        let check = Command::new(binary)
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "the shipped configuration is valid: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).expect("log"))
            .spawn()
            .expect("start haproxy");
        let proxy = Haproxy { child, dir, front };
        let url = proxy.url("/v1/ping");
        let client = crate::http();
        wait_for(Duration::from_secs(20), "haproxy to serve", || async {
            let (status, _) = crate::get_json(&client, &url).await?;
            (status == 200).then_some(())
        })
        .await;
        proxy
    }

    /// A URL through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.front)
    }

    /// HAProxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The lines saying a node left or rejoined rotation.
    pub fn rotation_changes(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" is DOWN") || l.contains(" is UP"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node: a supervisor with its own state dir and port.
pub struct Node {
    /// The supervisor.
    pub supervisor: Supervisor,
    /// Its install dir.
    pub state: TempDir,
    /// Its public port.
    pub port: u16,
}

impl Node {
    /// Starts a node on `port` with `state` as its install dir and `env` on top.
    pub fn start(port: u16, state: TempDir, env: &[(&str, &str)]) -> Node {
        let mut all: Vec<(&str, String)> = vec![
            ("AIHUMMER_GATEWAY_ADDR", format!("127.0.0.1:{port}")),
            (
                "AIHUMMER_STATE_DIR",
                state.path().to_str().expect("utf-8 path").to_string(),
            ),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Node {
            supervisor: Supervisor::start(&pairs),
            state,
            port,
        }
    }

    /// The node's install dir.
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    /// The version its active gateway serves, per `status`.
    pub async fn serving(&self) -> Option<String> {
        let status = self.supervisor.status().await?;
        status["active"]["version"].as_str().map(str::to_string)
    }

    /// Its rollout cohort, per `status`.
    pub async fn cohort(&self) -> u8 {
        let status = self.supervisor.status().await.expect("status");
        u8::try_from(status["node"]["cohort"].as_u64().expect("a cohort")).expect("0-99")
    }
}

/// What a [`Watch`] saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Per node, the spans it was seen handing off: from the first sample that saw it to
    /// the last. Only what a sample saw counts: the sample after a handoff ends may come a
    /// whole round later (each round runs the CLI once per node, slow on a busy machine),
    /// and that delay is not the node's.
    pub handoffs: Vec<Vec<(Duration, Duration)>>,
    /// Sample rounds in which more than one gateway said it leads.
    pub two_leaders: usize,
    /// Sample rounds taken.
    pub rounds: usize,
}

impl Seen {
    /// Whether two nodes were ever handing off at once.
    pub fn overlapping_handoffs(&self) -> Vec<String> {
        let mut overlaps = Vec::new();
        for (a, spans_a) in self.handoffs.iter().enumerate() {
            for (b, spans_b) in self.handoffs.iter().enumerate().skip(a + 1) {
                for (s1, e1) in spans_a {
                    for (s2, e2) in spans_b {
                        if s1 <= e2 && s2 <= e1 {
                            overlaps.push(format!(
                                "node {} {s1:?}..{e1:?} and node {} {s2:?}..{e2:?}",
                                a + 1,
                                b + 1
                            ));
                        }
                    }
                }
            }
        }
        overlaps
    }
}

/// Samples every node's supervisor state (`handing_off` spans) and the gateways'
/// leadership every 50 ms until stopped. Leadership is asked of every node at once
/// (`/healthz` concurrently); when two answer "leader", they are asked again at once, and
/// only two claims in both samples count: a handover takes a millisecond or so (the old
/// leader stops claiming before it unlocks), so concurrent requests may straddle one, while
/// a real split brain lasts at least the leader's 500 ms connection check.
pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

/// How many of `ports` answer `/healthz` with `leader: true`, asked all at once.
async fn leaders(client: &reqwest::Client, ports: &[u16]) -> usize {
    let asks = ports.iter().map(|port| {
        let url = format!("http://127.0.0.1:{port}/healthz");
        async move { crate::get_json(client, &url).await }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(|(_, body)| body["leader"] == true)
        .count()
}

impl Watch {
    /// Starts watching the nodes whose control sockets and ports are given.
    pub fn start(nodes: &[(PathBuf, u16)]) -> Watch {
        let seen = Arc::new(Mutex::new(Seen {
            handoffs: vec![Vec::new(); nodes.len()],
            ..Seen::default()
        }));
        let nodes = nodes.to_vec();
        let ports: Vec<u16> = nodes.iter().map(|(_, port)| *port).collect();
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let client = crate::http();
            let mut open: Vec<Option<(Duration, Duration)>> = vec![None; nodes.len()];
            loop {
                for (i, (socket, _)) in nodes.iter().enumerate() {
                    let out = crate::supervisor::cli(socket, &["status", "--json"]).await;
                    let status: Option<Value> = serde_json::from_slice(&out.stdout).ok();
                    let handing_off = status.as_ref().is_some_and(|s| s["state"] == "handing_off");
                    let now = started.elapsed();
                    match (handing_off, open[i]) {
                        (true, None) => open[i] = Some((now, now)),
                        (true, Some((from, _))) => open[i] = Some((from, now)),
                        (false, Some(span)) => {
                            open[i] = None;
                            if let Ok(mut seen) = shared.lock() {
                                seen.handoffs[i].push(span);
                            }
                        }
                        (false, None) => {}
                    }
                }
                let two = leaders(&client, &ports).await > 1 && leaders(&client, &ports).await > 1;
                if let Ok(mut seen) = shared.lock() {
                    seen.rounds += 1;
                    if two {
                        seen.two_leaders += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Watch { seen, task }
    }

    /// What was seen so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops watching; returns everything seen.
    pub fn stop(self) -> Seen {
        self.task.abort();
        self.seen()
    }
}

/// Every migration applied exactly once, all successfully: the count of rows in
/// `_sqlx_migrations` equals the number of migration files plus `added` (migrations a
/// newer release brought).
pub async fn migrations_applied_once(pool: &sqlx::PgPool, added: usize) {
    let files = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations"))
        .expect("read migrations/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let (rows, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT success) FROM _sqlx_migrations",
    )
    .fetch_one(pool)
    .await
    .expect("read _sqlx_migrations");
    assert_eq!(
        (rows, failed),
        (i64::try_from(files + added).expect("count"), 0),
        "every migration applied once"
    );
}

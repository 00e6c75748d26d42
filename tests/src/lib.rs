//! Harness for the end-to-end suites: real binaries, a real PostgreSQL, real sockets.
//!
//! - [`TestDb`]: a fresh database per test, dropped afterwards (also on panic).
//! - [`Gateway`]: an `aihummer-gateway` process with its own port and a log file.
//! - [`Proxy`]: a TCP forwarder to PostgreSQL that a test can cut (with or without telling
//!   the client) and restore, to make the database unreachable without touching the
//!   shared server.
//! - [`pgbouncer::PgBouncer`]: a real PgBouncer in session or transaction pooling mode.
//! - [`pools::pools_as`]: the gateway's pools opened in-process, as its startup does.
//! - [`packaging`]: the `packaging/` folder, system tools the packaging suites need.
//! - [`Receiver`]: a webhook receiver recording every delivery, answering from a script.
//! - [`accounts`]: throwaway system users and groups for the privilege tests.
//! - [`slowloris::Flood`]: connections trickling their headers or body a byte at a time.
//! - [`wait_for`]: every wait polls a real signal (an HTTP answer, a row, an exit) under a
//!   deadline; nothing sleeps a fixed time hoping something happened.
//!
//! The binaries come from the workspace's target directory. `cargo nextest run --workspace`
//! builds them (through the `gateway/tests` and `supervisor/tests` integration tests); a
//! run limited to this package (`-p aihummer-tests`) would use whatever was built last.

pub mod accounts;
pub mod fleet;
pub mod packaging;
pub mod pgbouncer;
pub mod pools;
pub mod slowloris;
pub mod supervisor;
pub mod update;
pub mod updating;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::PgPool;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The server the tests create their databases on; override with `AIHUMMER_TEST_PG`.
pub fn server_url() -> String {
    std::env::var("AIHUMMER_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A built binary of the workspace, by name. `cargo nextest run --workspace` builds them:
/// each binary's package has an integration test, which makes cargo build its executables.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suites with `cargo nextest run --workspace`, which builds it",
        path.display()
    );
    path
}

/// [`binary`] copied where any user may run it, for the suites that run binaries (or
/// their gateways) as other users: the target dir may sit under a directory only its
/// owner can enter, like a fresh clone in a private temporary directory. The copies are a
/// cache under the system's temporary directory, one per target dir, refreshed when the
/// built binary changes, and written under a temporary name then renamed, so tests in
/// parallel never run a half-written copy.
pub fn runnable(name: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::PermissionsExt;
    let source = binary(name);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    target_dir().hash(&mut hasher);
    let dir = std::env::temp_dir().join(format!("aihummer-test-bins-{:x}", hasher.finish()));
    std::fs::create_dir_all(&dir).expect("create the runnable binaries' dir");
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(&dir, open.clone()).expect("open the runnable binaries' dir");
    let copy = dir.join(name);
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    if stamp(&copy) != stamp(&source) {
        let partial = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::copy(&source, &partial).expect("copy a binary");
        std::fs::set_permissions(&partial, open).expect("make it runnable");
        let modified = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .expect("the binary's mtime");
        std::fs::File::options()
            .write(true)
            .open(&partial)
            .and_then(|f| f.set_modified(modified))
            .expect("stamp the copy");
        std::fs::rename(&partial, &copy).expect("put the copy in place");
    }
    copy
}

/// Polls `probe` every 50ms until it yields a value, panicking with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Passes `sockets` to a child as fds 3, 4, .. the way a supervisor (or systemd) does.
pub fn pass_sockets(
    sockets: Vec<std::os::fd::OwnedFd>,
) -> impl FnOnce(&mut tokio::process::Command) {
    use command_fds::{CommandFdExt, FdMapping};
    move |cmd| {
        let mappings = sockets
            .into_iter()
            .enumerate()
            .map(|(i, fd)| FdMapping {
                parent_fd: fd,
                child_fd: 3 + i as i32,
            })
            .collect();
        cmd.fd_mappings(mappings).expect("fd mappings");
    }
}

/// A port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// An HTTP client for tests: short timeouts, so a hang fails the test instead of stalling it.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// GETs `url` and returns the status and JSON body, or `None` if no answer came.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}

/// A fresh database on the test server, dropped (with its test roles) when this is dropped.
pub struct TestDb {
    /// The database's name.
    pub name: String,
    roles: Vec<String>,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> TestDb {
        let name = format!("aihummer_t_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&format!("{}/postgres", server_url()))
            .await
            .expect("connect to the test server (is PostgreSQL running?)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        TestDb {
            name,
            roles: Vec::new(),
        }
    }

    /// The owner URL (the `postgres` superuser).
    pub fn url(&self) -> String {
        format!("{}/{}", server_url(), self.name)
    }

    /// A URL for this database as `role` (trust auth: no password).
    pub fn url_as(&self, role: &str) -> String {
        let base = server_url();
        let host = base.rsplit('@').next().unwrap_or("127.0.0.1:5432");
        format!("postgres://{role}@{host}/{}", self.name)
    }

    /// An owner pool for assertions.
    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url())
            .await
            .expect("connect to test database")
    }

    /// Creates a login role that is a member of `aihummer_app` (which the migrations
    /// create), the way an installer would, and returns its name.
    pub async fn app_login(&mut self) -> String {
        self.login("IN ROLE aihummer_app").await
    }

    /// Creates a login role with `attributes` (`CREATE ROLE .. LOGIN <attributes>`),
    /// dropped with this database, and returns its name.
    pub async fn login(&mut self, attributes: &str) -> String {
        let role = format!(
            "aihummer_login_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let pool = self.pool().await;
        sqlx::query(&format!("CREATE ROLE {role} LOGIN {attributes}"))
            .execute(&pool)
            .await
            .expect("create login role");
        pool.close().await;
        self.roles.push(role.clone());
        role
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Synchronous on purpose: runs on panic too, and outside any runtime. One `-c` per
        // statement: psql runs a multi-statement `-c` as one transaction, which DROP
        // DATABASE refuses.
        let mut psql = std::process::Command::new("psql");
        psql.args(["-q", "-d", &format!("{}/postgres", server_url())])
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ]);
        for role in &self.roles {
            psql.args(["-c", &format!("DROP ROLE IF EXISTS {role}")]);
        }
        let _ = psql.stdout(Stdio::null()).status();
    }
}

/// A running `aihummer-gateway`, killed when dropped.
pub struct Gateway {
    /// The process.
    pub child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Gateway {
    /// Starts the gateway on a free loopback port with `env` added to a clean environment.
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        Self::start_with(&binary("aihummer-gateway"), env, |_| {})
    }

    /// Starts `bin` with `env`; `prepare` may adjust the command (e.g. to pass sockets).
    pub fn start_with(
        bin: &Path,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&mut Command),
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("gateway.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AIHUMMER_GATEWAY_ADDR", addr.to_string())
            .env("AIHUMMER_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            )
            .kill_on_drop(true);
        prepare(&mut cmd);
        let child = cmd.spawn().expect("spawn gateway");
        Gateway {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("gateway still running")
    }

    /// Everything the gateway has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the gateway.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal gateway");
    }

    /// Waits for `/healthz` to answer 200, and returns its body.
    pub async fn wait_healthy(&self, deadline: Duration) -> Value {
        let client = http();
        let url = self.url("/healthz");
        wait_for(deadline, "the gateway to answer /healthz", || async {
            match get_json(&client, &url).await {
                Some((200, body)) => Some(body),
                _ => None,
            }
        })
        .await
    }

    /// Waits for `/readyz` to answer 200, and returns its body.
    pub async fn wait_ready(&self, deadline: Duration) -> Value {
        let client = http();
        let url = self.url("/readyz");
        wait_for(deadline, "the gateway to become ready", || async {
            match get_json(&client, &url).await {
                Some((200, body)) => Some(body),
                _ => None,
            }
        })
        .await
    }

    /// Waits for the process to exit, panicking with its log after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.expect("wait for gateway"),
            Err(_) => panic!(
                "gateway did not exit within {deadline:?}; log:\n{}",
                self.logs()
            ),
        }
    }
}

/// A TCP forwarder from a loopback port to the test PostgreSQL server. While stopped, the
/// port refuses connections and every forwarded connection is cut: to the gateway, the
/// database is down.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    running: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<Option<Cut>>,
    )>,
    /// Client sides of silently cut connections, held open and never read or written
    /// until the proxy is dropped.
    silenced: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
}

/// How a proxy ends the connections it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Both sides are closed: the client sees the connection end.
    Close,
    /// The server side is closed (as the server's own keepalive would find a dead path);
    /// the client side stays open and silent, as when a network path dies without a reset.
    Silent,
}

impl Proxy {
    /// A proxy on a free port, not forwarding yet.
    pub fn new() -> Proxy {
        Proxy {
            port: free_port(),
            running: None,
            silenced: Arc::default(),
        }
    }

    /// The database URL for `db` through this proxy.
    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }

    /// Starts accepting and forwarding.
    pub async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind proxy port");
        let upstream: String = server_url()
            .rsplit('@')
            .next()
            .unwrap_or("127.0.0.1:5432")
            .into();
        let (cut, _) = tokio::sync::watch::channel(None);
        let cut_rx = cut.subscribe();
        let silenced = self.silenced.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let mut cut = cut_rx.clone();
                let silenced = silenced.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let how = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
                        how = cut.wait_for(Option::is_some) => how.ok().and_then(|how| *how),
                    };
                    if how == Some(Cut::Silent) {
                        silenced.lock().expect("silenced list").push(client);
                    }
                });
            }
        });
        self.running = Some((task, cut));
    }

    /// Stops listening and cuts every forwarded connection.
    pub async fn stop(&mut self) {
        self.cut(Cut::Close).await;
    }

    /// Stops listening and cuts every forwarded connection without telling its client:
    /// nothing more is forwarded either way, and the client's side stays open.
    pub async fn cut_silently(&mut self) {
        self.cut(Cut::Silent).await;
    }

    async fn cut(&mut self, how: Cut) {
        if let Some((task, cut)) = self.running.take() {
            task.abort();
            let _ = task.await;
            cut.send_replace(Some(how));
        }
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

/// A raw HTTP/1.1 connection, for tests that need to control exactly what is sent when.
pub struct RawHttp {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

/// One response read from a [`RawHttp`] connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, lowercased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl RawResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

impl RawHttp {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawHttp {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        RawHttp {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write request");
    }

    /// Writes a GET request for `path`.
    pub async fn send_get(&mut self, path: &str) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
    }

    /// Reads one response (Content-Length framed), or `None` if the connection closed first.
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if self.buffer.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&self.buffer[end + 4..end + 4 + length])
                        .to_string();
                    self.buffer.drain(..end + 4 + length);
                    return Some(RawResponse {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the peer has closed the connection (reads EOF or an error).
    pub async fn closed_by_peer(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 64];
        matches!(self.stream.read(&mut chunk).await, Ok(0) | Err(_))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One delivery the [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `Idempotency-Key` header.
    pub key: String,
    /// The JSON body.
    pub body: Value,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Default)]
struct ReceiverState {
    deliveries: Vec<Delivery>,
    script: std::collections::VecDeque<u16>,
    delay: Duration,
    /// When set, only requests whose `Idempotency-Key` starts with it take `delay`.
    slow_prefix: Option<String>,
}

/// A webhook receiver on loopback: records every POST to `/hook` and answers with the
/// next status of its script, then 200.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver answering `script` in order, then 200 for ever.
    pub async fn start(script: &[u16]) -> Receiver {
        Self::start_slow(script, Duration::ZERO).await
    }

    /// Like [`Receiver::start`], taking `delay` to answer each request.
    pub async fn start_slow(script: &[u16], delay: Duration) -> Receiver {
        Self::serve(ReceiverState {
            script: script.iter().copied().collect(),
            delay,
            ..ReceiverState::default()
        })
        .await
    }

    /// A receiver answering 200, taking `delay` only for keys starting with `prefix`.
    pub async fn start_slow_for(prefix: &str, delay: Duration) -> Receiver {
        Self::serve(ReceiverState {
            delay,
            slow_prefix: Some(prefix.to_string()),
            ..ReceiverState::default()
        })
        .await
    }

    async fn serve(state: ReceiverState) -> Receiver {
        use axum::http::{HeaderMap, StatusCode};
        let state = std::sync::Arc::new(std::sync::Mutex::new(state));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = shared.clone();
                async move {
                    let delay = {
                        let state = state.lock().expect("receiver state");
                        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
                        match (&state.slow_prefix, key) {
                            (Some(prefix), Some(key)) if !key.starts_with(prefix.as_str()) => {
                                Duration::ZERO
                            }
                            _ => state.delay,
                        }
                    };
                    tokio::time::sleep(delay).await;
                    let mut state = state.lock().expect("receiver state");
                    let status = state.script.pop_front().unwrap_or(200);
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    state.deliveries.push(Delivery { key, body, status });
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, task }
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state
            .lock()
            .expect("receiver state")
            .deliveries
            .clone()
    }

    /// The distinct idempotency keys among deliveries answered 2xx.
    pub fn delivered_keys(&self) -> std::collections::HashSet<String> {
        self.deliveries()
            .into_iter()
            .filter(|d| (200..300).contains(&d.status))
            .map(|d| d.key)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared secret the inbound tests sign with.
pub const INBOUND_SECRET: &str = "test-inbound-secret";

/// Lowercase hex HMAC-SHA256 of `data` under `secret`: the body-only legacy signature
/// (`X-AIHummer-Inbound-Secret`) when `data` is the body.
pub fn hmac_hex(secret: &str, data: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// The seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The `X-AIHummer-Signature` value for `body` sent with `key` as `Idempotency-Key`
/// (`None`: no such header), signed at `t`: `t=<t>,v1=<HMAC of "<t>.<key>.<body>">`.
pub fn signature_at(secret: &str, t: i64, key: Option<&str>, body: &[u8]) -> String {
    let mut data = format!("{t}.{}.", key.unwrap_or_default()).into_bytes();
    data.extend_from_slice(body);
    format!("t={t},v1={}", hmac_hex(secret, &data))
}

/// The `X-AIHummer-Signature` value for `body` and `key`, signed now.
pub fn signature(secret: &str, key: Option<&str>, body: &[u8]) -> String {
    signature_at(secret, unix_now(), key, body)
}

/// Posts a signed generic inbound message, with `key` as `Idempotency-Key` if given.
pub async fn post_inbound(
    client: &reqwest::Client,
    gateway: &str,
    body: &Value,
    key: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let raw = serde_json::to_vec(body).expect("serialize");
    let mut request = client
        .post(format!("{gateway}/v1/inbound/generic"))
        .header("content-type", "application/json")
        .header("x-aihummer-signature", signature(INBOUND_SECRET, key, &raw))
        .body(raw);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json().await?;
    Ok((status, body))
}

//! A real PgBouncer in front of the test server, for the pooling suites: its own process on
//! a free loopback port, with a config written to a temp dir (trust auth, one database).
//!
//! The binary is Debian's `pgbouncer` package, which `.ci/run` installs. Outside CI a
//! missing binary skips the test with a loud message; in CI (`CI=true`) it fails the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{TestDb, free_port, server_url, wait_for};

/// PgBouncer's pooling mode for the test's database.
#[derive(Debug, Clone, Copy)]
pub enum PoolMode {
    /// A client keeps one server session for as long as it is connected.
    Session,
    /// A client gets whatever server session is free for each transaction.
    Transaction,
}

/// A running pgbouncer, stopped when dropped.
pub struct PgBouncer {
    /// The port clients connect to.
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl PgBouncer {
    /// Starts pgbouncer pooling `db` in `mode` for the roles `users`, or `None` (after
    /// saying so on stderr) when the binary is missing outside CI.
    pub async fn start(db: &TestDb, mode: PoolMode, users: &[&str]) -> Option<PgBouncer> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "pgbouncer is not installed; .ci/run installs it (apt-get install -y pgbouncer)"
            );
            eprintln!(
                "\n!!! SKIPPED: pgbouncer is not installed (apt-get install -y pgbouncer); \
                 this test needs a real PgBouncer !!!\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let upstream = server_url();
        let upstream = upstream.rsplit('@').next().unwrap_or("127.0.0.1:5432");
        let (host, upstream_port) = upstream.split_once(':').unwrap_or((upstream, "5432"));
        let mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let auth = dir.path().join("users.txt");
        let users: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(&auth, users).expect("write auth file");
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 {db} = host={host} port={upstream_port} dbname={db}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {auth}\n\
                 pool_mode = {mode}\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                db = db.name,
                auth = auth.display(),
            ),
        )
        .expect("write pgbouncer.ini");
        let log = dir.path().join("pgbouncer.log");
        let mut cmd = Command::new(bin);
        // PgBouncer refuses to run as root; CI runs as root, and the server's own
        // account exists wherever the test server is installed.
        if nix::unistd::geteuid().is_root() {
            cmd.args(["-u", "postgres"]);
            for path in [dir.path(), &auth, &config] {
                make_world_readable(path);
            }
        }
        let child = cmd
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            )
            .spawn()
            .expect("spawn pgbouncer");
        let bouncer = PgBouncer {
            port,
            child,
            log,
            _dir: dir,
        };
        wait_for(Duration::from_secs(10), "pgbouncer to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        Some(bouncer)
    }

    /// The URL of the test's database through this pgbouncer as `role`.
    pub fn url(&self, db: &TestDb, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/{}", self.port, db.name)
    }

    /// What pgbouncer has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pgbouncer binary on `PATH` or where Debian installs it.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.is_file())
}

fn make_world_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

//! The control socket and the CLI: bad clients get an error or a timeout and never stop
//! the supervisor from answering everyone else; the CLI's exit codes tell what happened.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use aihummer_tests::supervisor::{Supervisor, cli};
use aihummer_tests::{binary, get_json, http};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Reads the one reply line the supervisor sends on `stream`.
async fn reply(stream: impl AsyncRead + Unpin) -> Value {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("a reply within 10s")
        .expect("read the reply");
    serde_json::from_str(&line).expect("the reply is JSON")
}

async fn status_answers(supervisor: &Supervisor) {
    let out = supervisor.cli(&["status", "--json"]).await;
    assert!(
        out.status.success(),
        "status fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn garbage_a_huge_line_and_a_silent_client_get_errors_while_other_clients_are_served() {
    // No database at all: the README's first command, `aihummer run` with no configuration.
    let supervisor = Supervisor::start(&[]);
    supervisor.wait_serving(Duration::from_secs(30)).await;

    // A client that connects and sends nothing holds its connection open meanwhile.
    let silent = UnixStream::connect(&supervisor.socket)
        .await
        .expect("connect");
    let silent_since = Instant::now();
    // And one that sends half a request and stops.
    let mut half = UnixStream::connect(&supervisor.socket)
        .await
        .expect("connect");
    half.write_all(b"{\"v\":1,\"cmd\":\"sta")
        .await
        .expect("write");

    let mut garbage = UnixStream::connect(&supervisor.socket)
        .await
        .expect("connect");
    garbage
        .write_all(b"\x00\xffnot json at all\n")
        .await
        .expect("write");
    let answer = reply(garbage).await;
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "bad_request");
    status_answers(&supervisor).await;

    let (read_half, mut write_half) = UnixStream::connect(&supervisor.socket)
        .await
        .expect("connect")
        .into_split();
    let line = vec![b'x'; 4 * 1024 * 1024];
    // The supervisor stops reading at its cap, so the tail of this write fails.
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&line).await;
    });
    let answer = reply(read_half).await;
    writer.await.expect("writer task");
    assert_eq!(answer["code"], "too_large");
    status_answers(&supervisor).await;

    // While the silent clients wait, other clients are served at once.
    let started = Instant::now();
    status_answers(&supervisor).await;
    let out = supervisor.cli(&["version", "--json"]).await;
    assert!(out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served promptly: {:?}",
        started.elapsed()
    );

    let answer = reply(silent).await;
    assert_eq!(answer["code"], "timeout");
    assert!(
        silent_since.elapsed() >= Duration::from_secs(4),
        "the read timeout applies"
    );
    let answer = reply(half).await;
    assert_eq!(answer["code"], "timeout");

    // An old or new protocol version is named, not guessed at.
    let mut future = UnixStream::connect(&supervisor.socket)
        .await
        .expect("connect");
    future
        .write_all(b"{\"v\":9,\"cmd\":\"teleport\"}\n")
        .await
        .expect("write");
    assert_eq!(reply(future).await["code"], "unsupported_version");

    status_answers(&supervisor).await;
    let (code, body) = get_json(&http(), &supervisor.url("/healthz"))
        .await
        .expect("healthz");
    assert_eq!((code, body["mode"].as_str()), (200, Some("health-only")));
}

#[tokio::test]
async fn a_client_of_another_uid_is_refused_and_the_supervisor_keeps_serving() {
    let supervisor = Supervisor::start(&[]);
    supervisor.wait_serving(Duration::from_secs(30)).await;
    // Let `nobody` reach the socket, so SO_PEERCRED is what refuses it, not file modes.
    let open = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(supervisor.dir.path(), 0o755);
    open(&supervisor.socket, 0o666);
    let client = supervisor.dir.path().join("aihummer");
    std::fs::copy(binary("aihummer"), &client).expect("copy the CLI where nobody can run it");
    open(&client, 0o755);

    let socket = supervisor.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&client)
            .args(["status", "--json"])
            .env_clear()
            .env("AIHUMMER_SUPERVISOR_SOCKET", &socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run the CLI as nobody")
    })
    .await
    .expect("blocking task");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("permission denied: uid 65534 may not control this supervisor"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // `--json` asked for one document on stdout, and a refusal is one too.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    assert_eq!(doc["ok"], false, "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("uid 65534 may not control this supervisor")),
        "{doc}"
    );

    status_answers(&supervisor).await;
}

#[tokio::test]
async fn the_cli_without_a_supervisor_says_so_with_its_own_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody-home.sock");
    let out = cli(&socket, &["status"]).await;
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("aihummer: no supervisor is running at"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(cli(&socket, &["restart"]).await.status.code(), Some(3));

    // `version` still reports this binary's own version.
    let out = cli(&socket, &["version", "--json"]).await;
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        doc["version"].is_string() && doc["supervisor"].is_null(),
        "{doc}"
    );
}

#[tokio::test]
async fn version_reports_the_cli_the_supervisor_and_the_serving_gateway() {
    let supervisor = Supervisor::start(&[]);
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;
    let out = supervisor.cli(&["version", "--json"]).await;
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["supervisor"]["pid"], supervisor.pid());
    assert_eq!(doc["gateway"]["pid"], gateway);
    assert_eq!(doc["gateway"]["version"], doc["version"]);
    let human = String::from_utf8_lossy(&supervisor.cli(&["version"]).await.stdout).to_string();
    assert!(
        human.contains(&format!(
            "gateway: {} (pid {gateway})",
            doc["version"].as_str().unwrap_or_default()
        )),
        "{human}"
    );
}

#[tokio::test]
async fn a_second_supervisor_on_a_live_socket_refuses_to_start_and_a_stale_socket_is_replaced() {
    let mut first = Supervisor::start(&[]);
    first.wait_serving(Duration::from_secs(30)).await;
    let socket = first.socket.to_str().expect("utf-8").to_string();
    let mut second = Supervisor::start(&[("AIHUMMER_SUPERVISOR_SOCKET", &socket)]);
    let exit = second.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(1));
    assert!(
        second.logs().contains(&format!(
            "another supervisor (pid {}) is already running",
            first.pid()
        )),
        "{}",
        second.logs()
    );
    status_answers(&first).await;

    // A supervisor that died without cleaning up leaves its socket file; the next one
    // replaces it.
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).await;
    assert!(first.socket.exists());
    let third = Supervisor::start(&[("AIHUMMER_SUPERVISOR_SOCKET", &socket)]);
    third.wait_serving(Duration::from_secs(30)).await;
    status_answers(&third).await;
}

#[tokio::test]
async fn sighup_without_a_cdn_records_that_no_update_source_is_configured() {
    let supervisor = Supervisor::start(&[]);
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;
    supervisor.signal(nix::sys::signal::Signal::SIGHUP);
    let result = aihummer_tests::wait_for(
        Duration::from_secs(5),
        "the update check to be recorded",
        || async {
            let status = supervisor.status().await?;
            status["update"]["last_result"].as_str().map(str::to_string)
        },
    )
    .await;
    assert!(
        result.contains("no update source is configured"),
        "{result}"
    );
    assert_eq!(
        supervisor.status().await.expect("status")["active"]["pid"],
        gateway,
        "nothing else changed"
    );
}

#[tokio::test]
async fn an_absurd_duration_stops_the_supervisor_at_start_naming_the_variable_and_its_maximum() {
    let mut supervisor = Supervisor::start(&[("AIHUMMER_DRAIN_TIMEOUT", "1000000000000s")]);
    let exit = supervisor.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(1));
    let logs = supervisor.logs();
    assert!(
        logs.contains("AIHUMMER_DRAIN_TIMEOUT")
            && logs.contains("1000000000000s")
            && logs.contains("is more than the maximum of 1h"),
        "{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

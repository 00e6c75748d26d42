//! Living under systemd: socket activation, `READY=1`, the watchdog, and what a gateway
//! child inherits (its two sockets, and nothing that belongs to the supervisor).

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::time::Duration;

use aihummer_tests::supervisor::{Supervisor, environ, socket_fds, unix_socket_inode};
use aihummer_tests::{get_json, http};
use command_fds::{CommandFdExt, FdMapping};
use tokio::net::UnixDatagram;

/// Collects every datagram the supervisor sends to its `NOTIFY_SOCKET`.
async fn notifications(socket: &UnixDatagram, seen: &mut String) {
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(10), socket.recv(&mut buf)).await
    {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn under_systemd_the_supervisor_notifies_ready_pets_the_watchdog_and_children_inherit_neither()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let notify_env = notify_path.to_str().expect("utf-8").to_string();
    let supervisor = Supervisor::start_in(
        dir,
        &[
            ("NOTIFY_SOCKET", &notify_env),
            // One second: the supervisor pets it every half second while the gateway is healthy.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;

    // Polls the datagrams under a deadline (wait_for's probe cannot borrow `seen` mutably).
    let mut seen = String::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        notifications(&notify, &mut seen).await;
        let ready = seen.contains("READY=1") && seen.contains("STATUS=serving: gateway");
        if ready && seen.matches("WATCHDOG=1").count() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "READY=1 and two WATCHDOG=1 within 10s; got {seen:?}"
        );
    }

    let env = environ(gateway);
    assert!(env.contains(&"LISTEN_FDS=2".to_string()), "{env:?}");
    assert!(
        env.contains(&"LISTEN_FDNAMES=public:probe".to_string()),
        "{env:?}"
    );
    for private in [
        "NOTIFY_SOCKET=",
        "WATCHDOG_USEC=",
        "WATCHDOG_PID=",
        "LISTEN_PID=",
    ] {
        assert!(
            !env.iter().any(|v| v.starts_with(private)),
            "the gateway inherited {private}: {env:?}"
        );
    }
    // Fds 3 and 4 are its sockets; the control socket is not among its descriptors.
    let fds = socket_fds(gateway);
    let numbers: Vec<u32> = fds.iter().map(|(n, _)| *n).collect();
    assert!(numbers.contains(&3) && numbers.contains(&4), "{fds:?}");
    let control = unix_socket_inode(&supervisor.socket).expect("the control socket is listed");
    assert!(
        fds.iter().all(|(_, inode)| *inode != control),
        "the gateway holds the control socket: {fds:?}"
    );
}

#[tokio::test]
async fn a_socket_passed_by_systemd_is_the_one_the_gateways_serve_on() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    // The variable names a port nobody uses: an inherited socket takes precedence.
    let unused = format!("127.0.0.1:{}", aihummer_tests::free_port());
    let supervisor = Supervisor::start_with(
        dir,
        &[
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "web"),
            ("AIHUMMER_GATEWAY_ADDR", &unused),
        ],
        |cmd| {
            cmd.fd_mappings(vec![FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: 3,
            }])
            .expect("map the listener to fd 3");
        },
    );
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;
    let (code, body) = get_json(&http(), &format!("http://{addr}/v1/ping"))
        .await
        .expect("ping on the passed socket");
    assert_eq!(
        (code, body["pid"].as_u64()),
        (200, Some(u64::from(gateway)))
    );
    assert!(
        get_json(&http(), &format!("http://{unused}/v1/ping"))
            .await
            .is_none(),
        "nothing binds the variable's port"
    );

    // The gateway's sockets are described afresh, not passed on from systemd's.
    let env = environ(gateway);
    assert!(env.contains(&"LISTEN_FDS=2".to_string()), "{env:?}");
    assert!(
        env.contains(&"LISTEN_FDNAMES=public:probe".to_string()),
        "{env:?}"
    );
}

/// Waits until `seen` (fed from `socket`) satisfies `done`, under `deadline`.
async fn wait_notified(
    socket: &UnixDatagram,
    seen: &mut String,
    deadline: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let end = tokio::time::Instant::now() + deadline;
    while !done(seen) {
        notifications(socket, seen).await;
        assert!(
            tokio::time::Instant::now() < end,
            "{what} within {deadline:?}; got {seen:?}"
        );
    }
}

/// A supervisor notifying systemd at a socket the test reads, running a gateway that is
/// the shell script `gateway`, with `env` besides.
fn under_systemd(gateway: &str, env: &[(&str, &str)]) -> (Supervisor, UnixDatagram) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("gateway");
    aihummer_tests::supervisor::install_script(&script, gateway);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let notify_env = notify_path.to_str().expect("utf-8").to_string();
    let mut all = vec![
        ("NOTIFY_SOCKET", notify_env.as_str()),
        ("AIHUMMER_GATEWAY_BIN", script.to_str().expect("utf-8")),
    ];
    all.extend_from_slice(env);
    (Supervisor::start_in(dir, &all), notify)
}

#[tokio::test]
async fn the_watchdog_follows_the_supervisor_not_a_crash_looping_gateway() {
    let (supervisor, notify) = under_systemd("exit 3", &[("WATCHDOG_USEC", "1000000")]);
    let mut seen = String::new();
    // Today's gateway never comes up, yet the supervisor is alive and says so: systemd
    // must not SIGABRT the unit (and close the listener) over a gateway's trouble.
    wait_notified(
        &notify,
        &mut seen,
        Duration::from_secs(10),
        "four WATCHDOG=1",
        |s| s.matches("WATCHDOG=1").count() >= 4,
    )
    .await;
    assert!(!seen.contains("READY=1"), "{seen:?}");
    let status = supervisor.status().await.expect("status");
    let error = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("exited with exit code 3"), "{status}");
}

#[tokio::test]
async fn a_first_start_still_gated_extends_the_start_timeout_instead_of_being_killed() {
    // Runs, but never answers a probe: like a first start stuck behind long migrations.
    let (_supervisor, notify) =
        under_systemd("exec sleep 600", &[("AIHUMMER_READY_TIMEOUT", "60s")]);
    let mut seen = String::new();
    wait_notified(
        &notify,
        &mut seen,
        Duration::from_secs(15),
        "two EXTEND_TIMEOUT_USEC",
        |s| s.matches("EXTEND_TIMEOUT_USEC=").count() >= 2,
    )
    .await;
    let usec: Vec<u64> = seen
        .split(['\n', ' '])
        .filter_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    // Each extension covers what is left of the 60s ready timeout, plus margins.
    assert!(usec.iter().all(|u| *u > 45_000_000), "{usec:?}");
    assert!(!seen.contains("READY=1"), "{seen:?}");
}

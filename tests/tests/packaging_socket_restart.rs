//! Restarting the supervisor itself (`systemctl restart aihummer`, for a changed supervisor
//! setting) refuses nothing when systemd holds the public socket (`aihummer.socket`):
//! clients queue in the held socket's backlog until the new supervisor's gateway accepts.
//! The harness holds the socket the way systemd does and passes it as fd 3 with
//! `LISTEN_FDS=1`/`LISTEN_FDNAMES=public`; the contrast runs the same restart with the
//! supervisor binding the port itself.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::time::Duration;

use aihummer_tests::supervisor::{Load, Sample, Supervisor};
use aihummer_tests::wait_for;
use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::Signal;

/// Keep-alive and fresh-connection workers, as in the handoff suite (fewer: one restart).
const KEEP_ALIVE: usize = 6;
const FRESH: usize = 4;
/// Bounds each worker; a refused connection fails fast, so the contrast spins through these.
const MAX_PER_WORKER: usize = 100_000;

/// Starts a supervisor: on a duplicate of `held` passed as fd 3 when given, else binding
/// `addr` itself.
fn supervisor(addr: &str, held: Option<&TcpListener>) -> Supervisor {
    let dir = tempfile::tempdir().expect("tempdir");
    match held {
        Some(listener) => {
            let fd = OwnedFd::from(listener.try_clone().expect("dup the held socket"));
            Supervisor::start_with(
                dir,
                &[
                    ("LISTEN_FDS", "1"),
                    ("LISTEN_FDNAMES", "public"),
                    ("AIHUMMER_GATEWAY_ADDR", addr),
                ],
                |cmd| {
                    cmd.fd_mappings(vec![FdMapping {
                        parent_fd: fd,
                        child_fd: 3,
                    }])
                    .expect("map the held socket to fd 3");
                },
            )
        }
        None => Supervisor::start_in(dir, &[("AIHUMMER_GATEWAY_ADDR", addr)]),
    }
}

/// Runs steady load on `addr`, SIGTERMs a serving supervisor, waits for it to exit, starts
/// a new one the same way, waits until the new gateway has served a share of the load,
/// and returns every sample.
async fn restart_under_load(addr: &str, held: Option<&TcpListener>) -> Vec<Sample> {
    let mut first = supervisor(addr, held);
    let old = first.wait_serving(Duration::from_secs(30)).await;
    let load = Load::start(&first.url("/v1/ping"), KEEP_ALIVE, FRESH, MAX_PER_WORKER);
    wait_for(
        Duration::from_secs(10),
        "the first gateway to serve",
        || async { (load.served_by(old) >= 200).then_some(()) },
    )
    .await;

    first.signal(Signal::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", first.logs());
    let second = supervisor(addr, held);
    let new = second.wait_serving(Duration::from_secs(30)).await;
    wait_for(
        Duration::from_secs(15),
        "the new gateway to serve",
        || async { (load.served_by(new) >= 200).then_some(()) },
    )
    .await;
    load.stop().await
}

fn failures(samples: &[Sample]) -> Vec<&String> {
    samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_supervisor_on_a_socket_systemd_holds_fails_no_request() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind the held socket");
    let addr = held.local_addr().expect("addr").to_string();
    let samples = restart_under_load(&addr, Some(&held)).await;
    let failed = failures(&samples);
    println!(
        "held socket: supervisor stopped and started under load: {} requests, {} failed",
        samples.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_held_socket_the_same_restart_refuses_connections() {
    let addr = format!("127.0.0.1:{}", aihummer_tests::free_port());
    let samples = restart_under_load(&addr, None).await;
    let failed = failures(&samples);
    let refused = failed
        .iter()
        .filter(|e| e.contains("ConnectionRefused") || e.contains("Connection refused"))
        .count();
    println!(
        "no held socket (contrast): supervisor stopped and started under load: {} requests, \
         {} failed, {refused} of them connection refused",
        samples.len(),
        failed.len()
    );
    // What aihummer.socket is for: without it the port has no listener between the two.
    assert!(
        refused > 0,
        "no refused connection: {:?}",
        &failed[..failed.len().min(5)]
    );
}

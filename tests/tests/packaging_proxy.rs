//! The shipped HAProxy configuration (`packaging/proxy/haproxy.cfg`, only its addresses
//! replaced) in front of three supervisors on one database, under a steady load of
//! keep-alive and fresh-connection clients through the proxy: each supervisor is stopped
//! (SIGTERM, as `systemctl restart` does) and started again, one at a time. With
//! `AIHUMMER_SHUTDOWN_DELAY` each node leaves rotation (`/readyz` 503) before it drains,
//! so no request fails. Needs `haproxy` (Debian's package; `.ci/run` installs it): skipped
//! with a loud message when it is missing, and failed instead under `CI=true`.

use std::time::{Duration, Instant};

use aihummer_tests::fleet::{Haproxy, haproxy_or_skip};
use aihummer_tests::supervisor::{Load, Supervisor};
use aihummer_tests::{TestDb, free_port, wait_for};
use nix::sys::signal::Signal;

fn node(db: &TestDb, port: u16) -> Supervisor {
    Supervisor::start(&[
        ("AIHUMMER_GATEWAY_ADDR", &format!("127.0.0.1:{port}")),
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_SHUTDOWN_DELAY", "2s"),
        ("AIHUMMER_DRAIN_TIMEOUT", "5s"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_each_node_behind_haproxy_one_at_a_time_fails_no_request() {
    let Some(haproxy) = haproxy_or_skip() else {
        return;
    };
    let db = TestDb::create().await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Supervisor> = ports.iter().map(|port| node(&db, *port)).collect();
    for node in &nodes {
        node.wait_serving(Duration::from_secs(60)).await;
    }
    let proxy = Haproxy::start(haproxy, &ports).await;
    let url = proxy.url("/v1/ping");
    let load = Load::start(&url, 4, 2, 1_000_000);
    let gateways = wait_for(
        Duration::from_secs(20),
        "traffic on all three nodes",
        || async {
            let mut pids = Vec::new();
            for node in &nodes {
                let status = node.status().await?;
                let pid = u32::try_from(status["active"]["pid"].as_u64()?).ok()?;
                (load.served_by(pid) > 0).then_some(())?;
                pids.push(pid);
            }
            Some(pids)
        },
    )
    .await;

    let started = Instant::now();
    for (i, port) in ports.iter().enumerate() {
        let stopping = Instant::now();
        nodes[i].signal(Signal::SIGTERM);
        let exit = nodes[i].wait_exit(Duration::from_secs(30)).await;
        assert_eq!(exit.code(), Some(0), "node {} exits cleanly", i + 1);
        nodes[i] = node(&db, *port);
        let new = nodes[i].wait_serving(Duration::from_secs(60)).await;
        wait_for(
            Duration::from_secs(20),
            "traffic on the restarted node",
            || async { (load.served_by(new) > 0).then_some(()) },
        )
        .await;
        println!(
            "node {} (was pid {}) out of rotation and back, serving as pid {new}, in {:?}",
            i + 1,
            gateways[i],
            stopping.elapsed()
        );
    }
    let samples = load.stop().await;
    let failures: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    println!(
        "rolling restart of 3 nodes behind haproxy in {:?}: {} requests, {} failed",
        started.elapsed(),
        samples.len(),
        failures.len()
    );
    let log = proxy.log();
    assert!(
        failures.is_empty(),
        "failed requests: {:?}\nhaproxy:\n{log}",
        &failures[..failures.len().min(3)]
    );
    // Each node left rotation because its /readyz said so while it still served, not
    // because connections to it started failing.
    for i in 1..=3 {
        let through_readyz = log.lines().any(|l| {
            l.contains(&format!("aihummer/node{i} is DOWN"))
                && l.contains("Layer7 wrong status, code: 503")
        });
        assert!(
            through_readyz,
            "node{i} left rotation through /readyz:\n{log}"
        );
    }
}

//! A slowloris flood on the public port does not delay a handoff: the old gateway's drain
//! ends slow clients within a few seconds, however long `AIHUMMER_DRAIN_TIMEOUT` is, and
//! well-behaved clients see no failure throughout.

use std::time::Duration;

use aihummer_tests::slowloris::{Flood, Trickle};
use aihummer_tests::supervisor::{Load, Supervisor, accepted_connections, alive};
use aihummer_tests::{TestDb, wait_for};
use serde_json::Value;
use tokio::time::Instant;

const SLOW: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_does_not_delay_a_handoff_and_steady_clients_see_no_failure() {
    let db = TestDb::create().await;
    // Read timeouts longer than the drain: only the drain itself may end the slow clients.
    let supervisor = Supervisor::start(&[
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_DRAIN_TIMEOUT", "30s"),
        ("AIHUMMER_HEADER_READ_TIMEOUT", "60s"),
        ("AIHUMMER_BODY_READ_TIMEOUT", "60s"),
    ]);
    let old = supervisor.wait_serving(Duration::from_secs(30)).await;

    let every = Duration::from_secs(1);
    let headers = Flood::open(supervisor.addr, SLOW, Trickle::Headers, every).await;
    let bodies = Flood::open(supervisor.addr, SLOW, Trickle::Body, every).await;
    wait_for(
        Duration::from_secs(10),
        "the old gateway to take the whole flood",
        || async { (accepted_connections(old, supervisor.addr.port()) >= 2 * SLOW).then_some(()) },
    )
    .await;
    let load = Load::start(&supervisor.url("/v1/ping"), 4, 2, 100_000);
    wait_for(
        Duration::from_secs(10),
        "the old gateway to serve the load",
        || async { (load.served_by(old) >= 50).then_some(()) },
    )
    .await;

    let started = Instant::now();
    let out = supervisor.cli(&["restart", "--json"]).await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "restart failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        supervisor.logs()
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("restart --json output");
    assert_eq!(report["old_pid"], old);
    assert!(!alive(old), "the old gateway is gone when restart returns");
    assert!(
        took < Duration::from_secs(10),
        "the handoff took {took:?} with a 30s drain deadline: slow clients held it"
    );

    let new = report["new_pid"].as_u64().expect("new_pid") as u32;
    wait_for(
        Duration::from_secs(10),
        "the new gateway to serve the load",
        || async { (load.served_by(new) >= 50).then_some(()) },
    )
    .await;
    let samples = load.stop().await;
    let failures: Vec<_> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(5)]
    );
    wait_for(
        Duration::from_secs(5),
        "the slow clients to see their end",
        || async { (headers.closed() == SLOW && bodies.closed() == SLOW).then_some(()) },
    )
    .await;
    assert_eq!(
        bodies.answers(),
        vec![408; SLOW],
        "trickling bodies are answered 408"
    );
}

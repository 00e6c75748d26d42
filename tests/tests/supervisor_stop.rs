//! Stopping the supervisor drains its gateway: a request in flight completes, the
//! supervisor exits 0, and no gateway outlives it.

use std::time::Duration;

use aihummer_tests::supervisor::{Supervisor, accepted_connections, alive, children_of};
use aihummer_tests::{TestDb, wait_for};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero_leaving_no_gateway() {
    let db = TestDb::create().await;
    let mut supervisor = Supervisor::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;
    assert_eq!(children_of(supervisor.pid()), vec![gateway]);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let url = supervisor.url("/v1/ping?delay_ms=3000");
    let slow = tokio::spawn(async move {
        let response = client.get(&url).send().await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    // Signal only once the gateway holds the connection: one still in the listen queue
    // would be lost with the supervisor's socket, which is not what this test is about.
    let port = supervisor.addr.port();
    wait_for(
        Duration::from_secs(5),
        "the gateway to accept the slow request",
        || async { (accepted_connections(gateway, port) > 0).then_some(()) },
    )
    .await;
    supervisor.signal(Signal::SIGTERM);

    let (status, body) = slow
        .await
        .expect("request task")
        .expect("the slow request completes");
    assert_eq!(status, 200);
    assert_eq!(body["pid"], gateway);
    let exit = supervisor.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "log:\n{}", supervisor.logs());
    assert!(!alive(gateway), "the gateway is gone");
    assert!(
        !supervisor.socket.exists(),
        "the control socket file is removed"
    );
}

#[tokio::test]
async fn a_supervisor_killed_outright_leaves_no_gateway_behind() {
    let mut supervisor = Supervisor::start(&[]);
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;
    supervisor.signal(Signal::SIGKILL);
    supervisor.wait_exit(Duration::from_secs(5)).await;
    wait_for(
        Duration::from_secs(10),
        "the orphaned gateway to exit",
        || async { (!alive(gateway)).then_some(()) },
    )
    .await;
}

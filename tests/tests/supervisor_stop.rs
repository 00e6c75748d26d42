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

/// A slow request (longer than the drain timeout) to the public port, in the background.
fn slow_request(supervisor: &Supervisor) -> tokio::task::JoinHandle<()> {
    let url = supervisor.url("/v1/ping?delay_ms=20000");
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        // Cut short by the drain deadline: its outcome is not what this test is about.
        let _ = client.get(&url).send().await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_handoff_drains_both_gateways_under_one_deadline() {
    let mut supervisor = Supervisor::start(&[("AIHUMMER_DRAIN_TIMEOUT", "5s")]);
    let old = supervisor.wait_serving(Duration::from_secs(30)).await;
    let port = supervisor.addr.port();
    let _on_old = slow_request(&supervisor);
    wait_for(
        Duration::from_secs(5),
        "the old gateway to hold a slow request",
        || async { (accepted_connections(old, port) > 0).then_some(()) },
    )
    .await;
    let socket = supervisor.socket.clone();
    let restart =
        tokio::spawn(async move { aihummer_tests::supervisor::cli(&socket, &["restart"]).await });
    let new = wait_for(
        Duration::from_secs(15),
        "the switch to a new gateway",
        || async {
            let status = supervisor.status().await?;
            status["draining"]["pid"].as_u64()?;
            status["active"]["pid"]
                .as_u64()
                .map(|p| u32::try_from(p).expect("pid"))
        },
    )
    .await;
    let _on_new = slow_request(&supervisor);
    wait_for(
        Duration::from_secs(5),
        "the new gateway to hold a slow request",
        || async { (accepted_connections(new, port) > 0).then_some(()) },
    )
    .await;

    let stopped = std::time::Instant::now();
    supervisor.signal(Signal::SIGTERM);
    let exit = supervisor.wait_exit(Duration::from_secs(20)).await;
    let took = stopped.elapsed();
    println!("stop during a handoff: exited after {took:?}");
    assert_eq!(exit.code(), Some(0), "log:\n{}", supervisor.logs());
    // One deadline for both drains: the drain timeout plus the supervisor's 2s grace. In
    // turn, the second drain would only start after the first had ended.
    assert!(
        took < Duration::from_secs(7),
        "took {took:?}; log:\n{}",
        supervisor.logs()
    );
    assert!(
        !alive(old) && !alive(new),
        "no gateway outlives the supervisor"
    );
    let restart = restart.await.expect("restart task");
    assert!(
        restart.status.success(),
        "the handoff itself completed: {}",
        String::from_utf8_lossy(&restart.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_a_shutdown_delay_leaves_rotation_first_and_keeps_serving_meanwhile() {
    let db = TestDb::create().await;
    let mut supervisor = Supervisor::start(&[
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_SHUTDOWN_DELAY", "3s"),
    ]);
    let gateway = supervisor.wait_serving(Duration::from_secs(30)).await;
    let client = aihummer_tests::http();
    let (ready, _) = aihummer_tests::get_json(&client, &supervisor.url("/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(ready, 200);

    let stopped = std::time::Instant::now();
    supervisor.signal(Signal::SIGTERM);
    let body = wait_for(Duration::from_secs(2), "/readyz to answer 503", || async {
        let (status, body) = aihummer_tests::get_json(&client, &supervisor.url("/readyz")).await?;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["reason"], "shutting down", "{body}");
    // Out of rotation, but every request that still arrives is served, on fresh
    // connections too, until the delay is over.
    let mut served = 0;
    while stopped.elapsed() < Duration::from_millis(2500) {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let (status, body) = aihummer_tests::get_json(&fresh, &supervisor.url("/v1/ping"))
            .await
            .expect("a request during the shutdown delay is served");
        assert_eq!(
            (status, body["pid"].as_u64()),
            (200, Some(u64::from(gateway)))
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        supervisor.child.try_wait().expect("try_wait").is_none(),
        "the supervisor waits out the delay"
    );
    let exit = supervisor.wait_exit(Duration::from_secs(15)).await;
    let took = stopped.elapsed();
    println!("shutdown delay: {served} requests served out of rotation; exited after {took:?}");
    assert_eq!(exit.code(), Some(0), "log:\n{}", supervisor.logs());
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(!alive(gateway));
}

//! A gateway that dies is replaced; clients that connect meanwhile wait in the listen
//! queue the supervisor keeps open, and get their answer from the new gateway.

use std::time::Duration;

use aihummer_tests::supervisor::{Supervisor, alive, send};
use aihummer_tests::{TestDb, http, wait_for};
use nix::sys::signal::Signal;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_replaced_within_the_backoff_and_requests_meanwhile_wait_instead_of_failing()
 {
    let db = TestDb::create().await;
    let supervisor = Supervisor::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let old = supervisor.wait_serving(Duration::from_secs(30)).await;

    send(old, Signal::SIGKILL);
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the killed gateway to be gone",
        || async { (!alive(old)).then_some(()) },
    )
    .await;
    // Requests sent right after the kill, each on a fresh connection.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut requests = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        let url = supervisor.url("/v1/ping");
        requests.push(tokio::spawn(async move {
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let body: serde_json::Value = response.json().await.map_err(|e| format!("{e:?}"))?;
            Ok::<_, String>((body["pid"].as_u64(), Instant::now()))
        }));
    }
    let mut answered_by = Vec::new();
    let mut last = killed;
    for request in requests {
        let (pid, at) = request
            .await
            .expect("request task")
            .expect("a request made during the restart succeeds");
        answered_by.push(pid.expect("pid"));
        last = last.max(at);
    }
    let new = answered_by[0] as u32;
    assert_ne!(new, old);
    assert!(
        answered_by.iter().all(|p| *p == u64::from(new)),
        "{answered_by:?}"
    );
    // The first restart waits 100ms; startup adds a little. Well within a few seconds.
    let waited = last - killed;
    println!("requests sent after the kill were answered within {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    let serving = supervisor.wait_serving(Duration::from_secs(10)).await;
    assert_eq!(serving, new);
    let status = supervisor.status().await.expect("status");
    assert_eq!(status["crash_restarts"], 1);
    let reason = status["last_error"]["message"]
        .as_str()
        .expect("last_error");
    assert!(
        reason.contains(&format!("gateway pid {old} exited with signal 9")),
        "{reason}"
    );
    // Normal requests keep working.
    let (code, _) = aihummer_tests::get_json(&http(), &supervisor.url("/v1/ping"))
        .await
        .expect("ping");
    assert_eq!(code, 200);
}

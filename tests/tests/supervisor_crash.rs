//! A gateway that dies is replaced; clients that connect meanwhile wait in the listen
//! queue the supervisor keeps open, and get their answer from the new gateway.

use std::time::Duration;

use aihummer_tests::supervisor::{Supervisor, alive, install_script, send};
use aihummer_tests::{TestDb, binary, get_json, http, wait_for};
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// How long the replacement gateway takes before it even starts, so that the requests
/// below certainly arrive while no gateway runs.
const SLOW_START: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_replaced_within_the_backoff_and_requests_meanwhile_wait_instead_of_failing()
 {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("gateway");
    let real = binary("aihummer-gateway");
    install_script(&script, &format!("exec {} \"$@\"", real.display()));
    let supervisor = Supervisor::start_in(
        dir,
        &[
            ("AIHUMMER_DATABASE_URL", &db.url()),
            ("AIHUMMER_GATEWAY_BIN", script.to_str().expect("utf-8 path")),
        ],
    );
    let old = supervisor.wait_serving(Duration::from_secs(30)).await;
    install_script(
        &script,
        &format!(
            "sleep {}; exec {} \"$@\"",
            SLOW_START.as_secs(),
            real.display()
        ),
    );

    send(old, Signal::SIGKILL);
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the killed gateway to be gone",
        || async { (!alive(old)).then_some(()) },
    )
    .await;
    // Requests sent while no gateway runs, each on a fresh connection.
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
    let sent = Instant::now();
    let mut answered_by = Vec::new();
    let mut first = None::<Instant>;
    let mut last = killed;
    for request in requests {
        let (pid, at) = request
            .await
            .expect("request task")
            .expect("a request made while no gateway runs succeeds");
        answered_by.push(pid.expect("pid"));
        first = Some(first.map_or(at, |f| f.min(at)));
        last = last.max(at);
    }
    let new = answered_by[0] as u32;
    assert_ne!(new, old);
    assert!(
        answered_by.iter().all(|p| *p == u64::from(new)),
        "{answered_by:?}"
    );
    let waited = first.expect("answers") - sent;
    assert!(
        waited >= SLOW_START / 2,
        "the requests waited in the queue: {waited:?}"
    );
    // Backoff (100ms) plus the slow start plus the gateway's own start.
    let recovered = last - killed;
    println!(
        "requests sent after the kill waited {waited:?}; all answered {recovered:?} after the kill"
    );
    assert!(
        recovered < SLOW_START + Duration::from_secs(4),
        "{recovered:?}"
    );

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
    let (code, _) = get_json(&http(), &supervisor.url("/v1/ping"))
        .await
        .expect("ping");
    assert_eq!(code, 200);
}

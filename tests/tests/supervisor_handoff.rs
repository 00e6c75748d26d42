//! Zero-downtime restarts: `aihummer restart` hands off to a new gateway while clients keep
//! sending requests, and not one of them fails.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aihummer_tests::supervisor::{
    Load, Supervisor, alive, children_of, cli, install_script, rss_kib,
};
use aihummer_tests::{TestDb, wait_for};
use serde_json::Value;
use tokio::time::Instant;

const RESTARTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_restarts_under_steady_load_fail_no_request_and_every_answer_comes_from_a_live_gateway()
 {
    let db = TestDb::create().await;
    let supervisor = Supervisor::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let first = supervisor.wait_serving(Duration::from_secs(30)).await;
    let idle_rss = rss_kib(supervisor.pid()).expect("supervisor VmRSS");

    // 24 workers on keep-alive connections, 8 opening a fresh connection per request.
    let load = Load::start(&supervisor.url("/v1/ping"), 24, 8, 50_000);
    let mut gateways = vec![first];
    // When each gateway was reported gone (the restart that replaced it returned).
    let mut gone_at: HashMap<u32, Instant> = HashMap::new();
    let mut durations = Vec::new();
    for round in 0..RESTARTS {
        // Each gateway takes a share of the load before it is replaced.
        let current = *gateways.last().expect("a gateway");
        wait_for(
            Duration::from_secs(10),
            "the active gateway to serve the load",
            || async { (load.served_by(current) >= 200).then_some(()) },
        )
        .await;
        let out = supervisor.cli(&["restart", "--json"]).await;
        let returned = Instant::now();
        assert!(
            out.status.success(),
            "restart {round} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            supervisor.logs()
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("restart --json output");
        let old = report["old_pid"].as_u64().expect("old_pid") as u32;
        let new = report["new_pid"].as_u64().expect("new_pid") as u32;
        assert_eq!(
            Some(&old),
            gateways.last(),
            "round {round} replaced the active gateway"
        );
        assert!(
            !alive(old),
            "the old gateway {old} is gone when restart returns"
        );
        assert!(alive(new), "the new gateway {new} runs");
        gone_at.insert(old, returned);
        gateways.push(new);
        durations.push(report["duration_ms"].as_u64().expect("duration_ms"));
    }
    let samples = load.stop().await;

    let failures: Vec<_> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    let keep_alive = samples.iter().filter(|s| s.keep_alive).count();
    let fresh = samples.len() - keep_alive;
    let known: BTreeSet<u32> = gateways.iter().copied().collect();
    let mut strangers = Vec::new();
    let mut after_exit = 0;
    for sample in &samples {
        if let Ok(pid) = sample.outcome {
            if !known.contains(&pid) {
                strangers.push(pid);
            }
            if gone_at.get(&pid).is_some_and(|gone| sample.sent > *gone) {
                after_exit += 1;
            }
        }
    }
    durations.sort_unstable();
    println!(
        "{} requests ({keep_alive} keep-alive, {fresh} fresh connections), {} failed; \
         handoff ms: median {}, worst {}, all {durations:?}; supervisor VmRSS idle {idle_rss} KiB, \
         after the run {} KiB",
        samples.len(),
        failures.len(),
        durations[durations.len() / 2],
        durations[durations.len() - 1],
        rss_kib(supervisor.pid()).unwrap_or_default(),
    );
    assert!(
        failures.is_empty(),
        "{} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        strangers.is_empty(),
        "answers from processes the supervisor never ran: {strangers:?}"
    );
    assert_eq!(
        after_exit, 0,
        "requests sent after a gateway was reported gone were answered by it"
    );
    assert!(
        keep_alive > 1000 && fresh > 200,
        "the load was steady: {keep_alive} keep-alive, {fresh} fresh"
    );
    let served: BTreeSet<u32> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().copied())
        .collect();
    assert!(
        served.len() > RESTARTS,
        "every gateway served: answers came from {} gateways",
        served.len()
    );
}

#[tokio::test]
async fn a_restart_asked_for_during_a_handoff_joins_it_instead_of_starting_a_second_candidate() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("gateway");
    let real = aihummer_tests::binary("aihummer-gateway");
    install_script(&script, &format!("exec {} \"$@\"", real.display()));
    let supervisor = Supervisor::start_in(
        dir,
        &[
            ("AIHUMMER_DATABASE_URL", &db.url()),
            ("AIHUMMER_GATEWAY_BIN", script.to_str().expect("utf-8 path")),
        ],
    );
    let old = supervisor.wait_serving(Duration::from_secs(30)).await;
    // The next candidate takes a second before it starts, so the handoff lasts long
    // enough for a second request to arrive while it runs.
    install_script(&script, &format!("sleep 1; exec {} \"$@\"", real.display()));

    let socket = supervisor.socket.clone();
    let first = tokio::spawn(async move { cli(&socket, &["restart", "--json"]).await });
    wait_for(
        Duration::from_secs(5),
        "the handoff to be under way",
        || async {
            let status = supervisor.status().await?;
            (status["state"] == "handing_off").then_some(())
        },
    )
    .await;
    let second = supervisor.cli(&["restart"]).await;
    let first = first.await.expect("first restart task");

    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let report: Value = serde_json::from_slice(&first.stdout).expect("restart --json output");
    let new = report["new_pid"].as_u64().expect("new_pid") as u32;
    assert_eq!(report["old_pid"], old);
    let progress = String::from_utf8_lossy(&second.stderr);
    assert!(progress.contains("already under way"), "{progress}");
    let summary = String::from_utf8_lossy(&second.stdout);
    assert!(
        summary.contains(&format!("gateway pid {new}")),
        "the same handoff's result: {summary}"
    );
    assert_eq!(
        children_of(supervisor.pid()),
        vec![new],
        "one candidate was started, not two"
    );
}

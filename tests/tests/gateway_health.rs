//! Health, readiness and startup of a real gateway process against a real PostgreSQL.

use std::time::Duration;

use aihummer_tests::supervisor::Supervisor;
use aihummer_tests::{Gateway, Proxy, TestDb, binary, free_port, get_json, http, wait_for};

fn version_of(name: &str) -> String {
    let out = std::process::Command::new(binary(name))
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[tokio::test]
async fn without_a_database_the_gateway_serves_health_only() {
    let gw = Gateway::start(&[]);
    let client = http();
    let health = gw.wait_healthy(Duration::from_secs(10)).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "health-only");
    assert_eq!(health["pid"], gw.pid());
    assert_eq!(health["leader"], false);
    assert_eq!(health["draining"], false);
    let version = version_of("aihummer-gateway");
    assert_eq!(
        format!("aihummer-gateway {}", health["version"].as_str().unwrap()),
        version
    );

    let (status, ready) = get_json(&client, &gw.url("/readyz"))
        .await
        .expect("/readyz");
    assert_eq!(status, 503);
    assert_eq!(ready["ready"], false);
    let reason = ready["reason"].as_str().unwrap();
    assert!(
        reason.contains("health-only") && reason.contains("AIHUMMER_DATABASE_URL"),
        "{reason}"
    );

    let (status, ping) = get_json(&client, &gw.url("/v1/ping"))
        .await
        .expect("/v1/ping");
    assert_eq!((status, &ping["pong"]), (200, &serde_json::json!(true)));
}

#[tokio::test]
async fn ready_answers_with_the_processes_own_pid_and_version() {
    let db = TestDb::create().await;
    let gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let ready = gw.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["pid"], gw.pid());
    let line = version_of("aihummer-gateway");
    assert_eq!(ready["version"].as_str(), line.split(' ').nth(1));
    let (_, health) = get_json(&http(), &gw.url("/healthz"))
        .await
        .expect("/healthz");
    assert_eq!(health["mode"], "full");
    assert_eq!(health["phase"], "ready");
}

#[tokio::test]
async fn errors_are_json_with_a_code_and_never_a_500() {
    let gw = Gateway::start(&[]);
    let client = http();
    gw.wait_healthy(Duration::from_secs(10)).await;
    for (method, path, status, code) in [
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", "/v1/ping", 405, "method_not_allowed"),
        ("GET", "/v1/ping?delay_ms=soon", 400, "bad_query"),
        ("GET", "/v1/ping?delay_ms=999999", 400, "bad_query"),
    ] {
        let response = client
            .request(method.parse().unwrap(), gw.url(path))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[tokio::test]
async fn an_unreachable_database_is_reported_and_the_gateway_recovers_by_itself() {
    let db = TestDb::create().await;
    let mut proxy = Proxy::new();
    let gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &proxy.url(&db))]);
    let client = http();

    let reason = wait_for(
        Duration::from_secs(10),
        "a 503 naming the database",
        || async {
            match get_json(&client, &gw.url("/readyz")).await {
                Some((503, body)) => body["reason"]
                    .as_str()
                    .filter(|r| r.contains("database unavailable"))
                    .map(str::to_string),
                _ => None,
            }
        },
    )
    .await;
    assert!(reason.contains("database unavailable"), "{reason}");
    assert_eq!(
        get_json(&client, &gw.url("/healthz"))
            .await
            .expect("healthz")
            .0,
        200
    );

    proxy.start().await;
    gw.wait_ready(Duration::from_secs(30)).await;

    // Losing the database after startup turns readiness off, and its return turns it on.
    proxy.stop().await;
    wait_for(
        Duration::from_secs(10),
        "a 503 while the database is gone",
        || async {
            match get_json(&client, &gw.url("/readyz")).await {
                Some((503, body)) => body["reason"].as_str().map(str::to_string),
                _ => None,
            }
        },
    )
    .await;
    proxy.start().await;
    gw.wait_ready(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn passwords_in_database_urls_never_reach_the_logs() {
    let mut proxy = Proxy::new();
    proxy.stop().await;
    let url = format!(
        "postgres://someone:hunter2secret@127.0.0.1:{}/nowhere",
        proxy.port
    );
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &url),
        ("AIHUMMER_DB_APP_URL", &url),
    ]);
    let client = http();
    wait_for(
        Duration::from_secs(10),
        "a 503 naming the database",
        || async {
            match get_json(&client, &gw.url("/readyz")).await {
                Some((503, body)) if body["reason"].as_str()?.contains("database unavailable") => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    let logs = gw.logs();
    assert!(
        logs.contains("someone@127.0.0.1"),
        "the target is logged: {logs}"
    );
    assert!(
        !logs.contains("hunter2secret"),
        "the password leaked: {logs}"
    );
}

#[tokio::test]
async fn a_bad_setting_stops_the_gateway_with_a_message_naming_it() {
    let mut gw = Gateway::start(&[("AIHUMMER_DRAIN_TIMEOUT", "whenever")]);
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1));
    let logs = gw.logs();
    assert!(
        logs.contains("AIHUMMER_DRAIN_TIMEOUT") && logs.contains("whenever"),
        "{logs}"
    );
}

#[tokio::test]
async fn an_absurd_duration_is_a_startup_error_naming_the_variable_and_its_maximum() {
    let mut gw = Gateway::start(&[("AIHUMMER_DRAIN_TIMEOUT", "1000000000000s")]);
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await.code(), Some(1));
    let logs = gw.logs();
    assert!(
        logs.contains("AIHUMMER_DRAIN_TIMEOUT")
            && logs.contains("1000000000000s")
            && logs.contains("is more than the maximum of 1h"),
        "{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

/// `/readyz`'s reason on `base`, once it is a 503 whose reason `accept` takes.
async fn not_ready_reason(base: &str, accept: impl Fn(&str) -> bool) -> String {
    let url = format!("{base}/readyz");
    wait_for(Duration::from_secs(15), "a 503 from /readyz", || async {
        match get_json(&http(), &url).await {
            Some((503, body)) => body["reason"]
                .as_str()
                .filter(|r| accept(r))
                .map(str::to_string),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn the_public_readyz_hides_database_errors_which_the_operator_listener_and_the_log_keep() {
    let db = TestDb::create().await;
    let mut proxy = Proxy::new();
    let operator = format!("http://127.0.0.1:{}", free_port());
    let metrics = operator.trim_start_matches("http://").to_string();
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &proxy.url(&db)),
        ("AIHUMMER_METRICS_ADDR", &metrics),
    ]);
    let detail = not_ready_reason(&operator, |r| r.starts_with("database unavailable: ")).await;
    let public = not_ready_reason(&gw.url(""), |r| r.contains("database")).await;
    assert_eq!(public, "database unavailable", "operator saw: {detail}");

    // Lost after startup: the same generic answer in public, the detail in private, and
    // one WARN line per change rather than one per probe.
    proxy.start().await;
    gw.wait_ready(Duration::from_secs(30)).await;
    proxy.stop().await;
    let detail = not_ready_reason(&operator, |r| r.starts_with("database unreachable: ")).await;
    for _ in 0..4 {
        let public = not_ready_reason(&gw.url(""), |r| r.contains("database")).await;
        assert_eq!(public, "database unavailable", "operator saw: {detail}");
    }
    let logs = gw.logs();
    let warnings = logs.matches("database unreachable; not ready").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings: {logs}");
}

#[tokio::test]
async fn outbox_counts_are_served_on_the_operator_listener_and_not_in_public() {
    let db = TestDb::create().await;
    let operator = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_METRICS_ADDR", &operator),
    ]);
    gw.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    let (status, body) = get_json(&client, &gw.url("/v1/outbox/stats"))
        .await
        .expect("an answer");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, stats) = get_json(&client, &format!("http://{operator}/v1/outbox/stats"))
        .await
        .expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(stats["pending"], 0);
    let (status, ready) = get_json(&client, &format!("http://{operator}/readyz"))
        .await
        .expect("an answer");
    assert_eq!(
        (status, ready["pid"].as_u64()),
        (200, Some(u64::from(gw.pid())))
    );
}

#[tokio::test]
async fn the_webhook_url_is_logged_without_its_credentials_or_query_string() {
    let db = TestDb::create().await;
    let port = free_port();
    let hook = format!("http://bot:hunter2secret@127.0.0.1:{port}/hook?token=qs3cret");
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_REPLY_WEBHOOK_URL", &hook),
    ]);
    gw.wait_ready(Duration::from_secs(30)).await;
    let logs = wait_for(Duration::from_secs(10), "the delivery log line", || async {
        let logs = gw.logs();
        logs.contains("delivering replies").then_some(logs)
    })
    .await;
    let shown = format!("http://redacted@127.0.0.1:{port}/hook?redacted");
    assert!(logs.contains(&shown), "{logs}");
    assert!(
        !logs.contains("hunter2secret") && !logs.contains("qs3cret"),
        "{logs}"
    );
}

/// A supervised gateway takes client traffic only once the supervisor's probe has seen it
/// ready, so the first 200 from the public `/readyz` never comes before `aihummer status`
/// names the gateway that sent it as the active one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_supervisor_a_public_readyz_200_means_status_already_shows_the_gateway_active() {
    let db = TestDb::create().await;
    let client = http();
    for round in 0..5 {
        let supervisor = Supervisor::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
        // Until a gateway accepts, a request waits in the supervisor's listen queue (or is
        // refused before the supervisor has bound the port).
        let url = supervisor.url("/readyz");
        let pid = wait_for(
            Duration::from_secs(30),
            "the public /readyz to answer 200",
            || async {
                let (status, ready) = get_json(&client, &url).await?;
                (status == 200).then(|| ready["pid"].as_u64()).flatten()
            },
        )
        .await;
        let status = supervisor.status().await.expect("aihummer status --json");
        assert_eq!(
            status["active"]["pid"].as_u64(),
            Some(pid),
            "round {round}: the public /readyz answered 200 from gateway {pid}, but status \
             shows {}\n{}",
            status["active"],
            supervisor.logs()
        );
    }
}

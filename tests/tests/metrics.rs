//! Prometheus metrics from real processes after real traffic, a handoff and an outbox
//! delivery: `promtool check metrics` accepts both outputs (a gateway alone, and a node
//! under a supervisor), the counters moved, and the sample Grafana dashboard uses only
//! metrics a real scrape contains.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use aihummer_tests::supervisor::Supervisor;
use aihummer_tests::{
    Gateway, INBOUND_SECRET, Receiver, TestDb, free_port, http, post_inbound, wait_for,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const WORKSPACE: &str = "2b1f5d8e-3c4a-4e6f-9a7b-0c1d2e3f4a5b";

/// `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`, installed by .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scrape(url: &str) -> String {
    let response = http().get(url).send().await.expect("scrape");
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.expect("metrics body")
}

/// The value of the sample written exactly as `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `url` until `series` reaches at least `at_least`; returns that scrape.
async fn scrape_until(url: &str, series: &str, at_least: f64) -> String {
    wait_for(Duration::from_secs(30), series, || async {
        let text = scrape(url).await;
        (sample(&text, series).is_some_and(|v| v >= at_least)).then_some(text)
    })
    .await
}

/// The sample names of a scrape.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next().map(str::to_string))
        .collect()
}

/// Every metric name in the dashboard's `expr` fields.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana-dashboard.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("json");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has its queries: {exprs:?}"
    );
    exprs
        .iter()
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|word| word.starts_with("aihummer_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

fn inbound_env<'a>(db: &'a str, hook: &'a str, metrics: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AIHUMMER_DATABASE_URL", db),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
        ("AIHUMMER_REPLY_WEBHOOK_URL", hook),
        ("AIHUMMER_METRICS_ADDR", metrics),
    ]
}

#[tokio::test]
async fn a_gateway_alone_serves_lint_clean_metrics_counting_its_requests_and_deliveries() {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let (url, hook) = (db.url(), receiver.url());
    let operator = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&inbound_env(&url, &hook, &operator));
    gw.wait_ready(Duration::from_secs(30)).await;
    let message = json!({"channel": "sms", "external_id": "m-1", "text": "hello"});
    let (status, _) = post_inbound(&http(), &gw.url(""), &message, Some("metrics-1"))
        .await
        .expect("post");
    assert_eq!(status, 200);
    let public = http().get(gw.url("/metrics")).send().await.expect("get");
    assert_eq!(public.status(), 404, "never on the public listener");

    let metrics = format!("http://{operator}/metrics");
    // The lag is observed once the delivery is recorded, a few milliseconds after the
    // attempt itself (outcomes are recorded in batches): wait for that, the later event.
    let text = scrape_until(
        &metrics,
        "aihummer_gateway_outbox_delivery_lag_seconds_count",
        1.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "aihummer_gateway_outbox_delivery_attempts_total{outcome=\"delivered\"}"
        ),
        Some(1.0)
    );
    promtool_check(&text);
    let series = [
        (
            "aihummer_gateway_http_requests_total{listener=\"public\",route=\"/v1/inbound/generic\",status=\"200\"}",
            1.0,
        ),
        (
            "aihummer_gateway_http_requests_total{listener=\"public\",route=\"/metrics\",status=\"404\"}",
            1.0,
        ),
        ("aihummer_gateway_outbox_delivery_lag_seconds_count", 1.0),
        ("aihummer_gateway_outbox_read_ok", 1.0),
        ("aihummer_gateway_leader", 1.0),
        ("aihummer_gateway_draining", 0.0),
    ];
    for (series, value) in series {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(sample(&text, "aihummer_gateway_schema_version").is_some_and(|v| v >= 5.0));
    let delivered = "aihummer_gateway_outbox_replies{state=\"delivered\"}";
    let text = scrape_until(&metrics, delivered, 1.0).await;
    assert_eq!(sample(&text, delivered), Some(1.0));
    assert!(text.contains(&format!(
        "aihummer_gateway_build_info{{version=\"{}\"}} 1",
        gw_version(&gw).await
    )));
}

async fn gw_version(gw: &Gateway) -> String {
    let health: Value = http()
        .get(gw.url("/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    health["version"].as_str().expect("version").to_string()
}

#[tokio::test]
async fn a_supervised_node_is_one_lint_clean_scrape_target_counting_its_handoffs_and_checks() {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let (url, hook) = (db.url(), receiver.url());
    let node = format!("127.0.0.1:{}", free_port());
    let mut env = inbound_env(&url, &hook, &node);
    // A CDN that is not there: every check fails, and is counted as such.
    env.push((
        "AIHUMMER_DOWNLOAD_BASE_URL",
        "file:///nonexistent-aihummer-cdn",
    ));
    env.push(("AIHUMMER_AUTO_UPDATE", "check"));
    let supervisor = Supervisor::start(&env);
    let first = supervisor.wait_serving(Duration::from_secs(30)).await;
    let metrics = format!("http://{node}/metrics");

    let out = supervisor.cli(&["restart", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("restart --json");
    let new = report["new_pid"].as_u64().expect("new_pid");
    assert_ne!(new, u64::from(first));
    supervisor.signal(Signal::SIGHUP);
    let message = json!({"channel": "sms", "external_id": "m-2", "text": "after the handoff"});
    let (status, _) = post_inbound(&http(), &supervisor.url(""), &message, Some("metrics-2"))
        .await
        .expect("post");
    assert_eq!(status, 200);

    let text = scrape_until(
        &metrics,
        "aihummer_gateway_outbox_delivery_attempts_total{outcome=\"delivered\"}",
        1.0,
    )
    .await;
    let text = if sample(
        &text,
        "aihummer_supervisor_update_checks_total{outcome=\"failed\"}",
    )
    .is_some()
    {
        text
    } else {
        scrape_until(
            &metrics,
            "aihummer_supervisor_update_checks_total{outcome=\"failed\"}",
            1.0,
        )
        .await
    };
    promtool_check(&text);
    let series = [
        (
            "aihummer_supervisor_handoffs_total{kind=\"restart\",outcome=\"success\"}",
            1.0,
        ),
        (
            "aihummer_supervisor_handoffs_total{kind=\"start\",outcome=\"success\"}",
            1.0,
        ),
        (
            "aihummer_supervisor_handoff_duration_seconds_count{kind=\"restart\"}",
            1.0,
        ),
        ("aihummer_supervisor_gateway_scrape_ok", 1.0),
        ("aihummer_supervisor_gateway_crashes_total", 0.0),
        (
            "aihummer_supervisor_update_last_success_timestamp_seconds",
            0.0,
        ),
        (
            "aihummer_gateway_http_requests_total{listener=\"public\",route=\"/v1/inbound/generic\",status=\"200\"}",
            1.0,
        ),
    ];
    for (series, value) in series {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        text.lines().any(
            |line| line.starts_with("aihummer_supervisor_active_gateway_info{")
                && line.contains(&format!("pid=\"{new}\""))
        ),
        "the serving gateway is the new one:\n{text}"
    );
    assert_eq!(
        text.matches("# TYPE aihummer_gateway_build_info").count(),
        1
    );

    let names = sample_names(&text);
    let missing: Vec<_> = dashboard_metrics()
        .into_iter()
        .filter(|name| !names.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no scrape has: {missing:?}"
    );
}

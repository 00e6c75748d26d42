//! The load generator: signed inbound requests prepared before the clock starts, sent
//! closed-loop (a fixed number of connections, each sending its next request when the
//! last is answered) or open-loop (a fixed rate). Bounded by count and by a deadline.
//! Also plain GETs, closed-loop, for the request-rate baselines.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aihummer_tests::{INBOUND_SECRET, signature};
use tokio::time::Instant;

/// One signed request.
pub struct Request {
    key: String,
    signature: String,
    body: Vec<u8>,
}

/// What a load run came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests answered 200.
    pub ok: usize,
    /// Requests that failed or got another status.
    pub failed: usize,
    /// The first failure seen, to say why requests failed.
    pub first_error: Option<String>,
    /// From the first request sent to the last answered.
    pub elapsed: Duration,
    /// Each answered request's latency, sorted.
    pub latencies: Vec<Duration>,
}

/// `count` distinct messages with unique `Idempotency-Key`s starting with `prefix`.
pub fn prepare(prefix: &str, count: usize) -> Vec<Request> {
    (0..count)
        .map(|n| {
            let key = format!("{prefix}-{n}");
            let body = serde_json::to_vec(&serde_json::json!({
                "channel": "bench", "external_id": format!("m-{n}"), "text": "hello there",
            }))
            .unwrap_or_default();
            let signature = signature(INBOUND_SECRET, Some(&key), &body);
            Request {
                key,
                signature,
                body,
            }
        })
        .collect()
}

fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        // The gateway closes a keep-alive connection idle for 10 s; a request sent on it at
        // that instant finds it closed before it is read (the usual keep-alive race), so
        // idle connections are dropped well before that.
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn send(client: &reqwest::Client, url: &str, request: &Request) -> Result<(), String> {
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", &request.key)
        .header("x-aihummer-signature", &request.signature)
        .body(request.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) if response.status() == 200 => Ok(()),
        Ok(response) => Err(format!("status {}", response.status())),
        Err(err) => Err(crate::pinger::error_chain(&err)),
    }
}

/// Sends `requests` to `gateway`'s inbound route over `connections` connections, each
/// sending as soon as its previous answer came, until all are sent or `deadline` passes.
pub async fn closed_loop(
    gateway: &str,
    requests: Vec<Request>,
    connections: usize,
    deadline: Duration,
) -> anyhow::Result<Outcome> {
    let client = client(connections)?;
    let url = format!("{gateway}/v1/inbound/generic");
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_at = started + deadline;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, requests, next) =
            (client.clone(), url.clone(), requests.clone(), next.clone());
        workers.spawn(async move {
            let mut own = Outcome::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(n) else {
                    break;
                };
                if Instant::now() > stop_at {
                    break;
                }
                let sent_at = Instant::now();
                match send(&client, &url, request).await {
                    Ok(()) => {
                        own.ok += 1;
                        own.latencies.push(sent_at.elapsed());
                    }
                    Err(error) => {
                        own.failed += 1;
                        own.first_error.get_or_insert(error);
                    }
                }
            }
            own
        });
    }
    let mut total = Outcome::default();
    while let Some(own) = workers.join_next().await {
        let own = own?;
        total.ok += own.ok;
        total.failed += own.failed;
        if total.first_error.is_none() {
            total.first_error = own.first_error;
        }
        total.latencies.extend(own.latencies);
    }
    total.elapsed = started.elapsed();
    total.latencies.sort();
    Ok(total)
}

/// Sends `requests` to `gateway` at `per_second`, each on its own task, until all are sent
/// or `deadline` passes; then waits for the answers.
pub async fn open_loop(
    gateway: &str,
    requests: Vec<Request>,
    per_second: u32,
    deadline: Duration,
) -> anyhow::Result<Outcome> {
    let client = client(64)?;
    let url = Arc::new(format!("{gateway}/v1/inbound/generic"));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = tokio::task::JoinSet::new();
    for request in requests {
        tick.tick().await;
        if started.elapsed() > deadline {
            break;
        }
        let (client, url) = (client.clone(), url.clone());
        sent.spawn(async move {
            let at = Instant::now();
            (send(&client, &url, &request).await, at.elapsed())
        });
    }
    let mut total = Outcome::default();
    while let Some(done) = sent.join_next().await {
        match done? {
            (Ok(()), latency) => {
                total.ok += 1;
                total.latencies.push(latency);
            }
            (Err(error), _) => {
                total.failed += 1;
                total.first_error.get_or_insert(error);
            }
        }
    }
    total.elapsed = started.elapsed();
    total.latencies.sort();
    Ok(total)
}

/// GETs of `url` answered 200 per second over `connections` keep-alive connections,
/// closed loop, for `duration` after a short warm-up; and how many failed.
pub async fn get_rate(
    url: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, usize)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let warm_until = Instant::now() + Duration::from_millis(500);
    let until = warm_until + duration;
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, ok, failed) =
            (client.clone(), url.to_string(), ok.clone(), failed.clone());
        workers.spawn(async move {
            while Instant::now() < until {
                let answered = match client.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if Instant::now() < warm_until {
                    continue;
                }
                if answered {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done?;
    }
    Ok((
        ok.load(Ordering::Relaxed) as f64 / duration.as_secs_f64(),
        failed.load(Ordering::Relaxed),
    ))
}

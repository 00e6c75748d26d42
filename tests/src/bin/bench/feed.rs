//! An open-loop inbound feed for the long scenarios: signed messages made as they are sent
//! (a signature is only accepted for minutes, so a 10-minute run cannot be signed up
//! front, and a million prepared requests would not fit in memory comfortably), at a fixed
//! rate, keeping each accepted message's reply id and when it was sent.

use std::time::{Duration, SystemTime};

use aihummer_tests::{INBOUND_SECRET, signature};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One accepted message.
pub struct Sent {
    /// Its reply's id, which the reply carries as `Idempotency-Key`.
    pub reply: String,
    /// When it was sent (wall clock).
    pub at: SystemTime,
    /// Whether it went to the slow channel.
    pub slow: bool,
}

/// What a feed came to.
#[derive(Default)]
pub struct Fed {
    /// Every accepted message, in the order answered.
    pub accepted: Vec<Sent>,
    /// Requests that failed or got another status.
    pub failed: usize,
    /// The first failure seen, to say why requests failed.
    pub first_error: Option<String>,
}

/// Sends messages with keys `{prefix}-{n}` to `gateway`'s inbound route at `per_second`
/// for `duration`, message `n` to the channel `slow` when `is_slow(n)` and to `bench`
/// otherwise; then waits for the answers.
pub async fn run(
    gateway: &str,
    prefix: &str,
    per_second: u32,
    duration: Duration,
    is_slow: fn(usize) -> bool,
) -> anyhow::Result<Fed> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        // The gateway closes a keep-alive connection idle for 10 s; a request sent on it at
        // that instant finds it closed before it is read (the usual keep-alive race), so
        // idle connections are dropped well before that.
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{gateway}/v1/inbound/generic");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    // Behind schedule (a busy machine), it catches up, so the rate holds on average.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut fed = Fed::default();
    let mut sending = JoinSet::new();
    for n in 0.. {
        tick.tick().await;
        if started.elapsed() >= duration {
            break;
        }
        let slow = is_slow(n);
        let (client, url) = (client.clone(), url.clone());
        let key = format!("{prefix}-{n}");
        sending.spawn(async move {
            let at = SystemTime::now();
            let sent = send(&client, &url, &key, slow).await;
            sent.map(|reply| Sent { reply, at, slow })
        });
        while let Some(done) = sending.try_join_next() {
            fed.record(done?);
        }
    }
    while let Some(done) = sending.join_next().await {
        fed.record(done?);
    }
    Ok(fed)
}

impl Fed {
    fn record(&mut self, outcome: Result<Sent, String>) {
        match outcome {
            Ok(sent) => self.accepted.push(sent),
            Err(error) => {
                self.failed += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

/// Sends one message; its reply's id, or why it failed.
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    slow: bool,
) -> Result<String, String> {
    let body = serde_json::to_vec(&serde_json::json!({
        "channel": if slow { "slow" } else { "bench" },
        "external_id": key,
        "text": "hello there",
    }))
    .map_err(|err| err.to_string())?;
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header(
            "x-aihummer-signature",
            signature(INBOUND_SECRET, Some(key), &body),
        )
        .body(body)
        .send()
        .await
        .map_err(|err| crate::pinger::error_chain(&err))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let result: serde_json::Value = response
        .json()
        .await
        .map_err(|err| format!("reading the answer: {}", crate::pinger::error_chain(&err)))?;
    result
        .get("reply_id")
        .and_then(|id| id.as_str())
        .map(String::from)
        .ok_or_else(|| format!("an answer without reply_id: {result}"))
}

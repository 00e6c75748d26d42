//! A loopback webhook receiver: records each POST's `Idempotency-Key` and when it arrived
//! (wall clock, comparable with PostgreSQL's) and answers 200, at once, or after a delay
//! for replies to one channel (a slow route behind the same webhook).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::HeaderMap;

type Arrivals = Arc<Mutex<Vec<(String, SystemTime)>>>;

/// The running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    arrivals: Arrivals,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts it on a free loopback port, answering every POST at once.
    pub async fn start() -> anyhow::Result<Receiver> {
        Self::serve(None).await
    }

    /// Starts it answering replies whose payload's `channel` is `channel` after `delay`,
    /// and the others at once. Their arrival is recorded when they come, not when answered.
    pub async fn start_slow(channel: &'static str, delay: Duration) -> anyhow::Result<Receiver> {
        Self::serve(Some((channel, delay))).await
    }

    async fn serve(slow: Option<(&'static str, Duration)>) -> anyhow::Result<Receiver> {
        let arrivals: Arrivals = Arc::default();
        let shared = arrivals.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let at = SystemTime::now();
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if let Ok(mut arrivals) = shared.lock() {
                    arrivals.push((key, at));
                }
                let wait = slow.and_then(|(channel, delay)| {
                    let payload: serde_json::Value = serde_json::from_slice(&body).ok()?;
                    (payload.get("channel")?.as_str()? == channel).then_some(delay)
                });
                async move {
                    if let Some(delay) = wait {
                        tokio::time::sleep(delay).await;
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            addr,
            arrivals,
            task,
        })
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// How many POSTs arrived so far.
    pub fn count(&self) -> usize {
        self.arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// The keys of every `step`th arrival from `from` until `to`. Arrivals are kept in
    /// the order they came, so this reads only those, without copying the rest or holding
    /// the lock (which every POST takes) for long.
    pub fn sample(&self, from: SystemTime, to: SystemTime, step: usize) -> Vec<String> {
        let Ok(arrivals) = self.arrivals.lock() else {
            return Vec::new();
        };
        let start = arrivals.partition_point(|(_, at)| *at < from);
        arrivals[start..]
            .iter()
            .take_while(|(_, at)| *at < to)
            .step_by(step.max(1))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Every arrival so far, in order.
    pub fn arrivals(&self) -> Vec<(String, SystemTime)> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

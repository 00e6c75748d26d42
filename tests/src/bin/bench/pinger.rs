//! The handoff load: clients sending `GET /v1/ping` at a fixed concurrency, some over
//! keep-alive connections, others opening a fresh connection per request, recording every
//! request's send time, latency and outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Keep-alive clients.
pub const KEEP_ALIVE: usize = 4;
/// Fresh-connection clients.
pub const FRESH: usize = 4;
/// Pause between a keep-alive client's answer and its next request: a steady load that
/// leaves the two cores room for the processes being handed off.
const KEEP_ALIVE_PAUSE: Duration = Duration::from_millis(5);
/// Pause for fresh-connection clients, which also keeps TIME_WAIT sockets from using up
/// the loopback's ephemeral ports.
const FRESH_PAUSE: Duration = Duration::from_millis(10);

/// One request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the load's start.
    pub at: Duration,
    /// How long until its answer (or failure).
    pub latency: Duration,
    /// The failure, if it failed.
    pub error: Option<String>,
}

/// The running load; [`Pinger::stop`] ends it.
pub struct Pinger {
    started: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Pinger {
    /// Starts the clients against `url` (a `/v1/ping` URL).
    pub fn start(url: &str) -> anyhow::Result<Pinger> {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for index in 0..KEEP_ALIVE + FRESH {
            let keep_alive = index < KEEP_ALIVE;
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true);
            if !keep_alive {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build()?;
            let (url, stop) = (url.to_string(), stop.clone());
            let pause = if keep_alive {
                KEEP_ALIVE_PAUSE
            } else {
                FRESH_PAUSE
            };
            workers.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let error = ping(&client, &url).await.err();
                    samples.push(Sample {
                        at: sent - started,
                        latency: sent.elapsed(),
                        error,
                    });
                    tokio::time::sleep(pause).await;
                }
                samples
            }));
        }
        Ok(Pinger {
            started,
            stop,
            workers,
        })
    }

    /// Time since the load started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the clients and returns every sample, in the order sent.
    pub async fn stop(mut self) -> anyhow::Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for worker in std::mem::take(&mut self.workers) {
            all.extend(worker.await?);
        }
        all.sort_by_key(|s| s.at);
        Ok(all)
    }
}

impl Drop for Pinger {
    /// A run abandoned on an error must not leave its clients loading the next scenario.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn ping(client: &reqwest::Client, url: &str) -> Result<(), String> {
    let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| error_chain(&e))?;
    let pong = b"\"pong\":true";
    if status != 200 || !body.windows(pong.len()).any(|w| w == pong) {
        return Err(format!("status {status}"));
    }
    Ok(())
}

/// The error and its sources on one line: reqwest's own message hides the cause
/// ("connection refused", "connection reset").
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

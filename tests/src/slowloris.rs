//! Slow clients for the limit suites: connections that trickle their request headers or
//! their body a byte at a time, the way a slowloris attack holds a server's connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What a slow connection holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trickle {
    /// A `GET` whose headers never end: one more byte of a header value each time.
    Headers,
    /// A `POST /v1/inbound/generic` with complete headers announcing a 60,000-byte body,
    /// of which one byte comes each time.
    Body,
}

impl Trickle {
    fn start(self) -> &'static [u8] {
        match self {
            Trickle::Headers => b"GET /v1/ping HTTP/1.1\r\nHost: flood\r\nX-Trickle: a",
            Trickle::Body => {
                b"POST /v1/inbound/generic HTTP/1.1\r\nHost: flood\r\n\
                  Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{"
            }
        }
    }
}

/// What happened to each slow connection so far.
#[derive(Debug, Default)]
struct Outcomes {
    /// Status codes of the answers received.
    answers: Vec<u16>,
    /// Connections the server closed (or reset).
    closed: usize,
}

/// A set of slow connections; dropping it closes them all.
pub struct Flood {
    outcomes: Arc<Mutex<Outcomes>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Flood {
    /// Opens `count` connections to `addr`, each sending the start of a request and then one
    /// more byte every `every`, until the server closes it or the flood is dropped. Returns
    /// once every connection is established (a connection waiting in the listen queue is).
    pub async fn open(addr: SocketAddr, count: usize, trickle: Trickle, every: Duration) -> Flood {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let mut streams = Vec::new();
        for _ in 0..count {
            let connect = TcpStream::connect(addr);
            let stream = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .expect("a slow connection is established within 5s")
                .expect("connect a slow connection");
            streams.push(stream);
        }
        let tasks = streams
            .into_iter()
            .map(|stream| tokio::spawn(trickle_on(stream, trickle, every, outcomes.clone())))
            .collect();
        Flood { outcomes, tasks }
    }

    /// The status codes answered so far, one per answered connection.
    pub fn answers(&self) -> Vec<u16> {
        self.outcomes
            .lock()
            .expect("flood outcomes")
            .answers
            .clone()
    }

    /// How many connections the server has closed so far.
    pub fn closed(&self) -> usize {
        self.outcomes.lock().expect("flood outcomes").closed
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn trickle_on(
    mut stream: TcpStream,
    trickle: Trickle,
    every: Duration,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut received = Vec::new();
    let mut answered = false;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    if stream.write_all(trickle.start()).await.is_ok() {
        loop {
            let mut chunk = [0u8; 1024];
            tokio::select! {
                read = stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        received.extend_from_slice(&chunk[..n]);
                        if !answered && let Some(status) = status_of(&received) {
                            answered = true;
                            outcomes.lock().expect("flood outcomes").answers.push(status);
                        }
                    }
                },
                _ = tick.tick() => {
                    if stream.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    outcomes.lock().expect("flood outcomes").closed += 1;
}

/// The status code of a response whose status line has arrived.
fn status_of(received: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(received).ok()?;
    let (line, _) = text.split_once("\r\n")?;
    line.split(' ').nth(1)?.parse().ok()
}

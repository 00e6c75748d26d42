//! Serving overhead: `/v1/ping` requests per second through the supervisor-owned socket,
//! against a bare hyper server in the bench answering the same bytes, under the same
//! closed-loop keep-alive load; the gateway alone (binding the port itself) in between
//! shows what is the gateway's own cost and what the supervisor's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use aihummer_tests::{Gateway, free_port};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use crate::baseline::wait_answer;
use crate::binaries::Binaries;
use crate::load::get_rate;
use crate::report::{Report, thousands};
use crate::supervised::Supervised;

const CONNECTIONS: usize = 16;

/// A hyper server on its own two-thread runtime (as many threads as the gateway's on two
/// cores) answering every request with `body`; stops when dropped.
struct Bare {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn start(body: Bytes) -> anyhow::Result<Bare> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the bare server's runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let serve = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        let body = body.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |_request| {
                                let mut response = hyper::Response::new(Full::new(body.clone()));
                                response.headers_mut().insert(
                                    CONTENT_TYPE,
                                    HeaderValue::from_static("application/json"),
                                );
                                async move { Ok::<_, Infallible>(response) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(Bare {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the scenario.
pub async fn run(bins: &Binaries, quick: bool) -> anyhow::Result<Report> {
    let (duration, rounds) = if quick {
        (Duration::from_secs(2), 2)
    } else {
        (Duration::from_secs(4), 3)
    };
    let mut report = Report::new(
        "Serving overhead",
        "a bare hyper server inside the bench answering the same bytes on its own \
         two-thread runtime, same load",
    );
    let supervisor = Supervised::start(&bins.aihummer, &bins.gateway, &[])?;
    supervisor.wait_serving(Duration::from_secs(30)).await?;
    let alone_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let alone_text = alone_addr.to_string();
    let alone = Gateway::start_with(
        &bins.gateway,
        &[
            ("AIHUMMER_GATEWAY_ADDR", &alone_text),
            ("AIHUMMER_LOG", "warn"),
        ],
        |_| {},
    );
    // Health-only mode, like the supervised one: `/readyz` says 503 (no database) there.
    wait_answer(alone_addr, "/healthz", Duration::from_secs(30)).await?;
    let body = reqwest::get(supervisor.url("/v1/ping"))
        .await
        .context("asking the gateway for its ping body")?
        .bytes()
        .await?;
    let bare = Bare::start(body)?;
    let urls = [
        supervisor.url("/v1/ping"),
        format!("http://{alone_addr}/v1/ping"),
        format!("http://{}/v1/ping", bare.addr),
    ];
    // Interleaved rounds, best of each, so a burst of other work on the machine does not
    // land on one side only.
    let mut best = [0f64; 3];
    let mut failed = 0;
    for _ in 0..rounds {
        for (i, url) in urls.iter().enumerate() {
            let (rate, f) = get_rate(url, CONNECTIONS, duration).await?;
            best[i] = best[i].max(rate);
            failed += f;
        }
    }
    let [supervised, gateway_alone, bare_rate] = best;
    let ratio = supervised / bare_rate.max(f64::EPSILON);
    report
        .figure(
            "/v1/ping requests/s through the supervisor's socket",
            thousands(supervised),
        )
        .baseline(format!("{} (bare hyper)", thousands(bare_rate)));
    report
        .figure(
            "/v1/ping requests/s, gateway alone binding its port",
            thousands(gateway_alone),
        )
        .baseline(format!("{} (bare hyper)", thousands(bare_rate)));
    report
        .figure("supervised / bare hyper", format!("{:.0}%", ratio * 100.0))
        .target("≥ 90%", ratio >= 0.9);
    report.note(format!(
        "{CONNECTIONS} keep-alive connections, closed loop, {:.0} s per side, best of {rounds} \
         interleaved round(s); the load generator shares the two cores with the server.",
        duration.as_secs_f64()
    ));
    if failed > 0 {
        report.note(format!(
            "{failed} ping requests failed during the overhead runs."
        ));
    }
    drop(alone);
    Ok(report)
}

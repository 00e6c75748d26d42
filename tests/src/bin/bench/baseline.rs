//! The handoff baselines, under the same load and plan as the supervised run:
//!
//! - stop-then-start: the gateway alone binds the port; SIGTERM, wait for it to exit,
//!   start a new one. While none runs the port is closed, so clients are refused.
//! - sequential: the bench holds the listening socket and passes it to each gateway as
//!   fd 3 (systemd socket activation's way); the old gateway drains and exits before the
//!   new one starts. Connections wait in the kernel's queue meanwhile.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use aihummer_tests::{Gateway, free_port, pass_sockets};
use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::handoff::Plan;
use crate::pinger::Pinger;
use crate::timeline::{Timeline, Window};

fn env<'a>(db_url: &'a str, addr: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("AIHUMMER_DATABASE_URL", db_url),
        ("AIHUMMER_GATEWAY_ADDR", addr),
        ("AIHUMMER_DRAIN_TIMEOUT", "5s"),
        ("AIHUMMER_LOG", "warn"),
    ]
}

/// Polls `/readyz` at `addr` until it answers 200.
pub async fn wait_ready(addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
    wait_answer(addr, "/readyz", deadline).await
}

/// Polls `path` at `addr` until it answers 200.
pub async fn wait_answer(addr: SocketAddr, path: &str, deadline: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{addr}{path}");
    let end = Instant::now() + deadline;
    loop {
        if let Ok(response) = client.get(&url).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("no gateway answered {path} at {addr} within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Replaces `gateway` the plain way: SIGTERM, wait for the exit, start the next.
async fn replace(
    gateway: &mut Gateway,
    start: impl FnOnce() -> anyhow::Result<Gateway>,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    gateway.signal(Signal::SIGTERM);
    gateway.wait_exit(Duration::from_secs(20)).await;
    *gateway = start()?;
    wait_ready(addr, Duration::from_secs(60)).await
}

async fn run_plan(
    label: &'static str,
    addr: SocketAddr,
    plan: &Plan,
    start: impl Fn() -> anyhow::Result<Gateway>,
) -> anyhow::Result<Timeline> {
    let mut gateway = start()?;
    wait_ready(addr, Duration::from_secs(60)).await?;
    let pinger = Pinger::start(&format!("http://{addr}/v1/ping"))?;
    let mut windows = Vec::new();
    tokio::time::sleep(plan.gap).await;
    for _ in &plan.steps {
        let started = pinger.now();
        replace(&mut gateway, &start, addr).await?;
        windows.push(Window {
            what: label.to_string(),
            start: started,
            end: pinger.now(),
        });
        tokio::time::sleep(plan.gap).await;
    }
    let samples = pinger.stop().await?;
    Ok(Timeline {
        label,
        samples,
        windows,
    })
}

/// Stop-then-start: each gateway binds the port itself.
pub async fn stop_then_start(bin: &Path, db_url: &str, plan: &Plan) -> anyhow::Result<Timeline> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let text = addr.to_string();
    run_plan("stop-then-start", addr, plan, || {
        Ok(Gateway::start_with(bin, &env(db_url, &text), |_| {}))
    })
    .await
}

/// Sequential: the bench holds the socket; each gateway gets it as fd 3.
pub async fn sequential(bin: &Path, db_url: &str, plan: &Plan) -> anyhow::Result<Timeline> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the held socket")?;
    // The same deep accept queue the supervisor gives its socket.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)
        .context("raising the held socket's backlog")?;
    let addr = listener.local_addr()?;
    let text = addr.to_string();
    run_plan("sequential", addr, plan, || {
        let fd: OwnedFd = listener
            .try_clone()
            .context("duplicating the held socket")?
            .into();
        let mut env = env(db_url, &text).to_vec();
        env.push(("LISTEN_FDS", "1"));
        Ok(Gateway::start_with(bin, &env, pass_sockets(vec![fd])))
    })
    .await
}

//! Resource limits: the connection cap, the descriptor limit, the body read timeout, and a
//! drain that slow clients cannot stretch.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use aihummer_tests::slowloris::{Flood, Trickle};
use aihummer_tests::supervisor::accepted_connections;
use aihummer_tests::{Gateway, RawHttp, binary, get_json, http, wait_for};
use nix::sys::signal::Signal;
use tokio::time::Instant;

const TRICKLE: Duration = Duration::from_secs(1);

/// A loopback listener with the system's maximum backlog, so a flood fits in its queue.
fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN).expect("listen");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// A gateway serving a public and a probe socket the test passes, like a supervised one.
/// `ulimit` (a `ulimit` argument list, or empty) is applied by a shell before the gateway
/// starts. Returns the gateway, its public and its probe address.
fn supervised_gateway(env: &[(&str, &str)], ulimit: &str) -> (Gateway, SocketAddr, SocketAddr) {
    let (public, public_addr) = listener();
    let (probe, probe_addr) = listener();
    let mut env = env.to_vec();
    env.extend([("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "public:probe")]);
    let gateway = binary("aihummer-gateway");
    let sockets = aihummer_tests::pass_sockets(vec![public.into(), probe.into()]);
    let gw = Gateway::start_with(Path::new("/bin/sh"), &env, move |cmd| {
        // The shell execs the gateway, keeping its pid and the passed sockets.
        cmd.arg("-c")
            .arg(format!("{ulimit} exec \"$0\""))
            .arg(gateway);
        sockets(cmd);
    });
    (gw, public_addr, probe_addr)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.count())
        .unwrap_or(0)
}

async fn answers(url: &str) -> bool {
    matches!(get_json(&http(), url).await, Some((200, _)))
}

async fn wait_answering(url: &str) {
    wait_for(Duration::from_secs(30), url, || async {
        answers(url).await.then_some(())
    })
    .await;
}

/// For a second, the most connections `pid` holds on `port` and the most descriptors it
/// has, checking meanwhile that the probe at `probe` answers every time.
async fn hold_and_measure(pid: u32, port: u16, probe: &str) -> (usize, usize) {
    let until = Instant::now() + Duration::from_secs(1);
    let (mut most, mut most_fds) = (0, 0);
    while Instant::now() < until {
        most = most.max(accepted_connections(pid, port));
        most_fds = most_fds.max(descriptors(pid));
        assert!(
            answers(probe).await,
            "the probe must answer while the public side is full"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (most, most_fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_clients_wait_in_the_queue_descriptors_stay_bounded_and_the_probe_answers()
 {
    let (gw, public, probe) = supervised_gateway(&[("AIHUMMER_MAX_CONNECTIONS", "16")], "");
    let probe_url = format!("http://{probe}/healthz");
    wait_answering(&probe_url).await;
    wait_answering(&format!("http://{public}/v1/ping")).await;
    let before = descriptors(gw.pid());

    let flood = Flood::open(public, 200, Trickle::Headers, TRICKLE).await;
    wait_for(
        Duration::from_secs(10),
        "the flood to take every slot",
        || async { (accepted_connections(gw.pid(), public.port()) >= 16).then_some(()) },
    )
    .await;
    // A well-behaved client queues behind the flood: neither refused nor reset.
    let mut client = RawHttp::connect(public).await;
    client.send_get("/v1/ping").await;
    let answer = tokio::spawn(async move { client.read_response().await });

    let (most, most_fds) = hold_and_measure(gw.pid(), public.port(), &probe_url).await;
    assert_eq!(most, 16, "connections held past the cap of 16");
    assert!(
        most_fds <= before + 16 + 8,
        "descriptors grew from {before} to {most_fds} with 200 connections knocking"
    );
    assert!(
        !answer.is_finished(),
        "the queued client was answered or cut while the cap was full"
    );

    // Once the flood lets go, the slots free up and the queued client is served.
    drop(flood);
    let answer = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("the queued client is served once connections are freed")
        .expect("client task")
        .expect("an answer, not a closed connection");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["pid"], gw.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_descriptor_limit_the_cap_is_lowered_to_fit_and_the_probe_still_answers() {
    // 64 descriptors: half stay in reserve, so 32 connections at most, not 10,000.
    let (gw, public, probe) = supervised_gateway(&[], "ulimit -n 64 &&");
    let probe_url = format!("http://{probe}/healthz");
    wait_answering(&probe_url).await;

    let flood = Flood::open(public, 100, Trickle::Headers, TRICKLE).await;
    wait_for(
        Duration::from_secs(10),
        "the flood to take every slot",
        || async { (accepted_connections(gw.pid(), public.port()) >= 32).then_some(()) },
    )
    .await;
    let (most, _) = hold_and_measure(gw.pid(), public.port(), &probe_url).await;
    assert_eq!(most, 32, "connections held past the fitted cap");
    let logs = gw.logs();
    assert!(
        logs.contains("does not fit under the descriptor limit"),
        "{logs}"
    );
    assert!(
        !logs.contains("accept failed"),
        "the gateway ran out of descriptors: {logs}"
    );

    drop(flood);
    wait_answering(&format!("http://{public}/v1/ping")).await;
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("limit");
    assert!(
        hard > 256,
        "this test needs a hard descriptor limit above 256, not {hard}"
    );
    let (gw, _, probe) = supervised_gateway(&[], "ulimit -S -n 256 &&");
    wait_answering(&format!("http://{probe}/healthz")).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let soft: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("a soft limit");
    assert_eq!(soft, hard.min(1 << 20), "{line}");
}

#[tokio::test]
async fn a_body_that_trickles_past_the_body_read_timeout_is_answered_408_and_closed() {
    let gw = Gateway::start(&[("AIHUMMER_BODY_READ_TIMEOUT", "1s")]);
    gw.wait_healthy(Duration::from_secs(10)).await;

    let started = Instant::now();
    let slow = Flood::open(gw.addr, 1, Trickle::Body, Duration::from_millis(200)).await;
    wait_for(
        Duration::from_secs(10),
        "the trickling body to be cut off",
        || async { (slow.closed() == 1).then_some(()) },
    )
    .await;
    assert_eq!(slow.answers(), vec![408]);
    // The body was refused for its time, not for anything else, and only after that time.
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_hold_a_drain_while_a_slow_request_still_finishes() {
    // Read timeouts longer than the drain: only the drain itself may cut the slow clients.
    let mut gw = Gateway::start(&[
        ("AIHUMMER_DRAIN_TIMEOUT", "30s"),
        ("AIHUMMER_HEADER_READ_TIMEOUT", "60s"),
        ("AIHUMMER_BODY_READ_TIMEOUT", "60s"),
    ]);
    gw.wait_healthy(Duration::from_secs(10)).await;
    let bodies = Flood::open(gw.addr, 20, Trickle::Body, TRICKLE).await;
    let headers = Flood::open(gw.addr, 20, Trickle::Headers, TRICKLE).await;
    wait_for(
        Duration::from_secs(10),
        "the gateway to take the slow clients",
        || async { (accepted_connections(gw.pid(), gw.addr.port()) >= 40).then_some(()) },
    )
    .await;
    let mut slow = RawHttp::connect(gw.addr).await;
    slow.send_get("/v1/ping?delay_ms=3000").await;

    let started = Instant::now();
    gw.signal(Signal::SIGTERM);
    let answer = slow
        .read_response()
        .await
        .expect("the slow request's answer");
    assert_eq!(answer.status, 200, "a real request in flight finishes");
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the drain took {:?}, held by slow clients",
        started.elapsed()
    );
    wait_for(
        Duration::from_secs(5),
        "the slow clients to see their end",
        || async { (bodies.closed() == 20 && headers.closed() == 20).then_some(()) },
    )
    .await;
    assert_eq!(bodies.answers(), vec![408; 20], "trickling bodies get 408");
    assert!(
        headers.answers().is_empty(),
        "half-sent headers get no answer"
    );
}

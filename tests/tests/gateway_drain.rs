//! Graceful drain on SIGTERM, and serving on sockets inherited from a parent.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use aihummer_tests::{Gateway, RawHttp, binary, free_port, get_json, http, wait_for};
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// Opens a connection and completes one request on it, so the gateway has certainly
/// accepted it before the test goes on.
async fn accepted_connection(addr: SocketAddr) -> RawHttp {
    let mut conn = RawHttp::connect(addr).await;
    conn.send_get("/v1/ping").await;
    let response = conn.read_response().await.expect("first answer");
    assert_eq!(response.status, 200);
    conn
}

/// Asks `/readyz` on `conn` back to back until the gateway answers that it drains, and
/// returns that answer; `None` when the gateway closed the connection instead, which it
/// does to a keep-alive connection that sits between two requests as the drain begins
/// (however fast the polling, there is always such an instant): closing is how an idle
/// connection is told to go.
async fn until_draining(conn: &mut RawHttp) -> Option<aihummer_tests::RawResponse> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        conn.send_get("/readyz").await;
        let response = conn.read_response().await?;
        if response.json()["reason"] == "draining" {
            return Some(response);
        }
        assert!(Instant::now() < end, "the gateway never reported draining");
    }
}

/// Waits until the gateway has logged the start of its drain.
async fn drain_started(gw: &Gateway) {
    wait_for(Duration::from_secs(10), "the drain to start", || async {
        gw.logs().contains("\"message\":\"draining\"").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_slow_request_in_flight_completes_during_the_drain_and_open_connections_are_told_to_close()
 {
    let mut gw = Gateway::start(&[("AIHUMMER_DRAIN_TIMEOUT", "20s")]);
    gw.wait_healthy(Duration::from_secs(10)).await;
    let mut slow = accepted_connection(gw.addr).await;
    let mut watcher = accepted_connection(gw.addr).await;

    slow.send_get("/v1/ping?delay_ms=1500").await;
    gw.signal(Signal::SIGTERM);

    if let Some(draining) = until_draining(&mut watcher).await {
        assert_eq!(draining.status, 503);
        assert_eq!(draining.header("connection"), Some("close"));
        assert!(
            watcher.closed_by_peer().await,
            "a connection told to close must then close"
        );
    }

    let answer = slow
        .read_response()
        .await
        .expect("the slow request's answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["pong"], true);
    assert_eq!(answer.header("connection"), Some("close"));

    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_half_sent_request_does_not_keep_the_gateway_alive_past_the_drain_deadline() {
    let mut gw = Gateway::start(&[("AIHUMMER_DRAIN_TIMEOUT", "2s")]);
    gw.wait_healthy(Duration::from_secs(10)).await;
    let mut stalled = accepted_connection(gw.addr).await;
    stalled.send(b"GET /v1/ping HTTP/1.1\r\nHost: te").await;
    let mut never_finished = RawHttp::connect(gw.addr).await;
    never_finished.send(b"GE").await;

    let started = Instant::now();
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    // Far below the 30s a client gets to send its headers: the 2s deadline applies.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(stalled.closed_by_peer().await);
}

#[tokio::test]
async fn a_request_slower_than_the_drain_deadline_is_cut_off_at_the_deadline() {
    let mut gw = Gateway::start(&[("AIHUMMER_DRAIN_TIMEOUT", "1s")]);
    gw.wait_healthy(Duration::from_secs(10)).await;
    let mut slow = accepted_connection(gw.addr).await;
    slow.send_get("/v1/ping?delay_ms=20000").await;

    let started = Instant::now();
    gw.signal(Signal::SIGTERM);
    drain_started(&gw).await;
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    // Far below the 20s the request would take: the 1s deadline cut it off.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        slow.read_response().await.is_none(),
        "the cut-off request got an answer"
    );
    assert!(gw.logs().contains("drain deadline reached"));
}

#[tokio::test]
async fn repeated_signals_during_the_drain_are_not_a_crash() {
    let mut gw = Gateway::start(&[("AIHUMMER_DRAIN_TIMEOUT", "20s")]);
    gw.wait_healthy(Duration::from_secs(10)).await;
    let mut slow = accepted_connection(gw.addr).await;
    slow.send_get("/v1/ping?delay_ms=1500").await;

    gw.signal(Signal::SIGTERM);
    drain_started(&gw).await;
    gw.signal(Signal::SIGTERM);
    gw.signal(Signal::SIGINT);

    let answer = slow
        .read_response()
        .await
        .expect("the slow request's answer");
    assert_eq!(answer.status, 200);
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

#[tokio::test]
async fn a_socket_passed_as_fd_3_is_served_instead_of_the_configured_address() {
    let (listener, addr) = loopback_listener();
    let gw = Gateway::start_with(
        &binary("aihummer-gateway"),
        &[("LISTEN_FDS", "1")],
        aihummer_tests::pass_sockets(vec![listener.into()]),
    );
    let client = http();
    let url = format!("http://{addr}/healthz");
    let (status, health) = wait_for(
        Duration::from_secs(10),
        "an answer on the inherited socket",
        || {
            let (client, url) = (client.clone(), url.clone());
            async move { get_json(&client, &url).await }
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(health["pid"], gw.pid());
    assert!(
        get_json(&client, &gw.url("/healthz")).await.is_none(),
        "AIHUMMER_GATEWAY_ADDR must not be bound when a socket is inherited"
    );
}

#[tokio::test]
async fn a_probe_socket_serves_the_operator_routes_the_public_socket_does_not() {
    let (public, public_addr) = loopback_listener();
    let (probe, probe_addr) = loopback_listener();
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start_with(
        &binary("aihummer-gateway"),
        &[
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "public:probe"),
            ("AIHUMMER_METRICS_ADDR", &metrics),
        ],
        aihummer_tests::pass_sockets(vec![public.into(), probe.into()]),
    );
    let client = http();
    for addr in [public_addr, probe_addr] {
        let url = format!("http://{addr}/healthz");
        let (_, health) = wait_for(Duration::from_secs(10), "healthz", || {
            let (client, url) = (client.clone(), url.clone());
            async move { get_json(&client, &url).await }
        })
        .await;
        assert_eq!(health["pid"], gw.pid());
    }
    let stats = |addr: SocketAddr| {
        let client = client.clone();
        async move {
            let (status, body) = get_json(&client, &format!("http://{addr}/v1/outbox/stats"))
                .await
                .expect("an answer");
            (status, body["error"]["code"].as_str().map(str::to_string))
        }
    };
    // Health-only mode: the route exists on the probe (503 not ready), not in public.
    assert_eq!(stats(probe_addr).await, (503, Some("not_ready".into())));
    assert_eq!(stats(public_addr).await, (404, Some("not_found".into())));
    assert!(
        get_json(&client, &format!("http://{metrics}/healthz"))
            .await
            .is_none(),
        "a supervised gateway must leave AIHUMMER_METRICS_ADDR to its supervisor"
    );
}

#[tokio::test]
async fn the_probe_tells_the_supervisor_why_the_database_is_unavailable() {
    let (public, _) = loopback_listener();
    let (probe, probe_addr) = loopback_listener();
    // Nothing listens on a free port: the database refuses.
    let database = format!("postgres://someone@127.0.0.1:{}/nowhere", free_port());
    let _gw = Gateway::start_with(
        &binary("aihummer-gateway"),
        &[
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "public:probe"),
            ("AIHUMMER_DATABASE_URL", &database),
        ],
        aihummer_tests::pass_sockets(vec![public.into(), probe.into()]),
    );
    let readyz = format!("http://{probe_addr}/readyz");
    let reason = wait_for(Duration::from_secs(10), "the probe's reason", || async {
        match get_json(&http(), &readyz).await {
            Some((503, body)) => body["reason"]
                .as_str()
                .filter(|r| r.starts_with("database unavailable: "))
                .map(str::to_string),
            _ => None,
        }
    })
    .await;
    assert!(reason.len() > "database unavailable: ".len(), "{reason}");
}

#[tokio::test]
async fn after_a_drain_the_inherited_socket_still_queues_connections_for_its_other_holders() {
    let (listener, addr) = loopback_listener();
    let ours = listener.try_clone().expect("dup");
    let mut gw = Gateway::start_with(
        &binary("aihummer-gateway"),
        &[("LISTEN_FDS", "1")],
        aihummer_tests::pass_sockets(vec![listener.into()]),
    );
    wait_for(Duration::from_secs(10), "an answer", || async {
        get_json(&http(), &format!("http://{addr}/healthz")).await
    })
    .await;
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await.code(), Some(0));

    // The gateway dropped only its own descriptor: a new client is queued, not refused,
    // and the process still holding the socket (here the test) accepts it.
    let mut client = RawHttp::connect(addr).await;
    client.send_get("/healthz").await;
    ours.set_nonblocking(true).expect("nonblocking");
    let ours = tokio::net::TcpListener::from_std(ours).expect("tokio listener");
    let accepted = tokio::time::timeout(Duration::from_secs(5), ours.accept()).await;
    assert!(
        matches!(accepted, Ok(Ok(_))),
        "the queued connection was lost"
    );
}

#[tokio::test]
async fn an_inherited_descriptor_that_is_not_a_socket_is_refused_with_a_clear_error() {
    let file = tempfile::tempfile().expect("file");
    let mut gw = Gateway::start_with(
        &binary("aihummer-gateway"),
        &[("LISTEN_FDS", "1")],
        aihummer_tests::pass_sockets(vec![file.into()]),
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await.code(), Some(1));
    let logs = gw.logs();
    assert!(
        logs.contains("inherited fd 3") && logs.contains("not a TCP listening socket"),
        "{logs}"
    );
}

fn running(pid: u32) -> bool {
    // A zombie has exited; only its reaping is pending.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z"))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_supervised_gateway_exits_when_its_supervisor_is_killed() {
    use tokio::io::AsyncBufReadExt;
    let (public, addr) = loopback_listener();
    let (probe, _) = loopback_listener();
    // A shell stands in for the supervisor: it hands both sockets on and waits.
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("\"$0\" & echo $!; wait")
        .arg(binary("aihummer-gateway"))
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "public:probe")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    aihummer_tests::pass_sockets(vec![public.into(), probe.into()])(&mut cmd);
    let mut supervisor = cmd.spawn().expect("spawn shell");
    let stdout = supervisor.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("gateway pid");
    let pid: u32 = line.trim().parse().expect("pid");
    let url = format!("http://{addr}/healthz");
    let (_, health) = wait_for(Duration::from_secs(10), "the gateway to serve", || {
        let url = url.clone();
        async move { get_json(&http(), &url).await }
    })
    .await;
    assert_eq!(health["pid"], pid);

    supervisor
        .start_kill()
        .expect("kill -9 the stand-in supervisor");
    supervisor.wait().await.expect("reap it");
    wait_for(
        Duration::from_secs(10),
        "the orphaned gateway to exit",
        || async { (!running(pid)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_supervised_gateway_takes_client_traffic_only_once_its_probe_has_answered_ready() {
    let db = aihummer_tests::TestDb::create().await;
    let pool = db.pool().await;
    let mut holder = pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(aihummer_gateway::migrate::LOCK_KEY)
        .execute(&mut *holder)
        .await
        .expect("hold the migration lock");
    let (public, public_addr) = loopback_listener();
    let (probe, probe_addr) = loopback_listener();
    let url = db.url();
    let gw = Gateway::start_with(
        &binary("aihummer-gateway"),
        &[
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "public:probe"),
            ("AIHUMMER_DATABASE_URL", &url),
        ],
        aihummer_tests::pass_sockets(vec![public.into(), probe.into()]),
    );
    let readyz = format!("http://{probe_addr}/readyz");
    wait_for(
        Duration::from_secs(10),
        "the probe to report the wait",
        || async {
            match get_json(&http(), &readyz).await {
                Some((503, body))
                    if body["reason"].as_str()?.contains("waiting for migrations") =>
                {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;

    // Meanwhile a client of the public socket waits in its queue: nothing answers it yet.
    let mut client = tokio::spawn(async move {
        let mut conn = RawHttp::connect(public_addr).await;
        conn.send_get("/v1/ping").await;
        conn.read_response().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut client)
            .await
            .is_err(),
        "a gateway that is not ready answered client traffic"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(aihummer_gateway::migrate::LOCK_KEY)
        .execute(&mut *holder)
        .await
        .expect("release the migration lock");
    wait_for(
        Duration::from_secs(30),
        "the gateway to be ready",
        || async { gw.logs().contains("\"phase\":\"ready\"").then_some(()) },
    )
    .await;
    // Ready, but the supervisor does not know yet: clients still wait, so that a 200 from
    // the public /readyz never comes before the supervisor counts this gateway as serving.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut client)
            .await
            .is_err(),
        "a gateway whose probe has not answered ready yet took client traffic"
    );
    wait_for(
        Duration::from_secs(10),
        "the probe to answer ready",
        || async {
            let (status, _) = get_json(&http(), &readyz).await?;
            (status == 200).then_some(())
        },
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("the queued client is served once the probe has answered ready")
        .expect("client task")
        .expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["pid"], gw.pid());
}

//! Unit tests of `server`.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;
use crate::control::client::call;
use crate::control::fixtures::{self, Fake};
use crate::control::protocol::{Progress, Stage};

/// A supervisor running as uid 1000, its gateway too.
fn me() -> Access {
    Access {
        uid: 1000,
        gateway_uid: 1000,
        ..Access::default()
    }
}

/// A peer with `uid` in no gateway's process group.
fn peer(uid: u32) -> Result<Peer, PeerError> {
    Ok(Peer {
        uid,
        gid: uid,
        pid: 4242,
        groups: Vec::new(),
        pgid: 4242,
    })
}

/// The accept loop fed from a channel: each test connection is one end of a socket pair.
impl Incoming for mpsc::UnboundedReceiver<UnixStream> {
    async fn next(&mut self) -> std::io::Result<UnixStream> {
        match self.recv().await {
            Some(stream) => Ok(stream),
            None => std::future::pending().await,
        }
    }
}

/// Runs the accept loop for `service`, allowing this process's own uid.
fn start(service: impl Service) -> mpsc::UnboundedSender<UnixStream> {
    let (connections, incoming) = mpsc::unbounded_channel();
    let uid = crate::config::current_uid();
    let access = Access {
        uid,
        gateway_uid: uid,
        ..Access::default()
    };
    tokio::spawn(serve(
        incoming,
        Arc::new(service),
        access,
        std::future::pending(),
    ));
    connections
}

async fn assert_still_serves(server: &mpsc::UnboundedSender<UnixStream>) {
    let body = call(connect(server), Command::Status, |_| {}).await;
    assert!(matches!(body, Ok(Body::Status(_))), "{body:?}");
}

fn connect(server: &mpsc::UnboundedSender<UnixStream>) -> UnixStream {
    let (client, ours) = UnixStream::pair().unwrap();
    server.send(ours).unwrap();
    client
}

/// The lines a client reads until the server closes.
async fn lines(stream: impl AsyncRead + Unpin) -> Vec<Message> {
    let mut lines = BufReader::new(stream).lines();
    let mut messages = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        messages.push(serde_json::from_str(&line).unwrap());
    }
    messages
}

/// Sends `raw` (then ends the request side) and reads the one reply. Lines are read one by
/// one as real clients do: a server that closes with input unread makes the socket report
/// a reset after its reply.
async fn exchange(raw: &[u8], peer: Result<Peer, PeerError>) -> Message {
    let (client, server) = UnixStream::pair().unwrap();
    let serving = tokio::spawn(async move { serve_connection(server, peer, &me(), &Fake).await });
    let (reader, mut writer) = tokio::io::split(client);
    let _ = writer.write_all(raw).await;
    let _ = writer.shutdown().await;
    let line = read_line(reader).await;
    serving.await.unwrap();
    serde_json::from_str(&line).unwrap()
}

async fn read_line(reader: impl AsyncRead + Unpin) -> String {
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).await.unwrap();
    line
}

fn error(message: Message) -> ErrorReply {
    match message.body {
        Body::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_status_request_is_answered_with_the_status_report() {
    let (client, server) = UnixStream::pair().unwrap();
    tokio::spawn(async move { serve_connection(server, peer(1000), &me(), &Fake).await });
    let body = call(client, Command::Status, |_| {}).await.unwrap();
    assert_eq!(body, Body::Status(Box::new(fixtures::status())));
}

#[tokio::test]
async fn a_restart_streams_its_progress_then_exactly_one_final_reply_and_closes() {
    let (client, server) = UnixStream::pair().unwrap();
    tokio::spawn(async move { serve_connection(server, peer(0), &me(), &Fake).await });
    let (reader, mut writer) = tokio::io::split(client);
    writer
        .write_all(b"{\"v\":1,\"cmd\":\"restart\"}\n")
        .await
        .unwrap();
    let messages = lines(reader).await;
    let finals: Vec<bool> = messages.iter().map(|m| m.body.is_final()).collect();
    assert_eq!(finals, [false, false, true]);
    assert!(matches!(&messages[2].body, Body::Restarted(r) if r.new_pid == 3));
}

#[tokio::test]
async fn an_update_streams_download_progress_and_ends_up_to_date_or_with_its_reason() {
    let (client, server) = UnixStream::pair().unwrap();
    tokio::spawn(async move { serve_connection(server, peer(1000), &me(), &Fake).await });
    let mut bytes = Vec::new();
    let body = call(client, Command::Update { version: None }, |p| {
        bytes.push((p.stage, p.done, p.total))
    })
    .await
    .unwrap();
    assert_eq!(bytes, [(Stage::Downloading, Some(5), Some(10))]);
    assert!(matches!(body, Body::UpToDate(r) if r.version == "1.0.0"));

    let (client, server) = UnixStream::pair().unwrap();
    tokio::spawn(async move { serve_connection(server, peer(1000), &me(), &Fake).await });
    let update = Command::Update {
        version: Some("9.9.9".into()),
    };
    let body = call(client, update, |_| {}).await.unwrap();
    assert!(
        matches!(body, Body::Error(e) if e.code == ErrorCode::UpdateFailed && e.message.contains("9.9.9"))
    );
}

#[tokio::test]
async fn the_reply_is_tagged_and_versioned_and_unknown_request_fields_are_ignored() {
    let message = exchange(
        b"{\"v\":1,\"cmd\":\"version\",\"extra\":true}\n",
        peer(1000),
    )
    .await;
    let json = serde_json::to_value(&message).unwrap();
    assert_eq!(
        (json["v"].as_u64(), json["type"].as_str()),
        (Some(1), Some("version"))
    );
    assert_eq!(json["pid"], 1);
}

#[tokio::test]
async fn garbage_gets_an_error_reply_and_the_server_keeps_serving() {
    let server = start(Fake);
    for garbage in [
        &b"\x00\xffnot json at all\n"[..],
        b"hello there\n",
        b"{\"v\":1,\"cmd\":\"fly\"}\n",
        b"{\"cmd\":\"status\"}\n",
    ] {
        let (reader, mut writer) = tokio::io::split(connect(&server));
        writer.write_all(garbage).await.unwrap();
        let reply: Message = serde_json::from_str(&read_line(reader).await).unwrap();
        assert_eq!(error(reply).code, ErrorCode::BadRequest);
    }
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn half_a_request_line_is_not_run() {
    let reply = error(exchange(b"{\"v\":1,\"cmd\":\"restart\"}", peer(1000)).await);
    assert_eq!(reply.code, ErrorCode::BadRequest);
    assert!(
        reply.message.contains("requests end with a newline"),
        "{}",
        reply.message
    );
}

#[tokio::test]
async fn a_line_over_the_cap_is_refused_without_reading_it_all() {
    let mut huge = vec![b'x'; MAX_REQUEST_BYTES * 4];
    huge.push(b'\n');
    let (client, server) = UnixStream::pair().unwrap();
    let serving =
        tokio::spawn(async move { serve_connection(server, peer(1000), &me(), &Fake).await });
    // The server stops reading at the cap, so the rest of the write may fail.
    let (read_half, mut write_half) = tokio::io::split(client);
    let (_, line) = tokio::join!(write_half.write_all(&huge), read_line(read_half));
    serving.await.unwrap();
    let reply = error(serde_json::from_str(&line).unwrap());
    assert_eq!(reply.code, ErrorCode::TooLarge);
    assert!(reply.message.contains("65536 bytes"), "{}", reply.message);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out() {
    let (client, server) = UnixStream::pair().unwrap();
    let serving =
        tokio::spawn(async move { serve_connection(server, peer(1000), &me(), &Fake).await });
    let line = read_line(client).await;
    serving.await.unwrap();
    let reply = error(serde_json::from_str(&line).unwrap());
    assert_eq!(reply.code, ErrorCode::Timeout);
    assert_eq!(reply.message, "no complete request line within 5s");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_its_reply_is_given_up_on() {
    // A pipe too small for the status report: the write can only finish if the client reads.
    let (mut client, server) = tokio::io::duplex(64);
    client
        .write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    serve_connection(server, peer(1000), &me(), &Fake).await;
    assert!(started.elapsed() >= WRITE_TIMEOUT);
}

/// A supervisor whose restart the test drives step by step.
struct Stepped(Mutex<Option<mpsc::UnboundedReceiver<Body>>>);

impl Service for Stepped {
    fn status(&self) -> StatusReport {
        fixtures::status()
    }
    fn version(&self) -> VersionReport {
        Fake.version()
    }
    fn restart(&self) -> mpsc::UnboundedReceiver<Body> {
        self.0.lock().unwrap().take().unwrap()
    }
    fn update(&self, version: Option<String>) -> mpsc::UnboundedReceiver<Body> {
        Fake.update(version)
    }
    fn rollback(&self) -> mpsc::UnboundedReceiver<Body> {
        Fake.rollback()
    }
    fn check(&self) -> mpsc::UnboundedReceiver<Body> {
        Fake.check()
    }
}

fn progress(stage: Stage) -> Body {
    Body::Progress(Progress {
        stage,
        message: format!("{stage:?}"),
        pid: Some(3),
        done: None,
        total: None,
    })
}

#[tokio::test]
async fn a_client_vanishing_mid_stream_does_not_hurt_the_server() {
    let (events, restart) = mpsc::unbounded_channel();
    let server = start(Stepped(Mutex::new(Some(restart))));
    let (reader, mut writer) = tokio::io::split(connect(&server));
    writer
        .write_all(b"{\"v\":1,\"cmd\":\"restart\"}\n")
        .await
        .unwrap();
    events.send(progress(Stage::CandidateStarted)).unwrap();
    let mut reader = BufReader::new(reader);
    let mut first = String::new();
    reader.read_line(&mut first).await.unwrap();
    assert!(first.contains("candidate_started"), "{first}");
    drop((reader, writer));

    // The operation goes on without its client, and the server stops writing to it.
    events.send(progress(Stage::Switched)).unwrap();
    events.send(progress(Stage::Draining)).unwrap();
    events.closed().await;
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn a_peer_of_another_uid_is_refused_before_it_is_read() {
    let reply = error(exchange(b"{\"v\":1,\"cmd\":\"status\"}\n", peer(4242)).await);
    assert_eq!(reply.code, ErrorCode::Refused);
    assert_eq!(
        reply.message,
        "permission denied: uid 4242 may not control this supervisor (only root, uid 1000 may)"
    );
    let unknown = error(exchange(b"", Err(PeerError::NoPid)).await);
    assert_eq!(unknown.code, ErrorCode::Refused);
}

#[tokio::test]
async fn past_the_connection_cap_clients_are_told_the_supervisor_is_busy() {
    let server = start(Fake);
    // Silent clients hold every slot until their read timeout.
    let mut silent: Vec<_> = (0..MAX_CONNECTIONS).map(|_| connect(&server)).collect();
    let reply: Message = serde_json::from_str(&read_line(connect(&server)).await).unwrap();
    assert_eq!(
        error(reply).message,
        "too many control connections; try again"
    );
    // A freed slot serves again.
    drop(silent.pop());
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match call(connect(&server), Command::Version, |_| {})
                .await
                .unwrap()
            {
                Body::Error(e) if e.code == ErrorCode::Busy => tokio::task::yield_now().await,
                body => return body,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(body, Body::Version(_)));
}

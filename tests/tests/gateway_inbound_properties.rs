//! A property of the inbound route, checked with generated input against the real router
//! and a real PostgreSQL: whatever a client sends (any JSON, any strings, any bytes, any
//! header values, signed or not), the answer is never a 5xx. A 5xx tells a sender to
//! retry, and bad input retried for ever is an outage of its own.
//!
//! The router runs in-process (`tower::ServiceExt::oneshot`), so hundreds of cases take
//! seconds; storing goes through the same pools and migrations a gateway uses.

use std::sync::Arc;
use std::time::Duration;

use aihummer_gateway::config::{Config, Secret};
use aihummer_gateway::http::inbound::Inbound;
use aihummer_gateway::http::routes;
use aihummer_gateway::http::signature::Verifier;
use aihummer_gateway::inbound::Wake;
use aihummer_gateway::inbound::batch::Batch;
use aihummer_gateway::responder::Builtin;
use aihummer_gateway::state::Shared;
use aihummer_tests::{INBOUND_SECRET, TestDb, hmac_hex, unix_now};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::Value;
use tower::ServiceExt;

const WORKSPACE: &str = "0d6f3a2e-5b4c-4e8d-9f1a-2b3c4d5e6f70";
const TOLERANCE: Duration = Duration::from_secs(300);

/// How a generated request is signed.
#[derive(Debug, Clone)]
enum Signing {
    /// Correctly, at now plus this many seconds (within the tolerance or not).
    Right(i64),
    /// Any header value at all.
    Garbage(Vec<u8>),
    /// The body-only legacy header (refused: the setting is off).
    Legacy,
    /// Not at all.
    Unsigned,
}

#[derive(Clone)]
struct Attempt {
    body: Vec<u8>,
    key: Option<Vec<u8>>,
    signing: Signing,
    extra: Vec<(String, Vec<u8>)>,
}

/// The body as text, so a failing case reads as the JSON it is.
impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("key", &self.key.as_deref().map(String::from_utf8_lossy))
            .field("signing", &self.signing)
            .field("extra", &self.extra)
            .finish()
    }
}

/// Strings that stress storage: anything Unicode, and anything with a NUL inside.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<String>(),
        1 => (any::<String>(), any::<String>()).prop_map(|(a, b)| format!("{a}\u{0}{b}")),
        1 => Just(String::new()),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let message = (text(), text(), text()).prop_map(|(channel, external_id, text)| {
        serde_json::json!({"channel": channel, "external_id": external_id, "text": text})
    });
    let odd_fields = (json(), json(), json()).prop_map(|(channel, external_id, text)| {
        serde_json::json!({"channel": channel, "external_id": external_id, "text": text})
    });
    prop_oneof![
        8 => message.prop_map(|m| serde_json::to_vec(&m).unwrap_or_default()),
        2 => odd_fields.prop_map(|m| serde_json::to_vec(&m).unwrap_or_default()),
        1 => json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => vec(any::<u8>(), 0..256),
    ]
}

/// Bytes a header value may hold (hyper refuses the rest before any handler runs).
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..300),
        "[ -~]{0,300}".prop_map(String::into_bytes)
    ]
    .prop_filter("a valid header value", |v| {
        HeaderValue::from_bytes(v).is_ok()
    })
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let signing = prop_oneof![
        6 => (-400i64..400).prop_map(Signing::Right),
        1 => header_value().prop_map(Signing::Garbage),
        1 => Just(Signing::Legacy),
        1 => Just(Signing::Unsigned),
    ];
    let key = prop_oneof![
        2 => Just(None),
        3 => "[!-~]{1,40}".prop_map(|k| Some(k.into_bytes())),
        1 => header_value().prop_map(Some),
    ];
    let extra = vec(("[a-z][a-z0-9-]{0,16}", header_value()), 0..3);
    (body(), key, signing, extra).prop_map(|(body, key, signing, extra)| Attempt {
        body,
        key,
        signing,
        extra,
    })
}

fn request(attempt: &Attempt) -> Request<Body> {
    let mut request = Request::post("/v1/inbound/generic");
    let key = attempt.key.clone().unwrap_or_default();
    match &attempt.signing {
        Signing::Right(skew) => {
            let t = unix_now() + skew;
            let mut signed = format!("{t}.").into_bytes();
            signed.extend_from_slice(&key);
            signed.push(b'.');
            signed.extend_from_slice(&attempt.body);
            let v1 = hmac_hex(INBOUND_SECRET, &signed);
            request = request.header("x-aihummer-signature", format!("t={t},v1={v1}"));
        }
        Signing::Garbage(value) => {
            request = request.header("x-aihummer-signature", value.as_slice());
        }
        Signing::Legacy => {
            let v = hmac_hex(INBOUND_SECRET, &attempt.body);
            request = request.header("x-aihummer-inbound-secret", v);
        }
        Signing::Unsigned => {}
    }
    if let Some(key) = &attempt.key {
        request = request.header("idempotency-key", key.as_slice());
    }
    for (name, value) in &attempt.extra {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            request = request.header(name, value.as_slice());
        }
    }
    request
        .body(Body::from(attempt.body.clone()))
        .expect("a request")
}

/// The public router over a migrated database, ready to serve.
async fn router(db: &TestDb) -> Router {
    let url = db.url();
    let config = Config::from_lookup(|name| match name {
        "AIHUMMER_DATABASE_URL" => Some(url.clone()),
        "AIHUMMER_DEFAULT_WORKSPACE_ID" => Some(WORKSPACE.into()),
        _ => None,
    })
    .expect("config");
    let (_, leading) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared::new(true, leading));
    let target = config.database.as_ref().expect("a database");
    let pools = aihummer_gateway::database::start(target, None, config.default_workspace, &shared)
        .await
        .expect("startup");
    shared.set_ready(pools);
    let inbound = Arc::new(Inbound {
        shared: shared.clone(),
        verifier: Some(Verifier::new(
            Secret(INBOUND_SECRET.into()),
            TOLERANCE,
            false,
        )),
        workspace: config.default_workspace,
        responder: Box::new(Builtin),
        // Nothing delivers here, so no task sends the wakes.
        wake: Wake::default(),
        batch: Batch::default(),
    });
    routes::public(shared, inbound)
}

#[test]
fn no_inbound_request_whatever_its_body_and_headers_gets_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDb::create());
    let router = runtime.block_on(router(&db));
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 300,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let stored = std::cell::Cell::new(0);
    let outcome = runner.run(&attempt(), |attempt| {
        let (status, answer) = runtime.block_on(async {
            let response = router
                .clone()
                .oneshot(request(&attempt))
                .await
                .expect("infallible");
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            (status, serde_json::from_slice::<Value>(&body).ok())
        });
        prop_assert!(status < 500, "{status} {answer:?} for {attempt:?}");
        let answer = answer.unwrap_or_default();
        if status == 200 {
            stored.set(stored.get() + 1);
        } else {
            prop_assert!(answer["error"]["code"].is_string(), "{status} {answer}");
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // The generators are meant to reach the database, not only the checks before it
    // (about one case in six does; the bound leaves room for chance).
    let stored = stored.get();
    assert!(stored >= 15, "only {stored} requests were stored");
}

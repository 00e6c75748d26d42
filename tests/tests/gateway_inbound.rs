//! Inbound signing and input checks against a real gateway and a real PostgreSQL: a
//! captured request cannot be replayed (not later, not now under a new key), the
//! body-only header needs the operator's opt-in, and input PostgreSQL cannot store is
//! refused as bad input rather than answered "retry".

use std::time::Duration;

use aihummer_tests::{
    Gateway, INBOUND_SECRET, TestDb, hmac_hex, http, signature, signature_at, unix_now,
};
use serde_json::{Value, json};
use sqlx::PgPool;

const WORKSPACE: &str = "6a3e1c55-8a0b-4b6e-9d3f-1e2a3b4c5d6e";
const URL_PATH: &str = "/v1/inbound/generic";

/// A gateway for `db` with inbound enabled, plus `extra` settings.
async fn gateway(db: &TestDb, extra: &[(&str, &str)]) -> Gateway {
    let url = db.url();
    let mut vars = vec![
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
    ];
    vars.extend_from_slice(extra);
    let gw = Gateway::start(&vars);
    gw.wait_ready(Duration::from_secs(30)).await;
    gw
}

/// POSTs `body` with exactly `headers`; returns the status and the JSON answer.
async fn post(gw: &Gateway, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = http().post(gw.url(URL_PATH)).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

async fn stored(pool: &PgPool) -> (i64, i64) {
    let count = |sql| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .expect("count")
    };
    (
        count("SELECT count(*) FROM inbound_messages").await,
        count("SELECT count(*) FROM outbox").await,
    )
}

const BODY: &[u8] = br#"{"channel":"sms","external_id":"m-1","text":"transfer 100"}"#;

#[tokio::test]
async fn a_captured_request_replayed_under_a_new_idempotency_key_is_refused() {
    let db = TestDb::create().await;
    let gw = gateway(&db, &[]).await;
    let captured = signature(INBOUND_SECRET, Some("k-1"), BODY);
    let first = post(
        &gw,
        BODY,
        &[
            ("x-aihummer-signature", &captured),
            ("idempotency-key", "k-1"),
        ],
    )
    .await;
    assert_eq!(first.0, 200, "{first:?}");

    for key in ["k-2", "k-3"] {
        let (status, answer) = post(
            &gw,
            BODY,
            &[
                ("x-aihummer-signature", &captured),
                ("idempotency-key", key),
            ],
        )
        .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("bad_signature"))
        );
    }
    let (status, answer) = post(&gw, BODY, &[("x-aihummer-signature", &captured)]).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("bad_signature")),
        "dropping the key does not help either"
    );
    // The same key again is an honest retry: the first answer, nothing new queued.
    let again = post(
        &gw,
        BODY,
        &[
            ("x-aihummer-signature", &captured),
            ("idempotency-key", "k-1"),
        ],
    )
    .await;
    assert_eq!(again, first);
    assert_eq!(stored(&db.pool().await).await, (1, 1));
}

#[tokio::test]
async fn a_timestamp_older_or_newer_than_the_tolerance_is_refused() {
    let db = TestDb::create().await;
    let gw = gateway(&db, &[("AIHUMMER_INBOUND_TOLERANCE", "60s")]).await;
    for (skew, what) in [(-600, "an old capture"), (600, "a future timestamp")] {
        let header = signature_at(INBOUND_SECRET, unix_now() + skew, None, BODY);
        let (status, answer) = post(&gw, BODY, &[("x-aihummer-signature", &header)]).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("stale_timestamp")),
            "{what}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("at most 60s"), "{message}");
    }
    assert_eq!(stored(&db.pool().await).await, (0, 0));
    let recent = signature_at(INBOUND_SECRET, unix_now() - 30, None, BODY);
    let (status, _) = post(&gw, BODY, &[("x-aihummer-signature", &recent)]).await;
    assert_eq!(status, 200, "within the tolerance");
}

#[tokio::test]
async fn the_body_only_header_is_refused_by_default_and_accepted_behind_the_legacy_setting() {
    let db = TestDb::create().await;
    let legacy = hmac_hex(INBOUND_SECRET, BODY);
    let headers = [("x-aihummer-inbound-secret", legacy.as_str())];
    let strict = gateway(&db, &[]).await;
    let (status, answer) = post(&strict, BODY, &headers).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("legacy_signature_refused"))
    );
    assert_eq!(stored(&db.pool().await).await, (0, 0));
    drop(strict);

    let lenient = gateway(&db, &[("AIHUMMER_INBOUND_LEGACY_SIGNATURE", "true")]).await;
    let (status, answer) = post(&lenient, BODY, &headers).await;
    assert_eq!(status, 200, "{answer}");
    let wrong = hmac_hex("another secret", BODY);
    let (status, answer) = post(
        &lenient,
        BODY,
        &[("x-aihummer-inbound-secret", wrong.as_str())],
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("bad_signature"))
    );
}

#[tokio::test]
async fn a_bad_legacy_setting_stops_the_gateway_naming_the_variable() {
    let mut gw = Gateway::start(&[("AIHUMMER_INBOUND_LEGACY_SIGNATURE", "sometimes")]);
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await.code(), Some(1));
    let logs = gw.logs();
    assert!(
        logs.contains("AIHUMMER_INBOUND_LEGACY_SIGNATURE") && logs.contains("sometimes"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_nul_character_in_any_field_is_refused_with_422_naming_the_field() {
    let db = TestDb::create().await;
    let gw = gateway(&db, &[]).await;
    for field in ["channel", "external_id", "text"] {
        let mut message = json!({"channel": "sms", "external_id": "nul", "text": "hi"});
        message[field] = json!("before\u{0}after");
        let body = serde_json::to_vec(&message).expect("serialize");
        let header = signature(INBOUND_SECRET, None, &body);
        let (status, answer) = post(&gw, &body, &[("x-aihummer-signature", &header)]).await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_message");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{field}`")), "{message}");
    }
    assert_eq!(stored(&db.pool().await).await, (0, 0));
}

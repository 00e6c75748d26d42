//! Unit tests of `protocol`.

use super::*;
use crate::control::fixtures;

fn round_trip(body: Body) -> serde_json::Value {
    let message = Message {
        v: PROTOCOL_VERSION,
        body,
    };
    let line = serde_json::to_string(&message).unwrap();
    assert_eq!(serde_json::from_str::<Message>(&line).unwrap(), message);
    serde_json::from_str(&line).unwrap()
}

#[test]
fn update_and_rollback_requests_are_typed_on_the_wire() {
    let update = parse_request(r#"{"v":1,"cmd":"update","version":"1.4.2"}"#).unwrap();
    assert_eq!(
        update.command,
        Command::Update {
            version: Some("1.4.2".into())
        }
    );
    let bare = parse_request(r#"{"v":1,"cmd":"update"}"#).unwrap();
    assert_eq!(bare.command, Command::Update { version: None });
    let rollback = parse_request(r#"{"v":1,"cmd":"rollback"}"#).unwrap();
    assert_eq!(rollback.command, Command::Rollback);
    let line = serde_json::to_string(&Request {
        v: PROTOCOL_VERSION,
        command: Command::Update { version: None },
    })
    .unwrap();
    assert_eq!(line, r#"{"v":1,"cmd":"update"}"#);
}

#[test]
fn every_command_round_trips_under_its_cmd_tag() {
    for (command, tag) in [
        (Command::Status, "status"),
        (Command::Version, "version"),
        (Command::Restart, "restart"),
        (Command::Update { version: None }, "update"),
        (Command::Rollback, "rollback"),
        (Command::Check, "check"),
    ] {
        let request = Request {
            v: PROTOCOL_VERSION,
            command,
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(line, format!(r#"{{"v":1,"cmd":"{tag}"}}"#));
        assert_eq!(parse_request(&line).unwrap(), request);
    }
}

#[test]
fn every_reply_body_round_trips_under_its_type_tag() {
    let restarted = RestartReport {
        old_pid: Some(4100),
        new_pid: 4242,
        version: Some("0.1.0".into()),
        duration_ms: 1180,
    };
    let version = VersionReport {
        version: "1.0.0".into(),
        pid: 1,
        gateway: Some(GatewayVersion {
            version: Some("1.0.0".into()),
            pid: 2,
        }),
    };
    let up_to_date = UpToDateReport {
        version: "1.0.0".into(),
    };
    let checked = CheckReport {
        running: "1.4.2".into(),
        offered: "1.4.5".into(),
        available: true,
    };
    for (body, tag) in [
        (Body::Status(Box::new(fixtures::status())), "status"),
        (Body::Version(version), "version"),
        (Body::Restarted(restarted), "restarted"),
        (Body::UpToDate(up_to_date), "up_to_date"),
        (Body::Checked(checked), "checked"),
        (Body::error(ErrorCode::NoRollback, "none"), "error"),
    ] {
        assert!(body.is_final());
        let json = round_trip(body);
        assert_eq!(
            (json["v"].as_u64(), json["type"].as_str()),
            (Some(1), Some(tag))
        );
    }
}

#[test]
fn a_restart_reply_keeps_its_documented_bytes() {
    let message = Message {
        v: PROTOCOL_VERSION,
        body: Body::Restarted(RestartReport {
            old_pid: Some(4100),
            new_pid: 4242,
            version: Some("0.1.0".into()),
            duration_ms: 1180,
        }),
    };
    assert_eq!(
        serde_json::to_string(&message).unwrap(),
        r#"{"v":1,"type":"restarted","old_pid":4100,"new_pid":4242,"version":"0.1.0","duration_ms":1180}"#
    );
}

#[test]
fn progress_is_not_final_and_leaves_out_the_fields_it_does_not_have() {
    let progress = Body::Progress(Progress {
        stage: Stage::CandidateStarted,
        message: "m".into(),
        pid: Some(4242),
        done: None,
        total: None,
    });
    assert!(!progress.is_final());
    let json = round_trip(progress);
    assert_eq!(
        json.to_string(),
        r#"{"message":"m","pid":4242,"stage":"candidate_started","type":"progress","v":1}"#
    );
}

#[test]
fn error_codes_are_snake_case_and_one_from_a_newer_peer_reads_as_unknown() {
    let json = round_trip(Body::error(ErrorCode::UnsupportedVersion, "v9"));
    assert_eq!(json["code"], "unsupported_version");
    let line = r#"{"v":1,"type":"error","code":"on_fire","message":"m"}"#;
    let message: Message = serde_json::from_str(line).unwrap();
    assert_eq!(
        message.body,
        Body::Error(ErrorReply {
            code: ErrorCode::Unknown,
            message: "m".into()
        })
    );
}

#[test]
fn unknown_fields_are_ignored_on_both_sides() {
    let request = parse_request(r#"{"v":1,"cmd":"status","extra":true}"#).unwrap();
    assert_eq!(request.command, Command::Status);
    let line = r#"{"v":1,"type":"up_to_date","version":"1.0.0","new":[1]}"#;
    let message: Message = serde_json::from_str(line).unwrap();
    assert!(matches!(message.body, Body::UpToDate(r) if r.version == "1.0.0"));
}

#[test]
fn a_request_without_a_version_or_a_known_command_is_a_bad_request() {
    for line in [
        "hello there",
        r#"{"v":1,"cmd":"fly"}"#,
        r#"{"cmd":"status"}"#,
        r#"{"v":1,"cmd":"sta"#,
    ] {
        let reply = parse_request(line).unwrap_err();
        assert_eq!(reply.code, ErrorCode::BadRequest, "{line}");
    }
}

#[test]
fn another_protocol_version_is_named_before_the_command_is_read() {
    let reply = parse_request(r#"{"v":2,"cmd":"anything"}"#).unwrap_err();
    assert_eq!(reply.code, ErrorCode::UnsupportedVersion);
    assert!(reply.message.contains("version 2"), "{}", reply.message);
    let reply = parse_request(r#"{"v":"one","cmd":"status"}"#).unwrap_err();
    assert!(
        reply.message.contains("(not a number)"),
        "{}",
        reply.message
    );
}

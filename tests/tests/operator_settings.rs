//! A setting written with a slip (set but empty, or padded with spaces) stops either
//! binary at startup with an error naming the variable, and the log line an operator reads
//! is that error itself, not a generic "stopped" with the reason tucked into a field.

use std::process::Stdio;
use std::time::Duration;

use aihummer_tests::binary;

/// Runs `name` with `args` and `env` (nothing else from this environment's
/// `AIHUMMER_*`) and returns its exit code and the log lines (JSON: stderr is a pipe).
async fn start_refused(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut command = tokio::process::Command::new(binary(name));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AIHUMMER_GATEWAY_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("a refused setting stops the process at once")
        .expect("run");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| line.into()))
        .collect();
    (out.status.code(), lines)
}

/// The log's error line is the error itself, starting with `expected`.
fn assert_error_is(lines: &[serde_json::Value], expected: &str) {
    let error = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error line: {lines:?}"));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(expected)),
        "the error line's message is the error: {error}"
    );
}

#[tokio::test]
async fn the_supervisor_refuses_an_empty_or_padded_setting_naming_it_in_the_log_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let socket = socket.to_str().expect("utf-8 path");
    for (value, problem) in [
        ("", "is set but empty"),
        (" apply", "starts with whitespace"),
    ] {
        let (code, lines) = start_refused(
            "aihummer",
            &["run"],
            &[
                ("AIHUMMER_SUPERVISOR_SOCKET", socket),
                ("AIHUMMER_AUTO_UPDATE", value),
            ],
        )
        .await;
        assert_eq!(code, Some(1), "{lines:?}");
        assert_error_is(&lines, &format!("AIHUMMER_AUTO_UPDATE {problem}"));
    }
}

#[tokio::test]
async fn the_gateway_refuses_an_empty_or_padded_setting_naming_it_in_the_log_message() {
    for (var, value, problem) in [
        ("AIHUMMER_DRAIN_TIMEOUT", "", "is set but empty"),
        ("AIHUMMER_INBOUND_SECRET", "s3cret ", "ends with whitespace"),
    ] {
        let (code, lines) = start_refused("aihummer-gateway", &[], &[(var, value)]).await;
        assert_eq!(code, Some(1), "{lines:?}");
        assert_error_is(&lines, &format!("{var} {problem}"));
        assert!(!format!("{lines:?}").contains("s3cret"), "{lines:?}");
    }
}

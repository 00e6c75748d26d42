//! Asking one child, on its private probe listener, whether it is ready.
//!
//! Ready means `/readyz` answers 200 with the child's own pid. A gateway without a database
//! (health-only mode) answers `/readyz` 503 forever by contract; it counts as started when
//! `/healthz` answers 200 with its pid and `"mode":"health-only"`, since there is nothing
//! to be ready for. The judging is pure ([`judge`]); the HTTP exchange is a thin shell.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// How long one probe request may take. A loopback answer is immediate; a child busy
/// migrating still answers `/readyz` at once (503).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe answers are tiny JSON objects; anything larger is not a gateway.
const MAX_BODY: usize = 16 * 1024;

/// What a probe learned about a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ready to take traffic, reporting this version.
    Ready {
        /// The version the child reported.
        version: String,
        /// Whether it runs without a database (health-only mode).
        health_only: bool,
    },
    /// Not ready (yet), and why.
    NotReady(String),
}

/// One probe answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as received.
    pub body: Bytes,
}

#[derive(Deserialize)]
struct Reported {
    pid: Option<u32>,
    version: Option<String>,
    ready: Option<bool>,
    reason: Option<String>,
    mode: Option<String>,
}

/// Judges the answers of a child that should have `pid`: `readyz` always, `healthz` when
/// `/readyz` did not say ready.
pub fn judge(readyz: &Answer, healthz: Option<&Answer>, pid: u32) -> Verdict {
    let Ok(ready) = serde_json::from_slice::<Reported>(&readyz.body) else {
        return Verdict::NotReady(format!("/readyz answered {} with no JSON", readyz.status));
    };
    if ready.pid.is_some_and(|p| p != pid) {
        // Another process answered on this child's probe port: never trust it.
        return Verdict::NotReady(format!(
            "/readyz answered for pid {}, expected {pid}",
            ready.pid.unwrap_or_default()
        ));
    }
    if readyz.status == 200 && ready.ready == Some(true) && ready.pid == Some(pid) {
        return Verdict::Ready {
            version: ready.version.unwrap_or_default(),
            health_only: false,
        };
    }
    if let Some(health) = healthz.filter(|h| h.status == 200)
        && let Ok(health) = serde_json::from_slice::<Reported>(&health.body)
        && health.pid == Some(pid)
        && health.mode.as_deref() == Some("health-only")
    {
        return Verdict::Ready {
            version: health.version.unwrap_or_default(),
            health_only: true,
        };
    }
    Verdict::NotReady(
        ready
            .reason
            .unwrap_or_else(|| format!("/readyz answered {}", readyz.status)),
    )
}

/// A probe that got no usable answer at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within [`PROBE_TIMEOUT`].
    #[error("no answer from {0} within {PROBE_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// The connection or the exchange failed (the child may still be starting).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The probe address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
}

/// Probes the child `pid` listening at `addr` and judges its answers.
pub async fn readiness(addr: SocketAddr, pid: u32) -> Verdict {
    let readyz = match get(addr, "/readyz").await {
        Ok(answer) => answer,
        Err(err) => return Verdict::NotReady(err.to_string()),
    };
    let healthz = if readyz.status == 200 {
        None
    } else {
        get(addr, "/healthz").await.ok()
    };
    judge(&readyz, healthz.as_ref(), pid)
}

/// One `GET` over a fresh connection, bounded in time and size.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, ProbeError> {
    get_bounded(addr, path, MAX_BODY).await
}

/// [`get`] with a larger body allowed, for answers bigger than a probe's (metrics).
pub async fn get_bounded(
    addr: SocketAddr,
    path: &str,
    max_body: usize,
) -> Result<Answer, ProbeError> {
    tokio::time::timeout(PROBE_TIMEOUT, exchange(addr, path, max_body))
        .await
        .map_err(|_| ProbeError::Timeout(addr))?
        .map_err(|reason| ProbeError::Unreachable { addr, reason })
}

async fn exchange(addr: SocketAddr, path: &str, max_body: usize) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends with the exchange: the request asks to close it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status: StatusCode = response.status();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status: status.as_u16(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn ready_means_200_with_the_expected_pid() {
        let ok = answer(200, r#"{"ready":true,"version":"1.2.3","pid":42}"#);
        assert_eq!(
            judge(&ok, None, 42),
            Verdict::Ready {
                version: "1.2.3".into(),
                health_only: false
            }
        );
        assert!(matches!(judge(&ok, None, 43), Verdict::NotReady(r) if r.contains("pid 42")));
    }

    #[test]
    fn a_health_only_gateway_counts_as_started() {
        let not = answer(
            503,
            r#"{"ready":false,"reason":"health-only mode","pid":7}"#,
        );
        let health = answer(
            200,
            r#"{"status":"ok","version":"0.1.0","pid":7,"mode":"health-only"}"#,
        );
        assert_eq!(
            judge(&not, Some(&health), 7),
            Verdict::Ready {
                version: "0.1.0".into(),
                health_only: true
            }
        );
    }

    #[test]
    fn a_full_mode_gateway_that_is_not_ready_reports_its_reason() {
        let not = answer(
            503,
            r#"{"ready":false,"reason":"database unavailable: refused","pid":7}"#,
        );
        let health = answer(200, r#"{"status":"ok","pid":7,"mode":"full"}"#);
        assert_eq!(
            judge(&not, Some(&health), 7),
            Verdict::NotReady("database unavailable: refused".into())
        );
        assert!(matches!(
            judge(&answer(502, "oops"), None, 7),
            Verdict::NotReady(_)
        ));
    }
}

//! The node's `GET /metrics` at `AIHUMMER_METRICS_ADDR`: the supervisor's own metrics
//! followed by the serving gateway's, read over that gateway's private probe listener, so
//! a node is one scrape target however many gateways a handoff runs.
//!
//! Both parts are the Prometheus text format 0.0.4 with distinct metric names
//! (`aihummer_supervisor_*`, `aihummer_gateway_*`) and no `# EOF`, so their concatenation
//! is valid exposition text. When no gateway serves or it does not answer within the
//! probe timeout, the answer carries the supervisor's part alone, with
//! `aihummer_supervisor_gateway_scrape_ok 0`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::process::probe;
use crate::supervise::metrics::Registered;

/// The largest gateway metrics answer read; a gateway's is a few tens of KiB.
const MAX_GATEWAY_METRICS: usize = 4 << 20;
/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint reads: the supervisor's registry and where the serving gateway's
/// probe listener is.
#[derive(Clone)]
pub struct Node {
    /// The supervisor's metrics.
    pub metrics: Registered,
    /// The serving gateway's probe listener, if one serves.
    pub active_probe: watch::Receiver<Option<SocketAddr>>,
}

/// Serves `/metrics` on `listener` until `stop` resolves.
pub async fn serve(listener: TcpListener, node: Node, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "metrics listener: accept failed");
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(answer(&node, &request).await) }
            });
            let served = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
}

async fn answer(node: &Node, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    let probe = *node.active_probe.borrow();
    let gateway = gateway_metrics(probe).await;
    node.metrics
        .gateway_scrape_ok
        .set(i64::from(gateway.is_some()));
    match node.metrics.encode() {
        Ok(mut text) => {
            text.push_str(gateway.as_deref().unwrap_or_default());
            let mut response = plain(StatusCode::OK, text);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(err) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {err}\n"),
        ),
    }
}

/// The serving gateway's own metrics, or `None` when none serves or it does not answer.
async fn gateway_metrics(probe: Option<SocketAddr>) -> Option<String> {
    let addr = probe?;
    match probe::get_bounded(addr, "/metrics", MAX_GATEWAY_METRICS).await {
        Ok(answer) if answer.status == 200 => String::from_utf8(answer.body.to_vec()).ok(),
        Ok(answer) => {
            tracing::warn!(status = answer.status, "the gateway's /metrics failed");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the gateway's metrics");
            None
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

//! The body read deadline: a request body that has not fully arrived by its deadline ends
//! in an error, and the request is answered 408 with the connection closed.
//!
//! The deadline is for the whole body, not per read: a client sending one byte just often
//! enough would otherwise hold its connection (and a drain) for as long as it likes. During
//! a drain a body still arriving gets at most [`DRAIN_BODY_GRACE`] more.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::error::ApiError;

/// Once a drain starts, how much longer a request body still arriving may take. A real
/// client sends its (at most 64 KiB) body in milliseconds; a slow one is answered 408 and
/// stops holding the drain.
pub const DRAIN_BODY_GRACE: Duration = Duration::from_secs(2);

/// The error a body reports once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive before its deadline")]
pub(super) struct BodyTimeout;

/// Whether a request's body missed its deadline, readable after the handler ran.
#[derive(Debug, Clone, Default)]
pub(super) struct Expired(Arc<AtomicBool>);

impl Expired {
    pub(super) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

type Deadline = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request body that fails once its deadline passes before it has fully arrived.
pub(super) struct BodyDeadline<B> {
    inner: B,
    /// `None` once the body is complete, or when it had nothing to send.
    deadline: Option<Deadline>,
    expired: Expired,
}

impl<B: Body + Unpin> BodyDeadline<B> {
    /// Gives `request` a body that must arrive by `at`, or within [`DRAIN_BODY_GRACE`] of
    /// the drain's start if that comes first. The [`Expired`] flag tells afterwards whether
    /// it missed.
    pub(super) fn wrap(
        request: Request<B>,
        at: Instant,
        drain: watch::Receiver<bool>,
    ) -> (Request<BodyDeadline<B>>, Expired) {
        let expired = Expired::default();
        let flag = expired.clone();
        let request = request.map(|inner| {
            // A request without a body needs no timer.
            let deadline = (!inner.is_end_stream()).then(|| deadline(at, drain));
            BodyDeadline {
                inner,
                deadline,
                expired: flag,
            }
        });
        (request, expired)
    }
}

/// Resolves at `at`, or [`DRAIN_BODY_GRACE`] after the drain starts, whichever is first.
fn deadline(at: Instant, mut drain: watch::Receiver<bool>) -> Deadline {
    Box::pin(async move {
        let drained = async {
            // A dropped sender means the server is gone: that is a drain too.
            let _ = drain.wait_for(|draining| *draining).await;
            tokio::time::sleep(DRAIN_BODY_GRACE).await;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = drained => {}
        }
    })
}

impl<B> Body for BodyDeadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.expired.is_set() {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() {
                this.deadline = None;
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match this
            .deadline
            .as_mut()
            .map(|deadline| deadline.as_mut().poll(cx))
        {
            Some(Poll::Ready(())) => {
                this.deadline = None;
                this.expired.0.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body missed its deadline.
pub(super) fn answer(timeout: Duration) -> Response {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive in time: the limit is {timeout:?} \
             (AIHUMMER_BODY_READ_TIMEOUT), {DRAIN_BODY_GRACE:?} once the gateway drains"
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A body fed by the test, one chunk at a time; it ends when the sender is dropped.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn fed(
        drain: &watch::Sender<bool>,
    ) -> (mpsc::Sender<Bytes>, BodyDeadline<Fed>, Expired, Instant) {
        let (send, receive) = mpsc::channel(8);
        let started = Instant::now();
        let (request, expired) = BodyDeadline::wrap(
            Request::new(Fed(receive)),
            started + TIMEOUT,
            drain.subscribe(),
        );
        (send, request.into_body(), expired, started)
    }

    async fn next(body: &mut BodyDeadline<Fed>) -> Option<Result<Frame<Bytes>, BoxError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_passes_through_untouched() {
        let drain = watch::channel(false).0;
        let (send, mut body, expired, _) = fed(&drain);
        send.send(Bytes::from_static(b"he")).await.unwrap();
        tokio::time::sleep(TIMEOUT / 2).await;
        send.send(Bytes::from_static(b"llo")).await.unwrap();
        drop(send);
        let mut got = Vec::new();
        while let Some(frame) = next(&mut body).await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"hello");
        assert!(!expired.is_set());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_at_its_deadline_however_often_a_byte_comes() {
        let drain = watch::channel(false).0;
        let (send, mut body, expired, started) = fed(&drain);
        let trickle = tokio::spawn(async move {
            while send.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let failed = loop {
            match next(&mut body).await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => break err,
                None => panic!("the trickle never ends"),
            }
        };
        assert!(failed.is::<BodyTimeout>(), "{failed}");
        assert!(expired.is_set());
        assert_eq!(started.elapsed().as_secs(), TIMEOUT.as_secs());
        assert!(next(&mut body).await.unwrap().is_err(), "it stays failed");
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_cuts_a_stalled_body_short_after_the_grace() {
        let drain = watch::channel(false).0;
        let (_send, mut body, expired, started) = fed(&drain);
        let stalled = tokio::spawn(async move { next(&mut body).await.map(|r| r.is_err()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain.send_replace(true);
        assert_eq!(stalled.await.unwrap(), Some(true));
        assert!(expired.is_set());
        assert_eq!(started.elapsed(), Duration::from_secs(1) + DRAIN_BODY_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_a_body_is_never_timed_out() {
        let drain = watch::channel(true).0;
        let (request, expired) = BodyDeadline::wrap(
            Request::new(axum::body::Body::empty()),
            Instant::now(),
            drain.subscribe(),
        );
        let mut body = request.into_body();
        tokio::time::sleep(TIMEOUT).await;
        let end = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(end.is_none());
        assert!(!expired.is_set());
    }

    #[tokio::test]
    async fn the_answer_is_408_with_a_json_code() {
        let response = answer(TIMEOUT);
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "body_timeout");
    }
}

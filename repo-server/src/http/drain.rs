//! The drain: the unread rest of an HTTP/2 request body is read and thrown away after the answer,
//! so an early answer (a 4xx decided from the headers, or a 200 for a chunk the repository
//! already holds) ends its stream cleanly instead of with a reset.
//!
//! Why: a handler that answers before reading the body drops it, and h2 then resets the stream
//! (`RST_STREAM`, `CANCEL` when the body goes before the answer, `NO_ERROR` after it). RFC 9113
//! §8.1 allows that, but clients still sending the body do not all take it well: curl 7.88
//! (Debian 12) reports `(92) Stream error in the HTTP/2 framing layer` and shows neither status
//! nor body. Kept alive and read to its end, the stream closes normally. A refusal goes out at
//! once and the body is drained beside it: curl stops sending when it sees an error status (it
//! ends the stream). A success answered from the headers waits for the body to be drained first:
//! clients keep sending after a 2xx, and curl 7.88 stalls if the answer ends before its upload.
//!
//! Bounds: nothing drained is kept (each frame is dropped as it arrives, and reading it reopens
//! the flow-control window); at most [`AppState::drain_limit`] bytes are read, and a body that
//! sends nothing for `limits.body_idle_timeout` is given up. Past either bound the body is dropped
//! and h2 resets the stream with `NO_ERROR`, after the answer. HTTP/1.1 is left alone: hyper
//! closes the connection after an answer that left the body unread, which every client handles.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::AppState;

/// Middleware: hands a request body the handler left unread to a task that drains it.
pub async fn drain_unread_body(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.version() != http::Version::HTTP_2 || req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (back, returned) = oneshot::channel();
    let req = req.map(|inner| {
        Body::new(Returning {
            inner: Some(inner),
            back: Some(back),
        })
    });
    let resp = next.run(req).await;
    let (limit, idle) = (st.drain_limit, st.idle());
    let mut returned = returned;
    match returned.try_recv() {
        // Dropped unread after a success (the 200 for a chunk already held): clients keep
        // sending after a 2xx, and curl 7.88 stalls when the answer ends before its upload, so
        // the rest is read before the answer goes out.
        Ok(body) if resp.status().is_success() => drain(body, limit, idle).await,
        // Dropped unread after a refusal: the answer goes out at once (clients stop sending
        // when they see it) and the rest is drained beside it.
        Ok(body) => {
            tokio::spawn(drain(body, limit, idle));
        }
        // Still held (by a response that streams it): drain whatever is left once it is let go.
        Err(oneshot::error::TryRecvError::Empty) => {
            tokio::spawn(async move {
                if let Ok(body) = returned.await {
                    drain(body, limit, idle).await;
                }
            });
        }
        // Read to its end: nothing to do.
        Err(oneshot::error::TryRecvError::Closed) => {}
    }
    resp
}

/// Reads and discards `body` until its end, at most `limit` bytes, waiting at most `idle` for
/// each frame; then drops it.
async fn drain(mut body: Body, limit: u64, idle: Duration) {
    let mut read = 0u64;
    while read <= limit {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                }
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, read, "unread request body broke off while draining");
                return;
            }
            Err(_) => break,
        }
    }
    tracing::debug!(
        read,
        limit,
        "unread request body too long or stalled: stream reset"
    );
}

/// A request body that, dropped before its end, goes back to [`drain_unread_body`].
struct Returning {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.inner.take(), self.back.take()) {
            if !body.is_end_stream() {
                let _ = back.send(body);
            }
        }
    }
}

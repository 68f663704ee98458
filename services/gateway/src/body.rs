//! Every request body in bounded time and memory, and no panic text to clients.
//!
//! [`guard`] wraps each request: its body is read through [`TimedBody`] (an idle timer and a
//! deadline; a [`BodyWatch`] in the request's extensions says how reading ended), and a panic in
//! a handler becomes an opaque JSON 500 with the panic logged. A body that is not read to its end
//! (refused early, timed out) closes the connection after the answer (actix-http does that for
//! an unfinished payload), so its rest is never parsed as a new request.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures::{FutureExt, Stream};
use tokio::time::{Instant, Sleep};

use crate::ApiError;

/// Bytes of a multipart form that are not part contents (preamble, boundaries and part
/// headers, plus what the parser holds between two reads) before the form is refused: a
/// browser's form with the 64 fields allowed takes a few KiB, and the parser's read-ahead is a
/// few 32 KiB chunks, so 1 MiB refuses only forms built to make the gateway buffer headers.
pub const MAX_MULTIPART_FRAMING_BYTES: u64 = 1 << 20;

/// How long the body of one request may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Longest wait for the next byte.
    pub idle: Duration,
    /// Longest time for the whole body, from the moment the handler starts.
    pub total: Duration,
}

/// Why reading a body was stopped by the gateway (rather than by the client or the parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// No byte for this long.
    Idle(Duration),
    /// The body took longer than this.
    Total(Duration),
    /// A multipart form's framing exceeded [`MAX_MULTIPART_FRAMING_BYTES`].
    Framing(u64),
}

impl BodyFailure {
    /// The answer this failure gets.
    pub fn to_api_error(self) -> ApiError {
        match self {
            BodyFailure::Idle(d) => ApiError::RequestTimeout(format!(
                "no byte of the request body arrived for {} s",
                d.as_secs()
            )),
            BodyFailure::Total(d) => ApiError::RequestTimeout(format!(
                "the request body took longer than {} s",
                d.as_secs()
            )),
            BodyFailure::Framing(limit) => ApiError::TooLarge(format!(
                "the multipart form's part headers and boundaries exceed {limit} bytes"
            )),
        }
    }
}

/// How reading one request's body is going; shared by [`TimedBody`] and the handler (found in
/// the request's extensions).
#[derive(Clone, Default)]
pub struct BodyWatch(Rc<WatchState>);

#[derive(Default)]
struct WatchState {
    /// Bytes handed on so far.
    received: Cell<u64>,
    /// Bytes the handler counted as content (multipart part contents).
    consumed: Cell<u64>,
    /// When set, `received - consumed` may not exceed it.
    framing_limit: Cell<Option<u64>>,
    /// The body was read to its end.
    ended: Cell<bool>,
    failure: Cell<Option<BodyFailure>>,
}

impl BodyWatch {
    /// The watch of `req`'s body, or a fresh one (no framing limit) when the request was not
    /// wrapped by [`guard`].
    pub fn of(req: &actix_web::HttpRequest) -> BodyWatch {
        req.extensions()
            .get::<BodyWatch>()
            .cloned()
            .unwrap_or_default()
    }

    /// Limits the bytes read ahead of what [`BodyWatch::consume`] counted (a multipart form).
    pub fn limit_framing(&self, limit: u64) {
        self.0.framing_limit.set(Some(limit));
    }

    /// Counts `n` bytes of part content taken by the handler.
    pub fn consume(&self, n: usize) {
        let consumed = self.0.consumed.get().saturating_add(n as u64);
        self.0.consumed.set(consumed);
    }

    /// Whether the body has been read to its end.
    pub fn ended(&self) -> bool {
        self.0.ended.get()
    }

    /// Why the gateway stopped reading, if it did.
    pub fn failure(&self) -> Option<BodyFailure> {
        self.0.failure.get()
    }

    /// The answer to an error met while reading the body: the gateway's own reason when it
    /// stopped the body, else a 400 saying `what` failed.
    pub fn error(&self, what: &str, cause: impl std::fmt::Display) -> ApiError {
        match self.failure() {
            Some(failure) => failure.to_api_error(),
            None => ApiError::BadRequest(format!("{what}: {cause}")),
        }
    }
}

/// A request body with an idle timer and a deadline. On either, or when a multipart form's
/// framing grows past its limit, it ends with an error and records why in its [`BodyWatch`].
pub struct TimedBody {
    inner: Payload,
    limits: BodyLimits,
    watch: BodyWatch,
    /// Armed when the reader first waits after a chunk, so time the handler spends elsewhere
    /// (probing, NATS) never counts as the client's pause.
    idle: Option<Pin<Box<Sleep>>>,
    deadline: Pin<Box<Sleep>>,
    done: bool,
}

impl TimedBody {
    /// Wraps `inner`; the deadline starts now.
    pub fn new(inner: Payload, limits: BodyLimits, watch: BodyWatch) -> TimedBody {
        TimedBody {
            inner,
            limits,
            watch,
            idle: None,
            deadline: Box::pin(tokio::time::sleep(limits.total)),
            done: false,
        }
    }

    fn fail(&mut self, failure: BodyFailure) -> Poll<Option<Result<Bytes, PayloadError>>> {
        self.done = true;
        self.watch.0.failure.set(Some(failure));
        let message = failure.to_api_error().to_string();
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            message,
        )))))
    }
}

impl Stream for TimedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.idle = None;
                let state = &this.watch.0;
                let received = state.received.get().saturating_add(chunk.len() as u64);
                state.received.set(received);
                if let Some(limit) = state.framing_limit.get() {
                    if received.saturating_sub(state.consumed.get()) > limit {
                        return this.fail(BodyFailure::Framing(limit));
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.watch.0.ended.set(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyFailure::Total(this.limits.total));
                }
                let idle = this.limits.idle;
                let timer = this.idle.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyFailure::Idle(idle));
                }
                Poll::Pending
            }
        }
    }
}

/// The middleware every request passes: its body becomes a [`TimedBody`] (its [`BodyWatch`] in
/// the request's extensions), and a panic in the handler an opaque JSON 500, logged.
///
/// # Errors
///
/// Whatever the inner service returns.
pub async fn guard(
    limits: BodyLimits,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // What the log names if the handler panics (the request itself must not be cloned: the
    // router needs it unshared).
    let method = req.method().clone();
    let path = req.path().to_owned();
    let watch = BodyWatch::default();
    req.extensions_mut().insert(watch.clone());
    let payload = req.take_payload();
    let timed = TimedBody::new(payload, limits, watch);
    req.set_payload(Payload::Stream {
        payload: Box::pin(timed),
    });
    match std::panic::AssertUnwindSafe(next.call(req))
        .catch_unwind()
        .await
    {
        Ok(result) => result.map(ServiceResponse::map_into_boxed_body),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(detail, %method, path, "a handler panicked");
            // Answered by ApiError's ResponseError: an opaque JSON 500.
            Err(ApiError::Panicked.into())
        }
    }
}

/// `stream`, except that waiting for more after the body has ended is an error: actix-multipart
/// 0.7 waits forever for a closing boundary that never comes (it returns `Pending` at the end of
/// its input without anything left to wake it).
pub fn until_stuck<S, T>(
    mut stream: S,
    watch: BodyWatch,
) -> impl Stream<Item = Result<T, ApiError>> + Unpin
where
    S: Stream<Item = Result<T, ApiError>> + Unpin,
{
    futures::stream::poll_fn(move |cx| match Pin::new(&mut stream).poll_next(cx) {
        Poll::Pending if watch.ended() => Poll::Ready(Some(Err(unterminated()))),
        other => other,
    })
}

/// The next item of `stream`, or an error when it waits for more after the body has ended (see
/// [`until_stuck`]).
///
/// # Errors
///
/// 400 when the body ended without the form's closing boundary.
pub async fn next_or_stuck<S: Stream + Unpin>(
    stream: &mut S,
    watch: &BodyWatch,
) -> Result<Option<S::Item>, ApiError> {
    futures::future::poll_fn(|cx| match Pin::new(&mut *stream).poll_next(cx) {
        Poll::Ready(item) => Poll::Ready(Ok(item)),
        Poll::Pending if watch.ended() => Poll::Ready(Err(unterminated())),
        Poll::Pending => Poll::Pending,
    })
    .await
}

fn unterminated() -> ApiError {
    ApiError::BadRequest("the multipart body ends before its closing boundary".into())
}

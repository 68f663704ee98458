//! Every request measured: its latency by method, route pattern and status
//! ([`HTTP_REQUEST_SECONDS`]), the bytes of its body ([`UPLOADED_BYTES`]) and of its answer's
//! body ([`SERVED_BYTES`]), by route pattern.
//!
//! The route label is the pattern the request matched (`/music/{music_id}`), never the raw path,
//! so the number of series stays bounded whatever clients ask for; a path no route matches is
//! `unmatched`. The method label is one of the standard methods a route here may take, or
//! `other` ([`method_label`]): actix accepts any token as a method, so a client could otherwise
//! make a new series with each one it invents.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use dme_telemetry::metrics::{HTTP_REQUEST_SECONDS, SERVED_BYTES, UPLOADED_BYTES};
use futures::StreamExt;

/// The route label of a path no route matches.
const UNMATCHED: &str = "unmatched";

/// The method label of a method not in [`KNOWN_METHODS`].
const OTHER_METHOD: &str = "other";

/// Methods labelled by name: those of HTTP/1.1 that a client of this API sends (`CONNECT` and
/// `TRACE` are never routed here, and go to `other` with every invented token).
const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// The `method` label of a request: its method when known, else [`OTHER_METHOD`], so the
/// number of series stays bounded whatever methods clients invent.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == method.as_str())
        .copied()
        .unwrap_or(OTHER_METHOD)
}

/// The middleware: counts the request body's bytes as they are read, times the request to its
/// answer's head, and counts the answer body's bytes as they are sent.
///
/// # Errors
/// Whatever the inner service returns (measured with its error's status).
pub async fn measure(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<Counted>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| UNMATCHED.to_string());
    let method = method_label(req.method());
    let mut uploaded = ByteCount::new(UPLOADED_BYTES, &route);
    let payload = req.take_payload().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            uploaded.add(bytes.len());
        }
        chunk
    });
    req.set_payload(Payload::Stream {
        payload: Box::pin(payload),
    });
    let result = next.call(req).await;
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics::histogram!(
        HTTP_REQUEST_SECONDS,
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    let served = ByteCount::new(SERVED_BYTES, &route);
    result.map(|res| {
        res.map_body(|_, body| Counted {
            body: body.boxed(),
            served,
        })
    })
}

/// Bytes of one route counted in a counter registered at the first byte, so a route that
/// never carries a body (`GET` requests' bodies) makes no series.
struct ByteCount {
    name: &'static str,
    route: String,
    counter: Option<metrics::Counter>,
}

impl ByteCount {
    fn new(name: &'static str, route: &str) -> ByteCount {
        ByteCount {
            name,
            route: route.to_string(),
            counter: None,
        }
    }

    fn add(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let (name, route) = (self.name, &self.route);
        self.counter
            .get_or_insert_with(|| metrics::counter!(name, "route" => route.clone()))
            .increment(n as u64);
    }
}

/// An answer's body whose bytes are counted in [`SERVED_BYTES`] as they are sent.
pub struct Counted {
    body: BoxBody,
    served: ByteCount,
}

impl MessageBody for Counted {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &polled {
            this.served.add(bytes.len());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;

    use super::*;

    #[test]
    fn methods_are_labelled_from_a_fixed_set() {
        for known in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let method = Method::from_bytes(known.as_bytes()).unwrap();
            assert_eq!(method_label(&method), known);
        }
        // Invented tokens, and standard methods no route takes, share one label.
        for odd in ["FOO1", "FOO2", "get", "CONNECT", "TRACE", "PROPFIND"] {
            let method = Method::from_bytes(odd.as_bytes()).unwrap();
            assert_eq!(method_label(&method), OTHER_METHOD, "{odd}");
        }
    }
}

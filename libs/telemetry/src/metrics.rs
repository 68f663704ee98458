//! Metrics and health: the process's one Prometheus recorder, the name of every dme metric, and
//! the small HTTP listener each worker serves them on (`/metrics`, `/healthz`, `/readyz`).
//!
//! Consumes: `metrics` macros anywhere in the process, readiness checks a service registers.
//! Produces: the Prometheus text exposition ([`render`]); a listener ([`MetricsServer`]) on a
//! configured address (`DME_METRICS_ADDR` in each worker's settings). Guarantees: the recorder
//! is installed once per process, whoever asks first ([`recorder`]); a second install (another
//! recorder already set, as in a test binary) is logged, never a panic; metric names are
//! spelled only here, every one prefixed `dme_`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

/// Counter: segments whose stems a separator stored, once each (a redelivered segment found
/// done is not counted again). A segment whose window equals the separator's last one reuses
/// that window's output without running the model, and is counted too: this counts segments
/// separated, not model runs.
pub const SEGMENTS_SEPARATED: &str = "dme_segments_separated_total";
/// Histogram, seconds: the model's run on one window (a window equal to the last one costs a
/// hash, and is observed too).
pub const INFERENCE_SECONDS: &str = "dme_inference_seconds";
/// Counter, by `consumer`: work messages delivered more than once (their attempt above 1).
pub const REDELIVERIES: &str = "dme_redeliveries_total";
/// Counter, by `consumer` and `reason` ([`FailureReason`]): failed attempts at a work message.
pub const FAILURES: &str = "dme_failures_total";
/// Gauge, by `kind` (`uploaded`, `segment`, `separated`, `mix`): messages in the work stream,
/// waiting or in a worker's hands; read from the stream by the gateway's scrapes, at most
/// once every few seconds.
pub const QUEUE_DEPTH: &str = "dme_queue_depth";
/// Gauge, by `state` (`queued`, `separating`, `mixing`, `done`, `failed`): songs, read from the
/// music records by the gateway's scrapes, at most once every few seconds.
pub const SONGS: &str = "dme_songs";
/// Counter, by `route`: request body bytes the gateway received (uploads: `route="/music"`).
pub const UPLOADED_BYTES: &str = "dme_uploaded_bytes_total";
/// Counter, by `route`: response body bytes the gateway sent (downloads:
/// `route="/music/{music_id}/track/{track_id}"` and `.../mix/{key}`).
pub const SERVED_BYTES: &str = "dme_served_bytes_total";
/// Histogram, seconds, by `method` (`GET`, `HEAD`, `POST`, `PUT`, `DELETE`, `PATCH`,
/// `OPTIONS`, else `other`), `route` (the route's pattern, never the raw path; `unmatched` for
/// an unknown path) and `status`: from the request's head to its answer's head.
pub const HTTP_REQUEST_SECONDS: &str = "dme_http_request_duration_seconds";

/// Why an attempt at a work message failed: the `reason` label of [`FAILURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The handler failed in a way another delivery may not (NATS restarting, no model yet).
    Transient,
    /// The handler failed in a way no delivery can fix (a corrupt file).
    Permanent,
    /// The handler panicked.
    Panic,
    /// The handler's task was cancelled (the runtime shutting down).
    Cancelled,
    /// The payload is not the subject's message.
    Undecodable,
}

impl FailureReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Transient => "transient",
            FailureReason::Permanent => "permanent",
            FailureReason::Panic => "panic",
            FailureReason::Cancelled => "cancelled",
            FailureReason::Undecodable => "undecodable",
        }
    }
}

/// Upper bounds of [`INFERENCE_SECONDS`]' buckets: a window of the embedded DSP model takes
/// milliseconds, a demucs window on a CPU core seconds to a minute.
const INFERENCE_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];
/// Upper bounds of [`HTTP_REQUEST_SECONDS`]' buckets: most answers take milliseconds; an upload
/// or a first encoding takes seconds; an event stream's head comes at once.
const HTTP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];
/// How often histogram samples are folded into their buckets when nobody scrapes (the exporter
/// leaves that to its user; samples waiting to be folded cost memory).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed as the global `metrics` recorder on the first
/// call (with every dme metric described). When another recorder was installed first, metrics
/// go to that one and this handle renders nothing; that is logged, not a panic.
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(INFERENCE_SECONDS.into()), &INFERENCE_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_SECONDS.into()), &HTTP_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; dme's metrics go there");
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread; histograms fold at scrapes");
        }
        handle
    })
}

/// Every dme metric in the Prometheus text format (version 0.0.4), as now.
pub fn render() -> String {
    let handle = recorder();
    handle.run_upkeep();
    handle.render()
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        SEGMENTS_SEPARATED,
        "Segments this separator ran the model for and stored."
    );
    describe_histogram!(
        INFERENCE_SECONDS,
        Unit::Seconds,
        "Time of the model's run on one window."
    );
    describe_counter!(
        REDELIVERIES,
        "Work messages delivered more than once, by consumer."
    );
    describe_counter!(
        FAILURES,
        "Failed attempts at work messages, by consumer and reason."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Work messages in the work stream, by kind of work."
    );
    describe_gauge!(SONGS, "Songs, by state.");
    describe_counter!(
        UPLOADED_BYTES,
        Unit::Bytes,
        "Request body bytes received, by route."
    );
    describe_counter!(
        SERVED_BYTES,
        Unit::Bytes,
        "Response body bytes sent, by route."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Time from a request's head to its answer's head, by method, route pattern and status."
    );
}

/// A readiness check: true while what it checks is usable.
type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// What a service needs before it is ready (`/readyz`): named checks, each failing until the
/// service registers how to tell (a check [`Readiness::pending`] stays false). Cheap to clone;
/// clones share the checks.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<&'static str, Check>>>);

impl Readiness {
    /// A readiness whose checks `names` all fail until they are [`Readiness::set`].
    pub fn pending(names: &[&'static str]) -> Readiness {
        let ready = Readiness::default();
        for name in names {
            ready.set(name, || false);
        }
        ready
    }

    /// Sets how check `name` is answered from now on.
    pub fn set(&self, name: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        let mut checks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        checks.insert(name, Box::new(check));
    }

    /// Every check's answer now, by name.
    pub fn checks(&self) -> BTreeMap<&'static str, bool> {
        let checks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        checks
            .iter()
            .map(|(name, check)| (*name, check()))
            .collect()
    }

    /// The `/readyz` answer: whether every check passes, and the JSON body saying which do.
    pub fn report(&self) -> (bool, serde_json::Value) {
        let checks = self.checks();
        let ready = checks.values().all(|ok| *ok);
        let status = if ready { "ready" } else { "not ready" };
        (
            ready,
            serde_json::json!({ "status": status, "checks": checks }),
        )
    }
}

/// A worker's metrics and health listener: `GET /metrics` ([`render`]), `GET /healthz` (the
/// process answers), `GET /readyz` (200 when every [`Readiness`] check passes, else 503, with
/// the checks as JSON). Serves until dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    _task: AbortOnDropHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 takes a free port, logged) and serves `service`'s metrics and
    /// health there until the returned server is dropped. Installs the recorder.
    ///
    /// # Errors
    /// When `addr` is not an address or cannot be bound.
    pub async fn start(
        addr: &str,
        service: &'static str,
        readiness: Readiness,
    ) -> std::io::Result<MetricsServer> {
        recorder();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, service, "metrics and health listening");
        let task = tokio::spawn(accept(listener, service, readiness));
        Ok(MetricsServer {
            addr,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// [`MetricsServer::start`] on `addr` when it is set; `None` (no listener) when not.
    ///
    /// # Errors
    /// When `addr` is set but is not an address or cannot be bound.
    pub async fn start_if_set(
        addr: Option<&str>,
        service: &'static str,
        readiness: Readiness,
    ) -> std::io::Result<Option<MetricsServer>> {
        match addr {
            Some(addr) => Ok(Some(MetricsServer::start(addr, service, readiness).await?)),
            None => Ok(None),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn accept(listener: TcpListener, service: &'static str, readiness: Readiness) {
    // Connections end with the accept loop (their tasks are tracked and aborted with it).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics listener: accept failed");
                continue;
            }
        };
        let readiness = readiness.clone();
        let answer = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = answer(&req, service, &readiness);
            async move { Ok::<_, Infallible>(response) }
        });
        connections.spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, answer)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics listener: connection failed");
            }
        });
        // Reap finished connections so the set does not grow with every scrape.
        while connections.try_join_next().is_some() {}
    }
}

fn answer(
    req: &Request<Incoming>,
    service: &'static str,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": format!("{} is not allowed", req.method()) }),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(render())));
            if let Ok(value) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            response
        }
        "/healthz" => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "service": service }),
        ),
        "/readyz" => {
            let (ready, body) = readiness.report();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &body)
        }
        path => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("no such endpoint: {path}") }),
        ),
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_fails_until_every_check_passes() {
        let ready = Readiness::pending(&["nats", "model"]);
        let (ok, body) = ready.report();
        assert!(!ok);
        assert_eq!(body["checks"]["model"], false);
        ready.set("nats", || true);
        assert!(!ready.report().0, "the model is still pending");
        ready.set("model", || true);
        let (ok, body) = ready.report();
        assert!(ok, "{body}");
        assert_eq!(body["status"], "ready");
    }

    #[test]
    fn a_second_recorder_install_is_harmless_and_metrics_render() {
        let first = recorder() as *const _;
        assert_eq!(first, recorder() as *const _);
        metrics::counter!(SEGMENTS_SEPARATED).increment(2);
        metrics::histogram!(INFERENCE_SECONDS).record(0.02);
        let text = render();
        assert!(text.contains("dme_segments_separated_total 2"), "{text}");
        assert!(
            text.contains("dme_inference_seconds_bucket{le=\"0.025\"} 1"),
            "a histogram, not a summary: {text}"
        );
    }

    #[tokio::test]
    async fn the_listener_answers_health_readiness_and_metrics() {
        let ready = Readiness::pending(&["model"]);
        let server = MetricsServer::start("127.0.0.1:0", "test", ready.clone())
            .await
            .expect("bound");
        let addr = server.addr();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await.expect("written");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            answer
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get("/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains(r#""model":false"#), "{not_ready}");
        ready.set("model", || true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}

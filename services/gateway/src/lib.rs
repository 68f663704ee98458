//! The HTTP gateway: the API of the original contract (`docs/api/original-contract.yaml`),
//! extended, over NATS.
//!
//! Consumes: HTTP requests; music and job records, files and the registered model from NATS.
//! Produces: stored originals and music records, [`dme_protocol::subjects::WORK_UPLOADED`] and
//! [`dme_protocol::subjects::WORK_MIX`] work items, downloads in several formats.
//! Guarantees: the gateway keeps nothing of its own (a restart loses nothing, and any number of
//! gateways can serve at once); uploads are spooled to disk while they arrive, so memory stays
//! bounded; bad input gets a 4xx with a JSON `{"error": ...}`, never a 500.
//!
//! # Layout
//! - `config`: [`GatewayConfig`].
//! - `error`: [`GatewayError`] (start-up), [`ApiError`] (a request), mapped to statuses.
//! - this file: the [`Gateway`] service.
//! - `routes/music.rs`: upload, list, progress, selection. `routes/files.rs`: downloads,
//!   `routes/encodings.rs`: their encodings, made once and cached in the object store.
//!   `routes/jobs.rs`: job records. `routes/system.rs`: reset and health. `routes/events.rs`:
//!   live events as Server-Sent Events.
//! - `upload`: spooling, hashing and probing an upload.
//! - `admission`: whether a new song is let in: the client's work in flight (429) and the
//!   store's room (507), counted from NATS so every gateway agrees.
//! - `body`: every request body read within an idle timer and a deadline, a multipart form's
//!   framing bounded, a panic in a handler turned into an opaque 500.
//!
//! # Limits
//! Every request finishes in bounded time and memory: a request head within
//! [`GatewayConfig::request_head_timeout_s`] (actix-http also bounds its size: 128 KiB of head
//! and 96 headers, else 431/400), a body within [`GatewayConfig::body_idle_timeout_s`] of
//! silence and [`GatewayConfig::body_timeout_s`] in all (else 408 and the connection closed),
//! an upload within [`GatewayConfig::max_upload_bytes`], a multipart form's framing within
//! [`body::MAX_MULTIPART_FRAMING_BYTES`], a selection within 64 KiB of JSON nested at most 128
//! deep (serde_json's recursion limit). A response to a body that was not read to its end closes
//! the connection.

mod admission;
mod body;
mod config;
mod error;
mod routes;
mod upload;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
pub use config::GatewayConfig;
use dme_storage::{Spool, Store};
use dme_telemetry::Service;
pub use error::{ApiError, GatewayError};
use tokio_util::sync::CancellationToken;

/// Seconds requests in flight get to finish after shutdown before their connections are closed.
const SHUTDOWN_GRACE_S: u64 = 5;

/// How long a connection is given to close once its answer is written (actix's
/// `client_disconnect_timeout`): long enough for the answer to reach a client still sending a
/// refused body, short enough that a client that never reads it frees the socket at once.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest JSON body any `web::Json` extractor takes (none does today; a selection is read by
/// hand within its own 64 KiB), so a future JSON route cannot be made to buffer megabytes.
const MAX_JSON_BYTES: usize = 64 * 1024;

/// What every handler shares.
pub struct AppState {
    /// NATS access.
    pub store: Store,
    /// Settings.
    pub config: GatewayConfig,
    /// This process's spool folder, where uploads are received.
    pub spool: Spool,
    /// Downloads being encoded, so concurrent first requests encode once.
    pub(crate) encodings: routes::Encodings,
}

/// A built gateway, bound to its port, not yet serving.
pub struct Gateway {
    server: actix_web::dev::Server,
    port: u16,
}

impl Service for Gateway {
    type Config = GatewayConfig;
    type Error = GatewayError;
    const NAME: &'static str = "gateway";

    /// Connects to NATS and binds the HTTP address.
    async fn build(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let store = Store::connect_with(&config.nats, "dme-gateway").await?;
        let spool = config
            .spool
            .open(Self::NAME)
            .await
            .map_err(GatewayError::Spool)?;
        let listener =
            TcpListener::bind(&config.http_addr).map_err(|source| GatewayError::Bind {
                addr: config.http_addr.clone(),
                source,
            })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let workers = config.http_workers.max(1);
        let limits = body::BodyLimits {
            idle: Duration::from_secs(config.body_idle_timeout_s),
            total: Duration::from_secs(config.body_timeout_s),
        };
        let head_timeout = Duration::from_secs(config.request_head_timeout_s);
        let keep_alive = Duration::from_secs(config.keep_alive_s);
        let max_connections = config.max_connections.max(1);
        let state = web::Data::new(AppState {
            store,
            config,
            spool,
            encodings: routes::Encodings::default(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(move |req, next| {
                    body::guard(limits, req, next)
                }))
                .app_data(state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(MAX_JSON_BYTES)
                        .error_handler(|e, _| {
                            ApiError::BadRequest(format!("malformed JSON body: {e}")).into()
                        }),
                )
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("malformed path: {e}")).into()
                }))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("malformed query: {e}")).into()
                }))
                .configure(routes::configure)
        })
        .workers(workers)
        .max_connections(max_connections)
        .client_request_timeout(head_timeout)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .keep_alive(keep_alive)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_S)
        .listen(listener)
        .map_err(|source| GatewayError::Bind {
            addr: format!("port {port}"),
            source,
        })?
        .run();
        tracing::info!(port, "gateway listening");
        Ok(Gateway { server, port })
    }

    /// Serves until `shutdown` is cancelled, then stops gracefully.
    async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let handle = self.server.handle();
        let _stop_on_shutdown =
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            }));
        self.server.await.map_err(GatewayError::Serve)
    }
}

impl Gateway {
    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

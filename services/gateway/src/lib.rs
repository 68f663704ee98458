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
//! - `download_cache`: downloads kept whole in the spool folder once asked for, bounded
//!   ([`GatewayConfig::download_cache_mb`]), so repeated and `Range` requests read a local file.
//! - `upload`: spooling, hashing and probing an upload.
//! - `nats_api`: the same API as JSON request/reply over NATS (the `dme-api` micro service),
//!   and progress events copied as JSON onto `dme.api.event.<id>`.
//! - `admission`: whether a new song is let in: the client's work in flight (429) and the
//!   store's room (507), counted from NATS so every gateway agrees.
//! - `http_metrics`: every request's latency by route pattern, and the bytes it brought and
//!   took away (`GET /metrics` in `routes/system.rs`, `GET /workers` in `routes/workers.rs`).
//! - `body`: every request body read within an idle timer and a deadline, a multipart form's
//!   framing bounded, a panic in a handler turned into an opaque 500.
//! - `tls`: HTTPS, the certificate and key of [`GatewayConfig::tls_cert`] and
//!   [`GatewayConfig::tls_key`] loaded at start-up.
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
mod auth;
mod body;
mod config;
mod download_cache;
mod error;
mod http_metrics;
mod nats_api;
mod routes;
mod tls;
mod upload;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
pub use config::GatewayConfig;
use dme_storage::{Spool, Store};
use dme_telemetry::Service;
/// The download cache's folder inside the gateway's spool folder (kept files, not leftovers).
pub use download_cache::FOLDER as DOWNLOAD_CACHE_FOLDER;
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
    /// Downloads kept on local disk for the requests after the first.
    pub(crate) downloads: std::sync::Arc<download_cache::DownloadCache>,
}

/// A built gateway, bound to its port, not yet serving HTTP (its NATS API already answers).
pub struct Gateway {
    server: actix_web::dev::Server,
    api: nats_api::NatsApi,
    port: u16,
}

impl Service for Gateway {
    type Config = GatewayConfig;
    type Error = GatewayError;
    const NAME: &'static str = "gateway";

    /// Connects to NATS and binds the HTTP address.
    async fn build(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        // Before NATS: a wrong certificate file fails at once, not after a minute of retries.
        let tls = tls::server_config(config.tls_cert.as_deref(), config.tls_key.as_deref())
            .map_err(GatewayError::Tls)?;
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
        let base = own_url(&config, listener.local_addr().ok());
        let downloads =
            download_cache::DownloadCache::new(spool.path(), config.download_cache_bytes())
                .map_err(GatewayError::Spool)?;
        let state = web::Data::new(AppState {
            store,
            config,
            spool,
            encodings: routes::Encodings::default(),
            downloads: std::sync::Arc::new(downloads),
        });
        let api = nats_api::start(state.clone(), base).await?;
        let server = HttpServer::new(move || {
            // The process's metrics recorder, installed once before the first request counts.
            dme_telemetry::metrics::recorder();
            App::new()
                .wrap(auth::RequireToken::new(&state.config))
                .wrap(middleware::from_fn(move |req, next| {
                    body::guard(limits, req, next)
                }))
                // Outermost: measures every request, including those the guard answers.
                .wrap(middleware::from_fn(http_metrics::measure))
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
        .shutdown_timeout(SHUTDOWN_GRACE_S);
        let https = tls.is_some();
        let server = match tls {
            // Only HTTPS on this address: a plain request gets no answer, only a failed handshake.
            Some(tls) => server.listen_rustls_0_23(listener, tls),
            None => server.listen(listener),
        }
        .map_err(|source| GatewayError::Bind {
            addr: format!("port {port}"),
            source,
        })?
        .run();
        tracing::info!(port, https, "gateway listening");
        Ok(Gateway { server, api, port })
    }

    /// Serves until `shutdown` is cancelled, then stops gracefully.
    async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let handle = self.server.handle();
        let _stop_on_shutdown =
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            }));
        let served = self.server.await.map_err(GatewayError::Serve);
        self.api.stop().await;
        served
    }
}

/// The base of links in answers that no HTTP request carries (the NATS API's): the public URL
/// when one is set, else this gateway's own address (loopback for a wildcard one), `https` when
/// it serves HTTPS.
fn own_url(config: &GatewayConfig, bound: Option<std::net::SocketAddr>) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    match bound {
        Some(addr) if addr.ip().is_unspecified() => {
            format!("{scheme}://127.0.0.1:{}", addr.port())
        }
        Some(addr) => format!("{scheme}://{addr}"),
        None => format!("{scheme}://{}", config.http_addr),
    }
}

impl Gateway {
    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

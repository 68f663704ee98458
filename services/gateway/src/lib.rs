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
//! - `routes/music.rs`: upload, list, progress, selection. `routes/files.rs`: downloads.
//!   `routes/jobs.rs`: job records. `routes/system.rs`: reset and health.
//! - `upload`: spooling, hashing and probing an upload.

mod config;
mod error;
mod routes;
mod upload;

use std::net::TcpListener;

use actix_web::{web, App, HttpServer};
pub use config::GatewayConfig;
use dme_storage::Store;
use dme_telemetry::Service;
pub use error::{ApiError, GatewayError};
use tokio_util::sync::CancellationToken;

/// Seconds requests in flight get to finish after shutdown before their connections are closed.
const SHUTDOWN_GRACE_S: u64 = 5;

/// What every handler shares.
pub struct AppState {
    /// NATS access.
    pub store: Store,
    /// Settings.
    pub config: GatewayConfig,
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
        let listener =
            TcpListener::bind(&config.http_addr).map_err(|source| GatewayError::Bind {
                addr: config.http_addr.clone(),
                source,
            })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let workers = config.http_workers.max(1);
        let state = web::Data::new(AppState { store, config });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("malformed path: {e}")).into()
                }))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("malformed query: {e}")).into()
                }))
                .configure(routes::configure)
        })
        .workers(workers)
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

//! The HTTP gateway: the API of `shared/reference/api.yaml`, extended, over NATS.
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
//! - `error`: [`ApiError`], mapped to statuses.
//! - `routes/music.rs`: upload, list, progress, selection. `routes/files.rs`: downloads.
//!   `routes/jobs.rs`: job records. `routes/system.rs`: reset and health.
//! - `upload`: spooling, hashing and probing an upload.

mod config;
mod error;
mod routes;
mod upload;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
pub use config::GatewayConfig;
use dme_storage::Store;
pub use error::ApiError;
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// NATS could not be reached.
    #[error(transparent)]
    Store(#[from] dme_storage::StoreError),
    /// The HTTP address could not be bound.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What every handler shares.
pub struct AppState {
    /// NATS access.
    pub store: Store,
    /// Settings.
    pub config: GatewayConfig,
}

/// A built gateway, bound to its port, not yet serving.
pub struct Application {
    server: actix_web::dev::Server,
    port: u16,
}

impl Application {
    /// Connects to NATS and binds the HTTP address.
    ///
    /// # Errors
    /// When NATS cannot be reached or the address cannot be bound.
    pub async fn build(config: GatewayConfig) -> Result<Application, GatewayError> {
        let store = Store::connect(
            &config.nats_url,
            "dme-gateway",
            Duration::from_secs(config.connect_timeout_s),
        )
        .await?;
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
        .shutdown_timeout(5)
        .listen(listener)
        .map_err(|source| GatewayError::Bind {
            addr: format!("port {port}"),
            source,
        })?
        .run();
        tracing::info!(port, "gateway listening");
        Ok(Application { server, port })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then stops gracefully.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        self.server.await
    }
}

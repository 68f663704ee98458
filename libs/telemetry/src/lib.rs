//! One tracing set-up and one life cycle for every dme service.
//!
//! Consumes: `DME_LOG` (an `EnvFilter` directive, default `info`) and `DME_LOG_FORMAT`
//! (`json` for one JSON object per line, anything else for human-readable lines). Produces: a
//! global subscriber writing to stderr, [`shutdown_token`], the one shutdown signal of every
//! service (SIGINT or SIGTERM), and [`serve`], which builds a [`Service`] and runs it until that
//! signal. Guarantees: calling [`init`] twice (tests start several services in one process) is
//! harmless; a shutdown while a service is still starting (NATS not reachable yet, a model
//! loading) stops it cleanly.
//!
//! # Layout
//! - this file: [`init`] (logging) and [`shutdown_token`].
//! - `service`: [`Service`] and [`serve`], the life cycle every service shares.
//! - [`metrics`]: the process's Prometheus recorder, every `dme_` metric's name, and the
//!   `/metrics`, `/healthz`, `/readyz` listener of the workers.

pub mod metrics;
mod service;

pub use service::{serve, Service};
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber for `service`.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_env("DME_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("DME_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let result = if json {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .try_init()
    } else {
        fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr)
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            "telemetry ready"
        );
    }
}

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM: every service's one shutdown
/// signal. Must be called inside a tokio runtime.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

//! The shape every dme service has: built from its settings, then run until shutdown.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A deployable dme process (gateway, splitter, separator, mixer).
pub trait Service: Sized + Send {
    /// Its settings (clap arguments with `DME_*` environment equivalents).
    type Config: Send;
    /// Why it could not start, or stopped.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Its name in logs and in NATS' connection list.
    const NAME: &'static str;

    /// Connects to what it needs and declares what it consumes; takes no work yet.
    ///
    /// # Errors
    /// When a dependency (NATS, the model, an address) is unreachable or unusable.
    fn build(config: Self::Config) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// Works until `shutdown` is cancelled, then finishes the work in hand and returns.
    ///
    /// # Errors
    /// When the service fails as a whole (per-message failures are verdicts, not errors).
    fn run(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Builds `S` from `config` and runs it until `shutdown`. A shutdown while it is still being
/// built (NATS unreachable, a model loading) ends it at once, without an error.
///
/// # Errors
/// As [`Service::build`] and [`Service::run`].
pub async fn serve<S: Service>(
    config: S::Config,
    shutdown: CancellationToken,
) -> Result<(), S::Error> {
    let service = tokio::select! {
        _ = shutdown.cancelled() => {
            tracing::info!(service = S::NAME, "shut down while starting");
            return Ok(());
        }
        built = S::build(config) => built?,
    };
    service.run(shutdown).await
}

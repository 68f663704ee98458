//! Why a separator could not start.

/// Start-up failures; per-segment failures are verdicts on messages, not errors.
#[derive(Debug, thiserror::Error)]
pub enum SeparatorError {
    /// The model could not be loaded or does not fit the contract.
    #[error(transparent)]
    Model(#[from] dme_model::ModelError),
    /// NATS could not be reached or refused a declaration.
    #[error(transparent)]
    Store(#[from] dme_storage::StoreError),
    /// The model thread died.
    #[error("model task failed: {0}")]
    Task(String),
}

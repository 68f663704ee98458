//! Why a splitter could not start.

/// Start-up failures; per-song failures are recorded on the song.
#[derive(Debug, thiserror::Error)]
pub enum SplitterError {
    /// NATS could not be reached or refused a declaration.
    #[error(transparent)]
    Store(#[from] dme_storage::StoreError),
}

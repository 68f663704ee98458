//! What can go wrong in the splitter: at start-up ([`SplitterError`]) and with one song
//! ([`SplitError`], recorded on the song when it is given up).

use dme_storage::work::HandlerError;
use dme_storage::StoreError;

/// Why the splitter could not start.
#[derive(Debug, thiserror::Error)]
pub enum SplitterError {
    /// NATS could not be reached or refused a declaration.
    #[error("setting up NATS at start-up")]
    Store(#[from] StoreError),
    /// The spool folder could not be opened (created, swept or locked).
    #[error("opening the spool folder")]
    Spool(#[source] std::io::Error),
    /// The metrics address could not be bound.
    #[error("binding the metrics address {addr}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why one song could not be cut.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The song's model is not registered, so its segment length is unknown (transient).
    #[error("the song's model is not registered (yet)")]
    NoModel,
    /// The original is not in the object store (permanent).
    #[error("the uploaded file is missing from storage")]
    OriginalMissing,
    /// The spool folder or a file in it could not be written (transient).
    #[error("spool")]
    Spool(#[source] std::io::Error),
    /// Copying the original from the object store failed midway (transient).
    #[error("reading the original")]
    ReadOriginal(#[source] std::io::Error),
    /// The registered model's segment is too short to cut a song for (transient: a separator
    /// registering a real model replaces it).
    #[error("the registered model's segment of {0} samples is too short to cut a song")]
    ModelSegment(u32),
    /// The file is not audio we can decode (permanent).
    #[error("cannot decode the file")]
    Decode(#[source] dme_audio::AudioError),
    /// The file decodes to nothing (permanent).
    #[error("the file holds no audio samples")]
    NoSamples,
    /// A segment's window could not be read back from the spooled audio (transient).
    #[error("reading decoded audio")]
    ReadDecoded(#[source] std::io::Error),
    /// A blocking task (decoding, reading a window) panicked or was cancelled (transient).
    #[error("the {0} task stopped")]
    Task(&'static str, #[source] tokio::task::JoinError),
    /// NATS failed (transient).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HandlerError for SplitError {
    fn is_transient(&self) -> bool {
        !matches!(
            self,
            SplitError::OriginalMissing | SplitError::Decode(_) | SplitError::NoSamples
        )
    }
}

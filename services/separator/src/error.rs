//! What can go wrong in a separator: at start-up ([`SeparatorError`]) and with one segment
//! ([`SeparateError`], recorded on the job and the song when the segment is given up).

use dme_storage::work::HandlerError;
use dme_storage::StoreError;

/// Why a separator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SeparatorError {
    /// The model could not be loaded or does not fit the contract.
    #[error(transparent)]
    Model(#[from] dme_model::ModelError),
    /// NATS could not be reached or refused a declaration.
    #[error("setting up NATS at start-up")]
    Store(#[from] StoreError),
    /// The model's thread could not start, or stopped while loading the model.
    #[error(transparent)]
    ModelThread(#[from] crate::model_thread::ThreadError),
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

/// Why one segment could not be separated.
#[derive(Debug, thiserror::Error)]
pub enum SeparateError {
    /// The segment was cut for another model than this worker runs (transient: another worker
    /// may run it).
    #[error("cut for model {cut_for} but this worker runs {runs} ({name})")]
    ModelMismatch {
        /// Fingerprint the plan was made for.
        cut_for: String,
        /// Fingerprint of this worker's model.
        runs: String,
        /// Name of this worker's model.
        name: String,
    },
    /// The work item names a segment its plan does not have (permanent).
    #[error("index {0} is outside the plan")]
    OutsidePlan(u32),
    /// The segment's input is not in the object store (permanent).
    #[error("input {0} is missing")]
    InputMissing(String),
    /// The segment's input is not packed audio of its window's size (permanent).
    #[error(
        "input {name} ({bytes} bytes packed) is not {expected} bytes of packed audio (2 × {window} f32)"
    )]
    InputSize {
        /// Object name.
        name: String,
        /// Its size as stored (packed).
        bytes: usize,
        /// The size of a window of `window` stereo f32 samples.
        expected: usize,
        /// Window length in samples.
        window: usize,
    },
    /// The input could not be read as planar f32 (transient).
    #[error("reading the input")]
    Input(#[source] dme_protocol::DecodeError),
    /// Inference failed (transient: a bounded number of deliveries tells flukes from poison).
    #[error("the model failed")]
    Model(#[source] dme_model::ModelError),
    /// The model's output does not cover the segment's window (permanent: the plan does not fit
    /// the model that runs it).
    #[error(
        "the model gave {samples} samples, not whole lanes of the {window}-sample window around the segment"
    )]
    OutputShape {
        /// Samples the model gave.
        samples: usize,
        /// Window length in samples.
        window: usize,
    },
    /// The model run panicked (transient: the segment is redelivered; the model's thread goes
    /// on with the next run).
    #[error("the model run panicked")]
    ModelPanicked,
    /// A blocking task (unpacking the input, cropping the output) panicked or was cancelled
    /// (transient).
    #[error("a blocking task stopped")]
    Task(#[source] tokio::task::JoinError),
    /// NATS failed (transient).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HandlerError for SeparateError {
    fn is_transient(&self) -> bool {
        !matches!(
            self,
            SeparateError::OutsidePlan(_)
                | SeparateError::InputMissing(_)
                | SeparateError::InputSize { .. }
                | SeparateError::OutputShape { .. }
        )
    }
}

//! What can go wrong in the mixer: at start-up ([`MixerError`]) and with one assembly or mix
//! ([`MixError`]; every one is worth another delivery, and an assembly given up fails its song).

use dme_storage::work::HandlerError;
use dme_storage::StoreError;

/// Why the mixer could not start.
#[derive(Debug, thiserror::Error)]
pub enum MixerError {
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

/// Why assembling a song's tracks or mixing a selection failed.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    /// Every segment is in but the record has no plan.
    #[error("no segment plan")]
    NoPlan,
    /// A segment's stems are not in the object store.
    #[error("stems {0} missing")]
    StemsMissing(String),
    /// A segment's stems are not planar f32 for the song's stems.
    #[error("reading stems {name}")]
    StemsCorrupt {
        /// Object name.
        name: String,
        /// Why they cannot be read.
        #[source]
        source: dme_protocol::DecodeError,
    },
    /// A segment's stems are not as long as the segment.
    #[error("stems {name} hold {got} samples, expected {expected}")]
    StemsLength {
        /// Object name.
        name: String,
        /// Samples per lane found.
        got: usize,
        /// The segment's length.
        expected: u32,
    },
    /// A segment's part of a stem is not in the object store.
    #[error("part {0} missing")]
    PartMissing(String),
    /// A part is not packed f32 samples.
    #[error("reading part {name}")]
    PartCorrupt {
        /// Object name.
        name: String,
        /// Why it cannot be read.
        #[source]
        source: dme_protocol::DecodeError,
    },
    /// A segment's parts are not whole stereo samples, or not all of one length.
    #[error("part {0} does not match the other stems' parts")]
    PartLength(String),
    /// An assembled track is not in the object store.
    #[error("track {0} missing")]
    TrackMissing(String),
    /// Copying a track from the object store failed midway.
    #[error("reading {name}")]
    ReadTrack {
        /// Object name.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The spool folder or a file in it could not be created.
    #[error("spool")]
    Spool(#[source] std::io::Error),
    /// A spooled WAV file could not be written or read.
    #[error("spooled WAV file")]
    Wav(#[source] hound::Error),
    /// The blocking task summing tracks panicked or was cancelled.
    #[error("the mixing task stopped")]
    Task(#[source] tokio::task::JoinError),
    /// NATS failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HandlerError for MixError {
    /// Every mixer failure is worth another delivery: its inputs are written once, by others,
    /// and may still be arriving.
    fn is_transient(&self) -> bool {
        true
    }
}

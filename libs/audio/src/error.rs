//! The one error type of this crate.

/// Everything that can go wrong while probing, decoding, resampling or encoding audio.
///
/// Callers map the variants to responses: [`AudioError::NotAudio`] and
/// [`AudioError::UnsupportedCodec`] are the client's fault (HTTP 415), [`AudioError::Empty`],
/// [`AudioError::Corrupt`] and [`AudioError::NoSamples`] describe a bad upload (4xx), while
/// [`AudioError::Io`] and [`AudioError::Encode`] are internal failures.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The input has zero bytes.
    #[error("empty input")]
    Empty,
    /// No known container or stream format was recognised in the input.
    #[error("not a recognised audio file: {0}")]
    NotAudio(String),
    /// The container was recognised but its audio codec (or its sample rate) is not supported.
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    /// Decoding failed beyond recovery: a broken header, too many consecutive bad packets, or a
    /// panic inside the decoder.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// The file is valid but holds no audio samples at all.
    #[error("audio has no samples")]
    NoSamples,
    /// Reading the input failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// An encoder rejected the samples or its configuration.
    #[error("encoding failed: {0}")]
    Encode(String),
}

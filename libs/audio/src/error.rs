//! The one error type of this crate.

/// Everything that can go wrong while probing, decoding, resampling or encoding audio.
///
/// Callers map the variants to responses: [`AudioError::NotAudio`],
/// [`AudioError::UnsupportedCodec`] and [`AudioError::BadHeader`] are the client's fault (HTTP
/// 415), [`AudioError::Empty`], [`AudioError::Corrupt`], [`AudioError::DecoderPanicked`] and
/// [`AudioError::NoSamples`] describe a bad upload (4xx), while [`AudioError::Io`] and
/// [`AudioError::Encode`] are internal failures.
///
/// Every message is written for the person who sent the file: no variant displays a library's
/// panic text (see [`AudioError::DecoderPanicked`]).
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
    /// The file's header states a value no audio can have (found before any decoder sees it).
    #[error(transparent)]
    BadHeader(#[from] HeaderDefect),
    /// Decoding failed beyond recovery: a broken header or too many consecutive bad packets.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// A decoder panicked on the input (malformed data it does not check). The message shown is
    /// stable; the panic's own text is in `detail` for logs (the default panic hook has printed
    /// it to stderr as well).
    #[error("corrupt audio: the decoder failed on malformed data in the file")]
    DecoderPanicked {
        /// The panic's message, for logs only: it names library internals
        /// ("attempt to add with overflow"), never something to show a user.
        detail: String,
    },
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

/// A header field whose value no audio file can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderDefect {
    /// A sample rate of 0 Hz (a decoder would divide by it).
    #[error("the file's sample rate is 0")]
    ZeroSampleRate,
    /// No channels.
    #[error("the file declares 0 channels")]
    ZeroChannels,
    /// Samples of 0 bits.
    #[error("the file declares 0 bits per sample")]
    ZeroBitsPerSample,
    /// Frames of 0 bytes (a WAV's block alignment), so no frame could ever be read.
    #[error("the file declares frames of 0 bytes")]
    ZeroFrameSize,
}

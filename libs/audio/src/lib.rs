//! dme-audio: probe, decode, resample and encode audio for the dme stem separator.
//!
//! # What it consumes and produces
//!
//! It reads uploaded audio files of any common kind (WAV in 8/16/24/32-bit integer or float,
//! FLAC, MP3, OGG Vorbis, AAC/ALAC in MP4/M4A, AIFF, CAF, MKV/WebM) through symphonia, and
//! produces planar stereo `f32` at a requested rate ([`MODEL_SAMPLE_RATE`] for the models). It
//! encodes planar stereo to WAV (16-bit or float), FLAC and MP3 for downloads, and reads the
//! float WAVs dme stores its stems in.
//!
//! # Guarantees
//!
//! * **Bounded memory.** [`StereoDecoder`] works one packet at a time and the resampler keeps at
//!   most one chunk pending, so decoding an hour-long file needs a few hundred kilobytes;
//!   [`probe_path`] never decodes more than the first packet; [`encode_wav_stream`] holds a
//!   block of [`BLOCK_FRAMES`] frames and one block's output, so encoding an hours-long track
//!   needs a few megabytes.
//! * **Never panics.** Every entry point that touches symphonia runs inside
//!   [`std::panic::catch_unwind`]; a panic in a decoder becomes [`AudioError::DecoderPanicked`],
//!   whose message is stable and names no library internals. (This
//!   relies on the default `panic = "unwind"`; the default panic hook still prints the message to
//!   stderr.)
//! * **Exact when not resampling.** When the source rate equals the target rate, samples are
//!   exactly symphonia's decoded output (a 16-bit WAV gives `i16 / 32768`); mono is duplicated
//!   and stereo passes through without arithmetic. With resampling, the output is
//!   latency-compensated and `round(frames · target / source)` frames long.
//! * **Tolerant of damage.** Lying WAV sizes (0, `0xFFFF_FFFF`, or past the end of a truncated
//!   file) are corrected so everything present is decoded; undecodable packets are replaced by
//!   silence of their duration and counted, so what follows keeps its place in time and the
//!   decoded length is the probed length; the end of the file is the end of the stream. Only long
//!   runs of bad packets are fatal.
//! * **Gapless.** MP3 encoder delay and padding recorded in a LAME/Info tag are trimmed, so a
//!   decoded MP3 lines up with the audio it was encoded from (and an MP3 written by [`encode`]
//!   decodes to exactly the input's length).
//! * **Finite output.** NaN and infinite samples become silence and magnitudes are clamped to
//!   10 000 (+80 dB), so corrupt float files cannot poison models or the resampler.
//!
//! # Layout
//!
//! * `error`: [`AudioError`], the one error type.
//! * `source`: opening files, container sniffing, WAV header repair.
//! * `probe`: [`probe_path`] and [`Probe`]: format, codec, rate, channels, length, tags.
//! * `decode`: [`StereoDecoder`] (streaming) and [`decode_path`] (whole file), channel
//!   mapping to stereo.
//! * `resample`: streaming rubato resampler with latency compensation.
//! * `encode`: [`encode`] to a [`Format`], and [`read_wav`].
//! * `encode_stream`: [`encode_wav_stream`], the same encodings of a stored WAV of any length,
//!   streamed from a reader to a writer in bounded memory.

mod decode;
mod encode;
mod encode_stream;
mod error;
mod probe;
mod resample;
mod source;

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use decode::{decode_path, StereoBlock, StereoDecoder};
pub use encode::{encode, read_wav, wav_data, wav_stream_header, Format};
pub use encode_stream::{encode_wav_stream, BLOCK_FRAMES};
pub use error::{AudioError, HeaderDefect};
pub use probe::{probe_path, Probe};

/// Rate every model in dme runs at.
pub const MODEL_SAMPLE_RATE: u32 = 44_100;

/// A whole signal as planar stereo; both channels have the same length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stereo {
    /// Left channel samples.
    pub left: Vec<f32>,
    /// Right channel samples.
    pub right: Vec<f32>,
}

impl Stereo {
    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.left.len()
    }

    /// Length in seconds at `rate` Hz.
    pub fn duration_s(&self, rate: u32) -> f64 {
        self.frames() as f64 / f64::from(rate)
    }
}

/// Run `f`, turning a panic into [`AudioError::DecoderPanicked`], whose message is stable (the
/// panic's own text, which names library internals, is kept for logs only). Symphonia can panic
/// on some malformed input; the state it leaves behind is never used again by the caller after
/// an error.
fn guard_panics<T>(f: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(AudioError::DecoderPanicked { detail })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_a_stable_message_with_the_detail_kept() {
        let result: Result<(), AudioError> =
            guard_panics(|| panic!("attempt to add with overflow"));
        match result {
            Err(e @ AudioError::DecoderPanicked { .. }) => {
                let shown = e.to_string();
                assert!(
                    !shown.contains("overflow") && !shown.contains("panick"),
                    "{shown}"
                );
                let AudioError::DecoderPanicked { detail } = e else {
                    unreachable!()
                };
                assert_eq!(detail, "attempt to add with overflow");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

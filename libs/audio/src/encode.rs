//! Encoding planar stereo to downloadable files, and reading stored WAV stems back.

use std::io::Cursor;

use flacenc::component::BitRepr;
use flacenc::error::{SourceError, Verify};
use flacenc::source::{Fill, Source};
use mp3lame_encoder::{Bitrate, Builder, DualPcm, FlushGap, Mode, Quality};

use crate::{AudioError, Stereo};

/// Full scale of 16-bit PCM: samples are scaled by 2^15, the same factor symphonia divides by
/// when decoding, so a decoded 16-bit file re-encodes to the identical integers.
pub(crate) const I16_SCALE: f32 = 32_768.0;

/// Frames handed to LAME per call; bounds the size of each intermediate output chunk.
pub(crate) const MP3_CHUNK_FRAMES: usize = 1152 * 64;

/// MP3 bitrate for downloads: 320 kbit/s CBR, the highest MPEG-1 Layer III rate, so the lossy
/// format adds as little as possible on top of the separation itself.
const MP3_BITRATE: Bitrate = Bitrate::Kbps320;

/// LAME quality 2 (`-h`): LAME's recommended high-quality setting. 0 is several times slower
/// for no audible difference.
const MP3_QUALITY: Quality = Quality::NearBest;

/// FLAC block size in frames: the reference encoder's default, a good size for 44.1 kHz music.
pub(crate) const FLAC_BLOCK_SIZE: usize = 4096;

/// Longest header hound writes before the samples (`WAVE_FORMAT_EXTENSIBLE`, used for float);
/// the 16-bit header is 44 bytes.
const WAV_MAX_HEADER_LEN: u64 = 68;

/// Frames quantised per batch of 16-bit WAV output: hound's 16-bit writer buffers one batch, so
/// this bounds that buffer (256 KiB) however long the signal.
const WAV16_CHUNK_FRAMES: usize = 1 << 16;

/// Output formats for downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 16-bit PCM WAV, rounded and clipped.
    Wav16,
    /// 32-bit IEEE float WAV, bit-exact.
    Wav32f,
    /// 16-bit FLAC (lossless at 16 bits).
    Flac,
    /// 320 kbit/s CBR joint-stereo MP3.
    Mp3,
}

impl Format {
    /// Every format, for listing in APIs and tests.
    pub const ALL: [Format; 4] = [Format::Wav16, Format::Wav32f, Format::Flac, Format::Mp3];

    /// Parse a format name as used in URLs: `"wav"` or `"wav16"`, `"wav32f"`, `"flac"`, `"mp3"`
    /// (case-insensitive). `None` for anything else.
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "wav" | "wav16" => Some(Format::Wav16),
            "wav32f" => Some(Format::Wav32f),
            "flac" => Some(Format::Flac),
            "mp3" => Some(Format::Mp3),
            _ => None,
        }
    }

    /// MIME type for the `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Wav16 | Format::Wav32f => "audio/wav",
            Format::Flac => "audio/flac",
            Format::Mp3 => "audio/mpeg",
        }
    }

    /// File extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Wav16 | Format::Wav32f => "wav",
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
        }
    }

    /// Canonical name, accepted by [`Format::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Wav16 => "wav",
            Format::Wav32f => "wav32f",
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encode planar stereo at `rate` Hz into a complete file in memory.
///
/// * [`Format::Wav16`]: 16-bit PCM, each sample clipped to [-1, 1], scaled by 32768, rounded to
///   nearest (no dither) and clipped to the i16 range.
/// * [`Format::Wav32f`]: IEEE float WAV; samples are stored exactly.
/// * [`Format::Flac`]: 16-bit FLAC (quantised like `Wav16`), via the pure-Rust flacenc.
/// * [`Format::Mp3`]: 320 kbit/s CBR joint stereo via LAME, with a LAME/Info tag recording the
///   encoder delay and padding so gapless decoders (including ours) return exactly
///   `left.len()` frames. LAME resamples internally when `rate` is not an MPEG rate.
///
/// Zero-length input produces a valid file holding no samples.
///
/// # Errors
///
/// [`AudioError::Encode`] when `left` and `right` differ in length, the rate is 0, the WAV would
/// exceed 4 GiB, or an encoder rejects its input.
pub fn encode(
    left: &[f32],
    right: &[f32],
    rate: u32,
    format: Format,
) -> Result<Vec<u8>, AudioError> {
    if left.len() != right.len() {
        return Err(AudioError::Encode(format!(
            "channel lengths differ: left {} right {}",
            left.len(),
            right.len()
        )));
    }
    if rate == 0 {
        return Err(AudioError::Encode("sample rate 0".into()));
    }
    match format {
        Format::Wav16 => encode_wav(left, right, rate, WavSample::Int16),
        Format::Wav32f => encode_wav(left, right, rate, WavSample::Float32),
        Format::Flac => encode_flac(left, right, rate),
        Format::Mp3 => encode_mp3(left, right, rate),
    }
}

/// Parse a stereo WAV written by [`encode`] (32-bit float or 16-bit PCM) back into planar
/// samples and its sample rate. 16-bit samples come back as `i16 / 32768`.
///
/// # Errors
///
/// [`AudioError::Corrupt`] for anything that is not a well-formed stereo WAV in one of those two
/// sample formats.
pub fn read_wav(bytes: &[u8]) -> Result<(Stereo, u32), AudioError> {
    let corrupt = |e: hound::Error| AudioError::Corrupt(format!("wav: {e}"));
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(corrupt)?;
    let spec = reader.spec();
    if spec.channels != 2 {
        return Err(AudioError::Corrupt(format!(
            "wav: {} channels, expected 2",
            spec.channels
        )));
    }
    let frames = reader.duration() as usize;
    let mut stereo = Stereo {
        left: Vec::with_capacity(frames),
        right: Vec::with_capacity(frames),
    };
    let mut push = |i: usize, s: f32| {
        if i & 1 == 0 {
            stereo.left.push(s);
        } else {
            stereo.right.push(s);
        }
    };
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            for (i, s) in reader.into_samples::<f32>().enumerate() {
                push(i, s.map_err(corrupt)?);
            }
        }
        (hound::SampleFormat::Int, 16) => {
            for (i, s) in reader.into_samples::<i16>().enumerate() {
                push(i, f32::from(s.map_err(corrupt)?) / I16_SCALE);
            }
        }
        (format, bits) => {
            return Err(AudioError::Corrupt(format!(
                "wav: {bits}-bit {format:?} samples, expected 32-bit float or 16-bit int"
            )))
        }
    }
    if stereo.left.len() != stereo.right.len() {
        return Err(AudioError::Corrupt("wav: odd number of samples".into()));
    }
    Ok((stereo, spec.sample_rate))
}

/// Quantise one sample to 16 bits: clip, scale, round to nearest.
pub(crate) fn to_i16(sample: f32) -> i16 {
    // NaN maps to 0 through the saturating float-to-int cast.
    (sample.clamp(-1.0, 1.0) * I16_SCALE)
        .round()
        .clamp(-32_768.0, 32_767.0) as i16
}

/// The two WAV sample formats dme writes.
#[derive(Clone, Copy)]
pub(crate) enum WavSample {
    Int16,
    Float32,
}

impl WavSample {
    /// The kind `format` writes, or `None` for the compressed formats.
    pub(crate) fn of(format: Format) -> Option<WavSample> {
        match format {
            Format::Wav16 => Some(WavSample::Int16),
            Format::Wav32f => Some(WavSample::Float32),
            Format::Flac | Format::Mp3 => None,
        }
    }

    fn spec(self, rate: u32) -> hound::WavSpec {
        let (bits_per_sample, sample_format) = match self {
            WavSample::Int16 => (16, hound::SampleFormat::Int),
            WavSample::Float32 => (32, hound::SampleFormat::Float),
        };
        hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample,
            sample_format,
        }
    }

    /// Bytes of one stereo frame.
    pub(crate) fn block_align(self) -> u64 {
        match self {
            WavSample::Int16 => 4,
            WavSample::Float32 => 8,
        }
    }
}

/// The data length in bytes of a WAV of `frames` frames, after checking the header can state it
/// and the rate.
///
/// # Errors
/// [`AudioError::Encode`] when the file would exceed 4 GiB or the rate does not fit the header.
pub(crate) fn check_wav_size(kind: WavSample, rate: u32, frames: u64) -> Result<u64, AudioError> {
    // hound counts data bytes (and bytes per second) in a u32 and would overflow, so refuse first.
    let data_len = frames.saturating_mul(kind.block_align());
    if data_len.saturating_add(WAV_MAX_HEADER_LEN) > u64::from(u32::MAX) {
        return Err(AudioError::Encode("wav output would exceed 4 GiB".into()));
    }
    if u64::from(rate) * kind.block_align() > u64::from(u32::MAX) {
        return Err(AudioError::Encode(format!(
            "wav cannot state a rate of {rate} Hz"
        )));
    }
    Ok(data_len)
}

/// The header hound writes for a WAV of `frames` frames at `rate` (the sizes a finished writer
/// patches in, stated up front), so a stream can start before its samples exist.
///
/// # Errors
/// As [`check_wav_size`].
pub(crate) fn wav_header(kind: WavSample, rate: u32, frames: u64) -> Result<Vec<u8>, AudioError> {
    let data_len = check_wav_size(kind, rate, frames)? as u32;
    let failed = |e: hound::Error| AudioError::Encode(format!("wav: {e}"));
    let mut header = Cursor::new(Vec::with_capacity(WAV_MAX_HEADER_LEN as usize));
    hound::WavWriter::new(&mut header, kind.spec(rate))
        .and_then(hound::WavWriter::finalize)
        .map_err(failed)?;
    let mut header = header.into_inner();
    // An empty file: the RIFF size covers the header after its first 8 bytes, and the header
    // ends with the data chunk's size.
    let riff_len = header.len() as u32 - 8 + data_len;
    let end = header.len();
    header[4..8].copy_from_slice(&riff_len.to_le_bytes());
    header[end - 4..].copy_from_slice(&data_len.to_le_bytes());
    Ok(header)
}

/// The header of a WAV in `format` ([`Format::Wav16`] or [`Format::Wav32f`]) of `frames`
/// stereo frames at `rate`, sizes stated up front, so that its samples can follow as they come
/// ([`wav_data`]): a stem served while it is still being separated.
///
/// # Errors
/// As [`check_wav_size`], and for a format that is not WAV.
pub fn wav_stream_header(format: Format, rate: u32, frames: u64) -> Result<Vec<u8>, AudioError> {
    let kind = WavSample::of(format)
        .ok_or_else(|| AudioError::Encode(format!("{format} is not a WAV format")))?;
    wav_header(kind, rate, frames)
}

/// Interleaved stereo little-endian f32 bytes (a float WAV's data) as the data of a WAV in
/// `format`: the same bytes for [`Format::Wav32f`]; for [`Format::Wav16`], 16-bit samples
/// rounded and clipped as [`encode`] does. A trailing partial sample is dropped.
///
/// # Errors
/// For a format that is not WAV.
pub fn wav_data(format: Format, float_le: Vec<u8>) -> Result<Vec<u8>, AudioError> {
    match WavSample::of(format) {
        Some(WavSample::Float32) => Ok(float_le),
        Some(WavSample::Int16) => Ok(float_le
            .chunks_exact(4)
            .flat_map(|b| to_i16(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect()),
        None => Err(AudioError::Encode(format!("{format} is not a WAV format"))),
    }
}

/// Write a WAV with hound: 16-bit PCM gets the canonical 44-byte header (`fmt ` of 16 bytes);
/// 32-bit float gets hound's `WAVE_FORMAT_EXTENSIBLE` header (68 bytes, IEEE-float subformat).
fn encode_wav(
    left: &[f32],
    right: &[f32],
    rate: u32,
    kind: WavSample,
) -> Result<Vec<u8>, AudioError> {
    let data_len = check_wav_size(kind, rate, left.len() as u64)?;
    let failed = |e: hound::Error| AudioError::Encode(format!("wav: {e}"));
    let mut out = Cursor::new(Vec::with_capacity((WAV_MAX_HEADER_LEN + data_len) as usize));
    let mut writer = hound::WavWriter::new(&mut out, kind.spec(rate)).map_err(failed)?;
    match kind {
        WavSample::Int16 => {
            for (l, r) in left
                .chunks(WAV16_CHUNK_FRAMES)
                .zip(right.chunks(WAV16_CHUNK_FRAMES))
            {
                let mut chunk = writer.get_i16_writer(2 * l.len() as u32);
                for (l, r) in l.iter().zip(r) {
                    chunk.write_sample(to_i16(*l));
                    chunk.write_sample(to_i16(*r));
                }
                chunk.flush().map_err(failed)?;
            }
        }
        WavSample::Float32 => {
            for (l, r) in left.iter().zip(right) {
                writer.write_sample(*l).map_err(failed)?;
                writer.write_sample(*r).map_err(failed)?;
            }
        }
    }
    writer.finalize().map_err(failed)?;
    Ok(out.into_inner())
}

/// flacenc source reading 16-bit-quantised frames straight from the planar slices, so no
/// interleaved copy of the whole signal is ever made.
struct PlanarSource<'a> {
    left: &'a [f32],
    right: &'a [f32],
    rate: u32,
    pos: usize,
    scratch: Vec<i32>,
}

impl Source for PlanarSource<'_> {
    fn channels(&self) -> usize {
        2
    }

    fn bits_per_sample(&self) -> usize {
        16
    }

    fn sample_rate(&self) -> usize {
        self.rate as usize
    }

    fn read_samples<F: Fill>(
        &mut self,
        block_size: usize,
        dest: &mut F,
    ) -> Result<usize, SourceError> {
        let end = (self.pos + block_size).min(self.left.len());
        self.scratch.clear();
        for (l, r) in self.left[self.pos..end]
            .iter()
            .zip(&self.right[self.pos..end])
        {
            self.scratch.push(i32::from(to_i16(*l)));
            self.scratch.push(i32::from(to_i16(*r)));
        }
        dest.fill_interleaved(&self.scratch)?;
        let read = end - self.pos;
        self.pos = end;
        Ok(read)
    }

    fn len_hint(&self) -> Option<usize> {
        Some(self.left.len())
    }
}

/// flacenc's default configuration (the reference encoder's compression), checked.
///
/// # Errors
/// [`AudioError::Encode`] if flacenc refuses its own defaults.
pub(crate) fn flac_config() -> Result<flacenc::error::Verified<flacenc::config::Encoder>, AudioError>
{
    flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| AudioError::Encode(format!("flac config: {e:?}")))
}

fn encode_flac(left: &[f32], right: &[f32], rate: u32) -> Result<Vec<u8>, AudioError> {
    let config = flac_config()?;
    let source = PlanarSource {
        left,
        right,
        rate,
        pos: 0,
        scratch: Vec::with_capacity(2 * FLAC_BLOCK_SIZE),
    };
    let mut stream = flacenc::encode_with_fixed_block_size(&config, source, FLAC_BLOCK_SIZE)
        .map_err(|e| AudioError::Encode(format!("flac: {e:?}")))?;
    // flacenc lowers the minimum block size to the short last block, which declares a
    // variable-blocksize stream while the frames are numbered as fixed-blocksize ones; symphonia
    // then rejects every frame. The FLAC spec excludes the last block from the minimum.
    stream
        .stream_info_mut()
        .set_block_sizes(FLAC_BLOCK_SIZE, FLAC_BLOCK_SIZE)
        .map_err(|e| AudioError::Encode(format!("flac: {e:?}")))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream
        .write(&mut sink)
        .map_err(|e| AudioError::Encode(format!("flac: {e:?}")))?;
    Ok(sink.as_slice().to_vec())
}

fn encode_mp3(left: &[f32], right: &[f32], rate: u32) -> Result<Vec<u8>, AudioError> {
    if left.is_empty() {
        // LAME cannot write an empty stream: flushing an encoder that saw no samples prints an
        // error to stderr and emits one frame of silence.
        return Ok(empty_mp3(rate));
    }
    let mut encoder = mp3_encoder(rate)?;

    // 320 kbit/s is 40 kB/s; the LAME bound below is far above that.
    let mut out = Vec::with_capacity(left.len() / 4 + mp3lame_encoder::max_required_buffer_size(0));
    for (l, r) in left
        .chunks(MP3_CHUNK_FRAMES)
        .zip(right.chunks(MP3_CHUNK_FRAMES))
    {
        out.reserve(mp3lame_encoder::max_required_buffer_size(l.len()));
        encoder
            .encode_to_vec(DualPcm { left: l, right: r }, &mut out)
            .map_err(mp3_failed)?;
    }
    out.reserve(mp3lame_encoder::max_required_buffer_size(0));
    encoder
        .flush_to_vec::<FlushGap>(&mut out)
        .map_err(mp3_failed)?;

    // LAME wrote a placeholder frame first; now that the totals are known, fill it in.
    let tag = mp3_tag(&encoder);
    if !tag.is_empty() && tag.len() <= out.len() {
        out[..tag.len()].copy_from_slice(&tag);
    }
    Ok(out)
}

/// LAME's Info tag for everything `encoder` has encoded and flushed (empty if LAME writes none):
/// it replaces the placeholder frame at the head of the stream.
pub(crate) fn mp3_tag(encoder: &mp3lame_encoder::Encoder) -> Vec<u8> {
    let mut tag = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut tag).is_none() {
        tag.clear();
    }
    tag
}

/// Maps a LAME encoding failure.
pub(crate) fn mp3_failed(e: mp3lame_encoder::EncodeError) -> AudioError {
    AudioError::Encode(format!("mp3: {e}"))
}

/// A LAME encoder for dme's downloads at `rate` Hz: 320 kbit/s CBR joint stereo, quality 2, with
/// an Info tag.
///
/// # Errors
/// [`AudioError::Encode`] when LAME cannot allocate or refuses a setting.
pub(crate) fn mp3_encoder(rate: u32) -> Result<mp3lame_encoder::Encoder, AudioError> {
    let build = |e: mp3lame_encoder::BuildError| AudioError::Encode(format!("mp3 setup: {e}"));
    let mut builder =
        Builder::new().ok_or_else(|| AudioError::Encode("mp3: LAME failed to allocate".into()))?;
    builder.set_num_channels(2).map_err(build)?;
    builder.set_sample_rate(rate).map_err(build)?;
    builder.set_brate(MP3_BITRATE).map_err(build)?;
    builder.set_mode(Mode::JointStereo).map_err(build)?;
    builder.set_quality(MP3_QUALITY).map_err(build)?;
    // The Info tag carries the encoder delay and padding that gapless decoders trim.
    builder.set_to_write_vbr_tag(true).map_err(build)?;
    builder.build().map_err(build)
}

/// An MP3 holding no audio: a single Layer III frame carrying an "Info" tag that declares zero
/// frames (what LAME writes at the head of every CBR file), at the MPEG rate closest to `rate`.
fn empty_mp3(rate: u32) -> Vec<u8> {
    // (sample rate, header byte 1 = sync + version + layer III + no CRC, rate index,
    //  bytes per frame per kbit/s per Hz, side-information length for stereo)
    const RATES: [(u32, u8, u8, u32, usize); 9] = [
        (44_100, 0xFB, 0, 144_000, 32),
        (48_000, 0xFB, 1, 144_000, 32),
        (32_000, 0xFB, 2, 144_000, 32),
        (22_050, 0xF3, 0, 72_000, 17),
        (24_000, 0xF3, 1, 72_000, 17),
        (16_000, 0xF3, 2, 72_000, 17),
        (11_025, 0xE3, 0, 72_000, 17),
        (12_000, 0xE3, 1, 72_000, 17),
        (8_000, 0xE3, 2, 72_000, 17),
    ];
    // Bitrate index 14: 320 kbit/s for MPEG-1, 160 kbit/s for MPEG-2 and 2.5.
    const BITRATE_INDEX: u8 = 14;
    let (sample_rate, version, rate_index, scale, side_info) = RATES
        .into_iter()
        .min_by_key(|(r, ..)| r.abs_diff(rate))
        .unwrap_or(RATES[0]);
    let kbps = if version == 0xFB { 320 } else { 160 };
    let frame_len = (scale * kbps / sample_rate) as usize;
    let mut frame = vec![0u8; frame_len];
    // Joint stereo, original media: what LAME writes.
    frame[..4].copy_from_slice(&[0xFF, version, BITRATE_INDEX << 4 | rate_index << 2, 0x44]);
    let tag = 4 + side_info;
    frame[tag..tag + 4].copy_from_slice(b"Info");
    frame[tag + 4..tag + 8].copy_from_slice(&1u32.to_be_bytes()); // flags: frame count present
    frame[tag + 8..tag + 12].copy_from_slice(&0u32.to_be_bytes()); // zero frames
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for format in Format::ALL {
            assert_eq!(Format::parse(format.as_str()), Some(format));
        }
        assert_eq!(Format::parse("WAV16"), Some(Format::Wav16));
        assert_eq!(Format::parse("ogg"), None);
        assert_eq!(Format::Mp3.content_type(), "audio/mpeg");
        assert_eq!(Format::Wav32f.extension(), "wav");
    }

    #[test]
    fn quantisation_rounds_and_clips() {
        assert_eq!(to_i16(0.0), 0);
        assert_eq!(to_i16(1.0), 32_767);
        assert_eq!(to_i16(2.0), 32_767);
        assert_eq!(to_i16(-1.0), -32_768);
        assert_eq!(to_i16(-7.0), -32_768);
        assert_eq!(to_i16(0.4 / 32_768.0), 0);
        assert_eq!(to_i16(0.6 / 32_768.0), 1);
        assert_eq!(to_i16(f32::NAN), 0);
    }

    #[test]
    fn zero_length_input_gives_valid_files() {
        for format in Format::ALL {
            let bytes = encode(&[], &[], 44_100, format).unwrap();
            assert!(!bytes.is_empty(), "{format}");
        }
        let (stereo, rate) = read_wav(&encode(&[], &[], 44_100, Format::Wav32f).unwrap()).unwrap();
        assert_eq!((stereo.frames(), rate), (0, 44_100));
    }

    /// The 16-bit WAV as dme wrote it by hand before using hound: RIFF, a 16-byte `fmt `, `data`.
    fn hand_written_wav16(left: &[f32], right: &[f32], rate: u32) -> Vec<u8> {
        let data_len = left.len() as u32 * 4;
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(4 + 8 + 16 + 8 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 4).to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for (l, r) in left.iter().zip(right) {
            out.extend_from_slice(&to_i16(*l).to_le_bytes());
            out.extend_from_slice(&to_i16(*r).to_le_bytes());
        }
        out
    }

    /// More frames than one 16-bit batch, with values that round both ways and clip.
    fn test_signal() -> (Vec<f32>, Vec<f32>) {
        let frames = WAV16_CHUNK_FRAMES + 1_234;
        let left = (0..frames)
            .map(|i| (i as f32 * 0.001).sin() * 1.2)
            .collect();
        let right = (0..frames)
            .map(|i| (i as f32 * 0.0007).cos() * 0.3)
            .collect();
        (left, right)
    }

    #[test]
    fn wav16_is_byte_identical_to_the_hand_written_format() {
        let (left, right) = test_signal();
        for rate in [44_100, 48_000] {
            assert!(
                encode(&left, &right, rate, Format::Wav16).unwrap()
                    == hand_written_wav16(&left, &right, rate)
            );
        }
        assert_eq!(
            encode(&[], &[], 44_100, Format::Wav16).unwrap(),
            hand_written_wav16(&[], &[], 44_100)
        );
    }

    #[test]
    fn wav32f_keeps_every_bit() {
        let (mut left, right) = test_signal();
        left[7] = -0.0;
        left[8] = f32::MIN_POSITIVE / 2.0; // subnormal
        let (stereo, rate) =
            read_wav(&encode(&left, &right, 48_000, Format::Wav32f).unwrap()).unwrap();
        let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<u32>>();
        assert_eq!(rate, 48_000);
        assert_eq!(bits(&stereo.left), bits(&left));
        assert_eq!(bits(&stereo.right), bits(&right));
    }

    #[test]
    fn absurd_wav_rates_are_refused_not_overflowed() {
        assert!(matches!(
            encode(&[0.0], &[0.0], u32::MAX, Format::Wav32f),
            Err(AudioError::Encode(_))
        ));
    }

    #[test]
    fn mismatched_lengths_are_rejected() {
        assert!(matches!(
            encode(&[0.0], &[], 44_100, Format::Wav16),
            Err(AudioError::Encode(_))
        ));
    }

    #[test]
    fn read_wav_rejects_other_layouts() {
        assert!(matches!(
            read_wav(b"not a wav"),
            Err(AudioError::Corrupt(_))
        ));
        // A mono 16-bit WAV written by hound.
        let mut bytes = Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::new(&mut bytes, spec).unwrap();
        writer.write_sample(0i16).unwrap();
        writer.finalize().unwrap();
        assert!(matches!(
            read_wav(bytes.get_ref()),
            Err(AudioError::Corrupt(_))
        ));
    }
}

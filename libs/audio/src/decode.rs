//! Streaming decode to stereo f32 at a target rate.

use std::path::Path;

use symphonia::core::audio::{AudioBuffer, Channels, Signal};
use symphonia::core::codecs::Decoder;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatReader;

use crate::probe::{
    next_track_packet, open_media, probe_inner, too_many_bad, MAX_CONSECUTIVE_BAD_PACKETS,
    MAX_PACKET_FRAMES, SAMPLE_RATE_RANGE,
};
use crate::resample::StreamResampler;
use crate::{guard_panics, AudioError, Probe, Stereo};

/// Gain of the centre and of every surround/height channel in the downmix: -3 dB, the ITU-R
/// BS.775 coefficient, so a source panned between speakers keeps its power.
const SURROUND_GAIN: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Largest sample magnitude passed on (+80 dB over full scale). Float WAVs may legitimately
/// exceed 1.0 a little; anything near this is corrupt data, and unbounded values would overflow
/// the resampler's FFT into NaN (which rubato turns into a panic).
const SAMPLE_LIMIT: f32 = 10_000.0;

/// Most frames [`decode_path`] reserves up front from the probed length (about 6 minutes at
/// 44.1 kHz, 128 MiB of stereo f32), so a header that lies about its length cannot make us
/// allocate gigabytes before a single sample is decoded. Longer files simply grow the buffer.
const MAX_RESERVE_FRAMES: u64 = 1 << 24;

/// Frames of concealment silence emitted per block: small enough that a run of long bad packets
/// never needs more than 64 KiB at once, large enough that it costs nothing.
const SILENCE_BLOCK_FRAMES: u64 = 8_192;

/// One block of decoded audio: planar stereo, both channels the same length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StereoBlock {
    /// Left channel samples.
    pub left: Vec<f32>,
    /// Right channel samples.
    pub right: Vec<f32>,
}

impl StereoBlock {
    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.left.len()
    }

    /// Whether the block holds no samples.
    pub fn is_empty(&self) -> bool {
        self.left.is_empty()
    }
}

/// Streaming decoder producing planar stereo f32 at a target rate.
///
/// * Mono is duplicated to both channels; stereo passes through untouched; more channels are
///   downmixed ITU-style: `L = FL + 0.707·FC + 0.707·(every left surround/height channel)`, the
///   mirror for `R`, LFE dropped, then all gains scaled so neither output's gains sum above 1
///   (so a full-scale 5.1 source cannot clip). For 5.1 this gives `L = 0.414·FL + 0.293·FC +
///   0.293·BL`. Channels the file does not position are split even → left, odd → right.
/// * When the source rate differs from the target, the audio is resampled with rubato's
///   synchronous FFT resampler (sinc fallback for odd rate pairs), latency-compensated so the
///   output is aligned with the input and `round(frames · target / source)` long. When the rates
///   match nothing is resampled and the samples are exactly symphonia's decoded output
///   (16-bit PCM gives `i16 / 32768`).
/// * Memory is bounded: the decoder works one packet at a time and the resampler holds at most
///   one chunk, so an hour-long file is never in memory.
/// * Packets that fail to decode are replaced by silence of their duration and counted
///   ([`StereoDecoder::skipped_packets`]), so the audio after a damaged spot keeps its place in
///   time and the stream is exactly as long as [`crate::probe_path`] said (the probe sums the
///   same packet durations). Silence before the first good packet is emitted once the rate is
///   known; more than a bounded number of bad packets in a row ends decoding with
///   [`AudioError::Corrupt`]. The end of the file, even in the middle of a packet or before a
///   header says it should end, is the end of the stream.
/// * MP3 encoder delay and padding recorded in a LAME/Info tag are trimmed from the decoded
///   samples, so the output lines up with what was encoded; MP3s without that tag keep the
///   encoder's leading silence (typically 1105 frames for LAME). Other formats use symphonia's
///   gapless handling.
/// * NaN and infinite samples (only corrupt float files have them) become 0 and magnitudes are
///   clamped to 10 000; every other sample is passed on untouched.
/// * A panic inside symphonia or rubato is caught and reported as
///   [`AudioError::DecoderPanicked`]; the decoder is unusable afterwards.
pub struct StereoDecoder {
    probe: Probe,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    /// Rate of the decoded samples; the container's, unless the first decoded packet says
    /// otherwise.
    source_rate: u32,
    target_rate: u32,
    resampler: Option<StreamResampler>,
    trim: GaplessTrim,
    /// Reused planar f32 copy of each decoded packet.
    planar: Option<AudioBuffer<f32>>,
    /// Downmix gains for the most recent channel layout.
    downmix: Option<(Channels, usize, Downmix)>,
    skipped: u64,
    consecutive_bad: u32,
    decoded_frames: u64,
    /// Frames of silence owed for packets that could not be decoded, at the source rate.
    concealment: u64,
    /// A decoded block waiting for the concealment silence that must precede it.
    held: Option<StereoBlock>,
    /// The demuxer has reported the end of the stream.
    at_end: bool,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Poisoned,
}

impl StereoDecoder {
    /// Open `path` (`ext_hint`: its extension, when known) for decoding to stereo at
    /// `target_rate` Hz. Probes the file first, so [`StereoDecoder::probe`] is complete.
    ///
    /// # Errors
    ///
    /// Everything [`crate::probe_path`] returns, and [`AudioError::UnsupportedCodec`] when
    /// `target_rate` is outside 1 kHz..=768 kHz.
    pub fn open(path: &Path, ext_hint: Option<&str>, target_rate: u32) -> Result<Self, AudioError> {
        if !SAMPLE_RATE_RANGE.contains(&target_rate) {
            return Err(AudioError::UnsupportedCodec(format!(
                "target sample rate {target_rate} Hz is out of range"
            )));
        }
        guard_panics(|| {
            let probe = probe_inner(path, ext_hint)?;
            let media = open_media(path, ext_hint)?;
            let (delay, padding) = media.trim;
            let trim = GaplessTrim::new(delay as usize, padding as usize);
            let resampler = if media.sample_rate == target_rate {
                None
            } else {
                Some(StreamResampler::new(media.sample_rate, target_rate)?)
            };
            Ok(Self {
                probe,
                format: media.format,
                decoder: media.decoder,
                track_id: media.track_id,
                source_rate: media.sample_rate,
                target_rate,
                resampler,
                trim,
                planar: None,
                downmix: None,
                skipped: 0,
                consecutive_bad: 0,
                decoded_frames: 0,
                concealment: 0,
                held: None,
                at_end: false,
                state: State::Running,
            })
        })
    }

    /// What the file was probed as (source rate, channels and length, before resampling).
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Packets skipped so far because they failed to decode.
    pub fn skipped_packets(&self) -> u64 {
        self.skipped
    }

    /// Next block of decoded stereo samples, `None` at the end. Blocks may be any size (typically
    /// one packet, or one resampler chunk) and are never empty.
    ///
    /// # Errors
    ///
    /// [`AudioError::Corrupt`] after too many consecutive bad packets, when no packet at all
    /// could be decoded, or on every call after a failure; [`AudioError::DecoderPanicked`] when
    /// the decoder panicked;
    /// [`AudioError::UnsupportedCodec`] when the stream switches to a feature the decoder lacks;
    /// [`AudioError::Io`] when reading fails.
    pub fn next_block(&mut self) -> Result<Option<StereoBlock>, AudioError> {
        match self.state {
            State::Finished => return Ok(None),
            State::Poisoned => {
                return Err(AudioError::Corrupt(
                    "decoder failed earlier in the stream".into(),
                ))
            }
            State::Running => {}
        }
        let result = guard_panics(|| self.next_block_inner());
        if result.is_err() {
            self.state = State::Poisoned;
        }
        result
    }

    fn next_block_inner(&mut self) -> Result<Option<StereoBlock>, AudioError> {
        loop {
            // Concealment silence waits until one packet has decoded: only then is the rate of
            // the stream (and so of the silence) certain.
            if self.concealment > 0 && self.decoded_frames > 0 {
                let n = self.concealment.min(SILENCE_BLOCK_FRAMES);
                self.concealment -= n;
                let silence = StereoBlock {
                    left: vec![0.0; n as usize],
                    right: vec![0.0; n as usize],
                };
                let block = self.emit(silence)?;
                if !block.is_empty() {
                    return Ok(Some(block));
                }
                continue;
            }
            if let Some(held) = self.held.take() {
                let block = self.emit(held)?;
                if !block.is_empty() {
                    return Ok(Some(block));
                }
                continue;
            }
            if self.at_end {
                return self.finish();
            }
            let Some(packet) = next_track_packet(&mut *self.format, self.track_id)? else {
                self.at_end = true;
                continue;
            };
            let decoded = match self.decoder.decode(&packet) {
                Ok(decoded) => decoded,
                Err(SymphoniaError::DecodeError(_) | SymphoniaError::IoError(_)) => {
                    self.skip_bad_packet(packet.dur)?;
                    continue;
                }
                Err(SymphoniaError::ResetRequired) => {
                    self.decoder.reset();
                    self.conceal(packet.dur);
                    continue;
                }
                Err(SymphoniaError::Unsupported(what)) => {
                    return Err(AudioError::UnsupportedCodec(what.into()))
                }
                Err(other) => return Err(crate::probe::corrupt(&other)),
            };
            let rate = decoded.spec().rate;
            if rate != self.source_rate
                && self.decoded_frames == 0
                && SAMPLE_RATE_RANGE.contains(&rate)
            {
                // The container misreported the rate (e.g. HE-AAC signalled at its core rate):
                // trust the decoder, which knows what it produces.
                self.source_rate = rate;
                self.resampler = if rate == self.target_rate {
                    None
                } else {
                    Some(StreamResampler::new(rate, self.target_rate)?)
                };
            }
            // Later, a frame at another rate is a false sync inside garbage (MP3) or a stream
            // change we cannot splice in without glitches: treat it as a bad packet.
            if rate != self.source_rate || decoded.spec().channels.count() == 0 {
                self.skip_bad_packet(packet.dur)?;
                continue;
            }
            self.consecutive_bad = 0;
            if decoded.frames() == 0 {
                continue;
            }

            let planar = match &mut self.planar {
                Some(buf)
                    if buf.capacity() >= decoded.capacity() && buf.spec() == decoded.spec() =>
                {
                    buf
                }
                slot => slot.insert(decoded.make_equivalent::<f32>()),
            };
            decoded.convert(planar);
            let first = self.decoded_frames == 0;
            self.decoded_frames += planar.frames() as u64;
            let block = to_stereo(planar, &mut self.downmix);
            if first && self.concealment > 0 {
                // Silence for the bad packets before this one goes first.
                self.held = Some(block);
                continue;
            }
            let block = self.emit(block)?;
            if !block.is_empty() {
                return Ok(Some(block));
            }
        }
    }

    /// Passes a block of source-rate stereo through gapless trimming, sanitising and the
    /// resampler; the result may be empty.
    fn emit(&mut self, block: StereoBlock) -> Result<StereoBlock, AudioError> {
        let mut block = self.trim.apply(block);
        sanitize(&mut block);
        match &mut self.resampler {
            None => Ok(block),
            Some(resampler) => {
                let mut out = StereoBlock::default();
                resampler.push(&block.left, &block.right, &mut out)?;
                // The resampler's low-pass rings past a full-scale step (Gibbs): clamp again so
                // the limit holds for what we hand out, not only for what went in.
                sanitize(&mut out);
                Ok(out)
            }
        }
    }

    /// Owes silence for a packet of `dur` frames that produced no audio (bounded like the
    /// probe's count, so a garbage duration cannot make us emit hours of silence).
    fn conceal(&mut self, dur: u64) {
        self.concealment = self.concealment.saturating_add(dur.min(MAX_PACKET_FRAMES));
    }

    fn skip_bad_packet(&mut self, dur: u64) -> Result<(), AudioError> {
        self.skipped += 1;
        self.consecutive_bad += 1;
        if self.consecutive_bad > MAX_CONSECUTIVE_BAD_PACKETS {
            return Err(too_many_bad());
        }
        self.conceal(dur);
        Ok(())
    }

    /// End of stream: flush the resampler's tail.
    fn finish(&mut self) -> Result<Option<StereoBlock>, AudioError> {
        if self.decoded_frames == 0 && self.skipped > 0 {
            return Err(AudioError::Corrupt(format!(
                "none of {} packets could be decoded",
                self.skipped
            )));
        }
        if self.decoded_frames == 0 && self.probe.frames > 0 {
            // Some demuxers (FLAC) drop frames that fail their checksum without reporting them.
            return Err(AudioError::Corrupt(format!(
                "the file declares {} frames but none could be decoded",
                self.probe.frames
            )));
        }
        self.state = State::Finished;
        let mut out = StereoBlock::default();
        if let Some(resampler) = &mut self.resampler {
            resampler.finish(&mut out)?;
            sanitize(&mut out);
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// Decode a whole file into one planar stereo buffer at `target_rate` (see [`StereoDecoder`] for
/// channel mapping, resampling and error handling).
///
/// # Errors
///
/// As [`StereoDecoder::open`] and [`StereoDecoder::next_block`], plus [`AudioError::NoSamples`]
/// when the file decodes to zero samples.
pub fn decode_path(
    path: &Path,
    ext_hint: Option<&str>,
    target_rate: u32,
) -> Result<Stereo, AudioError> {
    let mut decoder = StereoDecoder::open(path, ext_hint, target_rate)?;
    let probe = decoder.probe();
    let estimate =
        u128::from(probe.frames) * u128::from(target_rate) / u128::from(probe.sample_rate);
    let reserve = estimate.min(u128::from(MAX_RESERVE_FRAMES)) as usize;
    let mut stereo = Stereo {
        left: Vec::with_capacity(reserve),
        right: Vec::with_capacity(reserve),
    };
    while let Some(block) = decoder.next_block()? {
        stereo.left.extend_from_slice(&block.left);
        stereo.right.extend_from_slice(&block.right);
    }
    if stereo.frames() == 0 {
        return Err(AudioError::NoSamples);
    }
    Ok(stereo)
}

/// Replace NaN and infinities with silence and clamp to ±[`SAMPLE_LIMIT`]; finite samples within
/// the limit (all real audio) are untouched, so passthrough stays exact.
fn sanitize(block: &mut StereoBlock) {
    for s in block.left.iter_mut().chain(block.right.iter_mut()) {
        if !s.is_finite() {
            *s = 0.0;
        } else if s.abs() > SAMPLE_LIMIT {
            *s = s.signum() * SAMPLE_LIMIT;
        }
    }
}

/// Trims encoder delay from the front and padding from the end of a decoded stream, for MPEG
/// audio (see `probe::open_media_with`). The padding is only known to be padding once the
/// stream ends, so the last `padding` frames are always held back; memory stays bounded by
/// `padding` plus one block.
#[derive(Debug, Default)]
struct GaplessTrim {
    front_left: usize,
    padding: usize,
    held: StereoBlock,
}

impl GaplessTrim {
    fn new(delay: usize, padding: usize) -> Self {
        Self {
            front_left: delay,
            padding,
            held: StereoBlock::default(),
        }
    }

    /// Pass a block through; returns what may be emitted now (possibly empty). Whatever is still
    /// held at the end of the stream is the padding and is dropped with `self`.
    fn apply(&mut self, mut block: StereoBlock) -> StereoBlock {
        if self.front_left > 0 {
            let n = self.front_left.min(block.frames());
            block.left.drain(..n);
            block.right.drain(..n);
            self.front_left -= n;
        }
        if self.padding == 0 {
            return block;
        }
        self.held.left.extend_from_slice(&block.left);
        self.held.right.extend_from_slice(&block.right);
        let ready = self.held.frames().saturating_sub(self.padding);
        StereoBlock {
            left: self.held.left.drain(..ready).collect(),
            right: self.held.right.drain(..ready).collect(),
        }
    }
}

/// Per-input-channel gains into the left and right outputs.
#[derive(Debug, Clone, PartialEq)]
struct Downmix {
    left: Vec<f32>,
    right: Vec<f32>,
}

/// Convert a planar buffer with any channel count to stereo (see [`StereoDecoder`]).
fn to_stereo(
    buf: &AudioBuffer<f32>,
    cache: &mut Option<(Channels, usize, Downmix)>,
) -> StereoBlock {
    let count = buf.spec().channels.count();
    match count {
        1 => StereoBlock {
            left: buf.chan(0).to_vec(),
            right: buf.chan(0).to_vec(),
        },
        2 => StereoBlock {
            left: buf.chan(0).to_vec(),
            right: buf.chan(1).to_vec(),
        },
        _ => {
            let layout = buf.spec().channels;
            let gains = match cache {
                Some((cached, n, gains)) if *cached == layout && *n == count => gains,
                slot => &slot.insert((layout, count, downmix_gains(layout, count))).2,
            };
            let frames = buf.frames();
            let mut block = StereoBlock {
                left: vec![0.0; frames],
                right: vec![0.0; frames],
            };
            for c in 0..count {
                let samples = buf.chan(c);
                let (gl, gr) = (gains.left[c], gains.right[c]);
                if gl != 0.0 {
                    block
                        .left
                        .iter_mut()
                        .zip(samples)
                        .for_each(|(o, s)| *o += gl * s);
                }
                if gr != 0.0 {
                    block
                        .right
                        .iter_mut()
                        .zip(samples)
                        .for_each(|(o, s)| *o += gr * s);
                }
            }
            block
        }
    }
}

/// Downmix gains for a channel layout of `count` channels, in symphonia's planar channel order
/// (ascending bit order of the [`Channels`] mask).
fn downmix_gains(layout: Channels, count: usize) -> Downmix {
    let positions: Vec<Channels> = layout.iter().collect();
    let (mut left, mut right) = (vec![0.0_f32; count], vec![0.0_f32; count]);
    if positions.len() == count {
        for (c, position) in positions.iter().enumerate() {
            let (l, r) = position_gains(*position);
            left[c] = l;
            right[c] = r;
        }
    }
    if left.iter().all(|&g| g == 0.0) || right.iter().all(|&g| g == 0.0) {
        // Unpositioned channels: alternate them between the sides.
        for c in 0..count {
            if c % 2 == 0 {
                left[c] = 1.0;
            } else {
                right[c] = 1.0;
            }
        }
    }
    let peak = left.iter().sum::<f32>().max(right.iter().sum::<f32>());
    if peak > 1.0 {
        left.iter_mut()
            .chain(right.iter_mut())
            .for_each(|g| *g /= peak);
    }
    Downmix { left, right }
}

/// Gains of one speaker position into (left, right).
fn position_gains(position: Channels) -> (f32, f32) {
    const LEFT_SURROUNDS: Channels = Channels::REAR_LEFT
        .union(Channels::SIDE_LEFT)
        .union(Channels::FRONT_LEFT_CENTRE)
        .union(Channels::FRONT_LEFT_WIDE)
        .union(Channels::FRONT_LEFT_HIGH)
        .union(Channels::TOP_FRONT_LEFT)
        .union(Channels::TOP_REAR_LEFT)
        .union(Channels::REAR_LEFT_CENTRE);
    const RIGHT_SURROUNDS: Channels = Channels::REAR_RIGHT
        .union(Channels::SIDE_RIGHT)
        .union(Channels::FRONT_RIGHT_CENTRE)
        .union(Channels::FRONT_RIGHT_WIDE)
        .union(Channels::FRONT_RIGHT_HIGH)
        .union(Channels::TOP_FRONT_RIGHT)
        .union(Channels::TOP_REAR_RIGHT)
        .union(Channels::REAR_RIGHT_CENTRE);
    if position == Channels::FRONT_LEFT {
        (1.0, 0.0)
    } else if position == Channels::FRONT_RIGHT {
        (0.0, 1.0)
    } else if position.intersects(Channels::LFE1 | Channels::LFE2) {
        // Bass management belongs to playback systems; music separation gains nothing from it.
        (0.0, 0.0)
    } else if position.intersects(LEFT_SURROUNDS) {
        (SURROUND_GAIN, 0.0)
    } else if position.intersects(RIGHT_SURROUNDS) {
        (0.0, SURROUND_GAIN)
    } else {
        // Front centre and every other centred position.
        (SURROUND_GAIN, SURROUND_GAIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_one_gains_follow_itu_and_do_not_clip() {
        // FL FR FC LFE BL BR
        let layout = Channels::FRONT_LEFT
            | Channels::FRONT_RIGHT
            | Channels::FRONT_CENTRE
            | Channels::LFE1
            | Channels::REAR_LEFT
            | Channels::REAR_RIGHT;
        let gains = downmix_gains(layout, 6);
        let norm = 1.0 + 2.0 * SURROUND_GAIN;
        let expect_left = [
            1.0 / norm,
            0.0,
            SURROUND_GAIN / norm,
            0.0,
            SURROUND_GAIN / norm,
            0.0,
        ];
        for (g, e) in gains.left.iter().zip(expect_left) {
            assert!((g - e).abs() < 1e-6, "{gains:?}");
        }
        assert!((gains.left.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((gains.right.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn unpositioned_channels_alternate() {
        let gains = downmix_gains(Channels::empty(), 4);
        assert_eq!(gains.left, vec![0.5, 0.0, 0.5, 0.0]);
        assert_eq!(gains.right, vec![0.0, 0.5, 0.0, 0.5]);
    }

    #[test]
    fn gapless_trim_drops_delay_and_holds_back_padding() {
        let mut trim = GaplessTrim::new(3, 2);
        let block = |range: std::ops::Range<u8>| {
            let v: Vec<f32> = range.map(f32::from).collect();
            StereoBlock {
                left: v.clone(),
                right: v,
            }
        };
        assert!(trim.apply(block(0..2)).is_empty());
        assert_eq!(trim.apply(block(2..6)).left, vec![3.0]);
        assert_eq!(trim.apply(block(6..10)).left, vec![4.0, 5.0, 6.0, 7.0]);
        // 8 and 9 stay held: they are the padding.
        assert_eq!(trim.held.left, vec![8.0, 9.0]);
    }

    #[test]
    fn sanitize_zeroes_non_finite_and_clamps() {
        let mut block = StereoBlock {
            left: vec![f32::NAN, 0.25, f32::INFINITY, -1.5],
            right: vec![1e30, -1e30, f32::NEG_INFINITY, 0.0],
        };
        sanitize(&mut block);
        assert_eq!(block.left, vec![0.0, 0.25, 0.0, -1.5]);
        assert_eq!(block.right, vec![SAMPLE_LIMIT, -SAMPLE_LIMIT, 0.0, 0.0]);
    }

    #[test]
    fn decoder_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<StereoDecoder>();
    }
}

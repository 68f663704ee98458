//! Encoding a stored WAV of any length to a download format as a stream, in bounded memory, with
//! exactly the bytes [`crate::encode`] makes from the whole signal.
//!
//! The source is read one block of [`BLOCK_FRAMES`] frames at a time and each block is encoded
//! and written out before the next is read, so memory does not grow with the track. Two formats
//! need a second pass: FLAC's STREAMINFO (MD5 of the samples, smallest and largest frame) and
//! MP3's LAME/Info tag (frame and byte counts, seek table, CRC of the audio) come first in the
//! file but depend on all of it. The first pass encodes to nowhere to learn that head; the second
//! writes the head, then the encoder's output (over LAME's placeholder frame for MP3).

use std::cell::Cell;
use std::io::{self, BufReader, Read, Write};
use std::rc::Rc;

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, Stream, StreamInfo};
use flacenc::source::{Context, Fill, FrameBuf};
use mp3lame_encoder::{DualPcm, FlushGap};

use crate::encode::{
    flac_config, mp3_encoder, mp3_failed, mp3_tag, to_i16, wav_header, WavSample, FLAC_BLOCK_SIZE,
    I16_SCALE, MP3_CHUNK_FRAMES,
};
use crate::{encode, AudioError, Format};

/// Frames read, converted and encoded per block: the chunk the whole-buffer MP3 encoder hands
/// LAME (so both feed LAME alike), 576 KiB of float stereo.
pub const BLOCK_FRAMES: usize = MP3_CHUNK_FRAMES;

/// Bytes of the source read ahead at a time: large enough that a network-backed reader sees few
/// calls, small beside a block.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Encodes the WAV that `open` yields (stereo 32-bit float or 16-bit PCM, as dme stores stems
/// and mixes) to `format`, writing the file to `sink` as it goes; returns the bytes written.
///
/// The output is byte for byte what [`encode`] makes of [`crate::read_wav`]'s samples, while
/// memory stays bounded (a few blocks of [`BLOCK_FRAMES`] frames plus the encoder's state)
/// however long the track. The WAV header's length is taken from the source's header, so the
/// source need not be seekable.
///
/// `open` is called once for the WAV formats and twice for FLAC and MP3, whose headers depend on
/// all of the audio (see the module docs): both calls must yield the same bytes. No output is
/// written until the second pass starts.
///
/// # Errors
/// [`AudioError::Corrupt`] for a source that is not a stereo WAV in one of those formats, is
/// truncated, or changed between the passes; [`AudioError::Io`] when reading the source or
/// writing to `sink` fails; [`AudioError::Encode`] as for [`encode`].
pub fn encode_wav_stream<R: Read, W: Write>(
    mut open: impl FnMut() -> io::Result<R>,
    format: Format,
    sink: W,
) -> Result<u64, AudioError> {
    let mut sink = CountingWriter {
        inner: sink,
        written: 0,
    };
    let mut source = WavBlocks::open(open()?)?;
    let (rate, frames) = (source.rate, source.frames);
    if frames == 0 {
        sink.write_all(&encode(&[], &[], rate, format)?)?;
    } else if let Some(kind) = WavSample::of(format) {
        sink.write_all(&wav_header(kind, rate, frames)?)?;
        encode_blocks(&mut source, format, &mut sink)?;
    } else {
        let head = encode_blocks(&mut source, format, &mut io::sink())?;
        let mut source = WavBlocks::open(open()?)?;
        if (source.rate, source.frames) != (rate, frames) {
            return Err(changed_between_passes());
        }
        sink.write_all(&head.bytes)?;
        let mut body = SkipFirst {
            inner: &mut sink,
            skip: head.replaces,
        };
        if encode_blocks(&mut source, format, &mut body)? != head {
            return Err(changed_between_passes());
        }
    }
    sink.flush()?;
    Ok(sink.written)
}

fn changed_between_passes() -> AudioError {
    AudioError::Corrupt("wav: the source changed between the two encoding passes".into())
}

/// The bytes that belong at the start of a file, known only once all of it is encoded.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    /// The head itself.
    bytes: Vec<u8>,
    /// How many leading bytes of the encoder's own output it replaces.
    replaces: usize,
}

/// Reads every block of `source`, encodes it to `format` and writes it to `out`; returns the
/// head to put first (empty for the WAV formats, whose caller wrote it already).
fn encode_blocks<R: Read>(
    source: &mut WavBlocks<R>,
    format: Format,
    out: &mut dyn Write,
) -> Result<Head, AudioError> {
    let mut encoder = BlockEncoder::new(format, source.rate)?;
    let mut left = Vec::with_capacity(BLOCK_FRAMES);
    let mut right = Vec::with_capacity(BLOCK_FRAMES);
    while source.read_block(&mut left, &mut right)? > 0 {
        encoder.push(&left, &right, out)?;
    }
    encoder.finish(source.frames, out)
}

/// One format's encoder, fed a block at a time; its buffers hold one block's output.
enum BlockEncoder {
    /// Samples become bytes; the header was written up front.
    Wav {
        kind: WavSample,
        bytes: Vec<u8>,
    },
    Flac(Box<FlacFrames>),
    Mp3 {
        lame: mp3lame_encoder::Encoder,
        bytes: Vec<u8>,
    },
}

impl BlockEncoder {
    fn new(format: Format, rate: u32) -> Result<BlockEncoder, AudioError> {
        Ok(match format {
            Format::Wav16 | Format::Wav32f => BlockEncoder::Wav {
                kind: WavSample::of(format).expect("a WAV format"),
                bytes: Vec::new(),
            },
            Format::Flac => BlockEncoder::Flac(Box::new(FlacFrames::new(rate)?)),
            Format::Mp3 => BlockEncoder::Mp3 {
                lame: mp3_encoder(rate)?,
                bytes: Vec::new(),
            },
        })
    }

    fn push(&mut self, left: &[f32], right: &[f32], out: &mut dyn Write) -> Result<(), AudioError> {
        match self {
            BlockEncoder::Wav { kind, bytes } => {
                bytes.clear();
                bytes.reserve(left.len() * kind.block_align() as usize);
                for (l, r) in left.iter().zip(right) {
                    match kind {
                        WavSample::Int16 => {
                            bytes.extend_from_slice(&to_i16(*l).to_le_bytes());
                            bytes.extend_from_slice(&to_i16(*r).to_le_bytes());
                        }
                        WavSample::Float32 => {
                            bytes.extend_from_slice(&l.to_le_bytes());
                            bytes.extend_from_slice(&r.to_le_bytes());
                        }
                    }
                }
                out.write_all(bytes)?;
            }
            BlockEncoder::Flac(flac) => flac.push(left, right, out)?,
            BlockEncoder::Mp3 { lame, bytes } => {
                bytes.clear();
                bytes.reserve(mp3lame_encoder::max_required_buffer_size(left.len()));
                lame.encode_to_vec(DualPcm { left, right }, bytes)
                    .map_err(mp3_failed)?;
                out.write_all(bytes)?;
            }
        }
        Ok(())
    }

    /// Writes what the encoder still holds; returns the head (see [`Head`]).
    fn finish(self, frames: u64, out: &mut dyn Write) -> Result<Head, AudioError> {
        match self {
            BlockEncoder::Wav { .. } => Ok(Head::default()),
            BlockEncoder::Flac(flac) => flac.finish(frames, out),
            BlockEncoder::Mp3 {
                mut lame,
                mut bytes,
            } => {
                bytes.clear();
                bytes.reserve(mp3lame_encoder::max_required_buffer_size(0));
                lame.flush_to_vec::<FlushGap>(&mut bytes)
                    .map_err(mp3_failed)?;
                out.write_all(&bytes)?;
                let tag = mp3_tag(&lame);
                Ok(Head {
                    replaces: tag.len(),
                    bytes: tag,
                })
            }
        }
    }
}

/// FLAC frames of [`FLAC_BLOCK_SIZE`] frames each, encoded as soon as a block is full, the way
/// flacenc's whole-stream encoder makes them.
struct FlacFrames {
    config: flacenc::error::Verified<flacenc::config::Encoder>,
    info: StreamInfo,
    /// flacenc's frame buffer, and the context that numbers frames and hashes samples (MD5).
    frame: (FrameBuf, Context),
    /// Interleaved 16-bit samples waiting for a full block.
    pending: Vec<i32>,
    bits: ByteSink,
}

impl FlacFrames {
    const CHANNELS: usize = 2;
    const BITS: usize = 16;

    fn new(rate: u32) -> Result<FlacFrames, AudioError> {
        let failed = |e: flacenc::error::VerifyError| AudioError::Encode(format!("flac: {e:?}"));
        let mut info =
            StreamInfo::new(rate as usize, Self::CHANNELS, Self::BITS).map_err(failed)?;
        info.set_block_sizes(FLAC_BLOCK_SIZE, FLAC_BLOCK_SIZE)
            .map_err(failed)?;
        Ok(FlacFrames {
            config: flac_config()?,
            info,
            frame: (
                FrameBuf::with_size(Self::CHANNELS, FLAC_BLOCK_SIZE).map_err(failed)?,
                Context::new(Self::BITS, Self::CHANNELS),
            ),
            pending: Vec::with_capacity(Self::CHANNELS * FLAC_BLOCK_SIZE),
            bits: ByteSink::new(),
        })
    }

    fn push(&mut self, left: &[f32], right: &[f32], out: &mut dyn Write) -> Result<(), AudioError> {
        for (l, r) in left.iter().zip(right) {
            self.pending.push(i32::from(to_i16(*l)));
            self.pending.push(i32::from(to_i16(*r)));
            if self.pending.len() == Self::CHANNELS * FLAC_BLOCK_SIZE {
                self.encode_pending(out)?;
            }
        }
        Ok(())
    }

    /// Encodes the pending samples as one frame and writes it.
    fn encode_pending(&mut self, out: &mut dyn Write) -> Result<(), AudioError> {
        let failed = |e: String| AudioError::Encode(format!("flac: {e}"));
        self.frame
            .fill_interleaved(&self.pending)
            .map_err(|e| failed(format!("{e:?}")))?;
        self.pending.clear();
        let number = self.frame.1.current_frame_number().unwrap_or(0);
        let frame =
            flacenc::encode_fixed_size_frame(&self.config, &self.frame.0, number, &self.info)
                .map_err(|e| failed(format!("{e:?}")))?;
        self.info.update_frame_info(&frame);
        self.bits.clear();
        frame
            .write(&mut self.bits)
            .map_err(|e| failed(format!("{e:?}")))?;
        out.write_all(self.bits.as_slice())?;
        Ok(())
    }

    /// Encodes the short last block; returns `fLaC` and the STREAMINFO block.
    fn finish(mut self, frames: u64, out: &mut dyn Write) -> Result<Head, AudioError> {
        if !self.pending.is_empty() {
            self.encode_pending(out)?;
        }
        let failed = |e: String| AudioError::Encode(format!("flac: {e}"));
        self.info.set_md5_digest(&self.frame.1.md5_digest());
        self.info.set_total_samples(frames as usize);
        // As in `encode`: the short last block is not the minimum block size (see there).
        self.info
            .set_block_sizes(FLAC_BLOCK_SIZE, FLAC_BLOCK_SIZE)
            .map_err(|e| failed(format!("{e:?}")))?;
        let mut bits = ByteSink::new();
        Stream::with_stream_info(self.info)
            .write(&mut bits)
            .map_err(|e| failed(format!("{e:?}")))?;
        Ok(Head {
            bytes: bits.into_inner(),
            replaces: 0,
        })
    }
}

/// A WAV source read a block at a time.
struct WavBlocks<R: Read> {
    samples: Samples<R>,
    rate: u32,
    /// Frames the header declares.
    frames: u64,
    /// Set once the source has no more bytes: a read failing after that is a truncated file.
    ended: Rc<Cell<bool>>,
}

type Buffered<R> = BufReader<EndWatch<R>>;

enum Samples<R: Read> {
    Float(hound::WavIntoSamples<Buffered<R>, f32>),
    Int16(hound::WavIntoSamples<Buffered<R>, i16>),
}

impl<R: Read> WavBlocks<R> {
    fn open(source: R) -> Result<WavBlocks<R>, AudioError> {
        let ended = Rc::new(Cell::new(false));
        let source = EndWatch {
            inner: source,
            ended: Rc::clone(&ended),
        };
        let read_failed = |e| read_failed(e, &ended);
        let reader = hound::WavReader::new(BufReader::with_capacity(READ_AHEAD_BYTES, source))
            .map_err(read_failed)?;
        let spec = reader.spec();
        if spec.channels != 2 {
            return Err(AudioError::Corrupt(format!(
                "wav: {} channels, expected 2",
                spec.channels
            )));
        }
        let frames = u64::from(reader.duration());
        let samples = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => Samples::Float(reader.into_samples()),
            (hound::SampleFormat::Int, 16) => Samples::Int16(reader.into_samples()),
            (format, bits) => {
                return Err(AudioError::Corrupt(format!(
                    "wav: {bits}-bit {format:?} samples, expected 32-bit float or 16-bit int"
                )))
            }
        };
        Ok(WavBlocks {
            samples,
            rate: spec.sample_rate,
            frames,
            ended,
        })
    }

    fn next_sample(&mut self) -> Result<Option<f32>, AudioError> {
        let read_failed = |e| read_failed(e, &self.ended);
        let sample = match &mut self.samples {
            Samples::Float(samples) => samples.next().map(|s| s.map_err(read_failed)),
            Samples::Int16(samples) => samples
                .next()
                .map(|s| s.map(|s| f32::from(s) / I16_SCALE).map_err(read_failed)),
        };
        sample.transpose()
    }

    /// Reads up to [`BLOCK_FRAMES`] frames into `left` and `right` (cleared first); returns how
    /// many, 0 at the end.
    fn read_block(
        &mut self,
        left: &mut Vec<f32>,
        right: &mut Vec<f32>,
    ) -> Result<usize, AudioError> {
        left.clear();
        right.clear();
        while left.len() < BLOCK_FRAMES {
            let Some(l) = self.next_sample()? else {
                break;
            };
            let r = self
                .next_sample()?
                .ok_or_else(|| AudioError::Corrupt("wav: odd number of samples".into()))?;
            left.push(l);
            right.push(r);
        }
        Ok(left.len())
    }
}

/// A failure reading the source: the reader's own I/O errors stay I/O errors (a dropped
/// connection is not a corrupt file), except running out of the bytes the header promised.
fn read_failed(e: hound::Error, ended: &Cell<bool>) -> AudioError {
    match e {
        hound::Error::IoError(_) if ended.get() => {
            AudioError::Corrupt("wav: the file ends before the length its header states".into())
        }
        hound::Error::IoError(e) => AudioError::Io(e),
        e => AudioError::Corrupt(format!("wav: {e}")),
    }
}

/// Passes reads through and notes when the source runs out.
struct EndWatch<R> {
    inner: R,
    ended: Rc<Cell<bool>>,
}

impl<R: Read> Read for EndWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.set(true);
        }
        Ok(n)
    }
}

/// Counts the bytes that reach the sink.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Drops the first `skip` bytes written (an encoder's placeholder for a head written already),
/// passes on the rest.
struct SkipFirst<W> {
    inner: W,
    skip: usize,
}

impl<W: Write> Write for SkipFirst<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let dropped = self.skip.min(buf.len());
        self.skip -= dropped;
        if dropped == buf.len() {
            return Ok(dropped);
        }
        Ok(dropped + self.inner.write(&buf[dropped..])?)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

//! The streaming encoder: the same bytes as the whole-buffer encoder, in bounded memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Cursor, Read, Write};
use std::time::Instant;

use dme_audio::{encode, encode_wav_stream, read_wav, AudioError, Format, BLOCK_FRAMES};
use dme_testkit::song::SongSpec;

/// Counts the bytes each thread has allocated and not freed, and the peak of that count, so a
/// test can measure its own allocations while other tests run in parallel threads.
struct ThreadCountingAllocator;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for ThreadCountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: ThreadCountingAllocator = ThreadCountingAllocator;

/// Runs `f` and returns its result and the most bytes it held allocated at once on this thread
/// (allocations made by C libraries such as LAME are not seen).
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, (peak - start) as usize)
}

/// Most memory the streaming encoder may hold while encoding any track: a block of float
/// samples and its encoded bytes (1.2 MiB at [`BLOCK_FRAMES`] for float WAV, the largest), with
/// room to spare. Any encoder that keeps the track, or its output, fails this on
/// [`BOUNDED_TRACK_MINUTES`] by far.
const MAX_STREAMING_BYTES: usize = 3 << 20;

/// Length of the track the memory bound is checked on: 3 minutes are 64 MB of float samples and
/// still 7.2 MB as MP3 (the smallest output, 2.3 times [`MAX_STREAMING_BYTES`]), and take about
/// a minute in a debug build. `DME_BOUNDED_TRACK_MINUTES` sets another length, e.g. 20 in a
/// release build to measure encoding speed.
const BOUNDED_TRACK_MINUTES: u64 = 3;

/// A stored track: planar stereo at 44.1 kHz, as dme's float WAV.
fn stored(left: &[f32], right: &[f32]) -> Vec<u8> {
    encode(left, right, 44_100, Format::Wav32f).unwrap()
}

/// Streams `source` to `format`, opening it as often as the encoder asks.
fn stream(source: &[u8], format: Format) -> Result<Vec<u8>, AudioError> {
    let mut out = Vec::new();
    let written = encode_wav_stream(|| Ok(source), format, &mut out)?;
    assert_eq!(written, out.len() as u64);
    Ok(out)
}

/// What the whole-buffer encoder makes of the same stored file.
fn whole(source: &[u8], format: Format) -> Vec<u8> {
    let (audio, rate) = read_wav(source).unwrap();
    encode(&audio.left, &audio.right, rate, format).unwrap()
}

#[test]
fn a_95_second_song_streams_to_exactly_the_whole_buffer_bytes_in_every_format() {
    let song = SongSpec::new(95.0, 44_100, 7).render();
    let (mut left, mut right) = (song.left, song.right);
    // Samples the 16-bit formats must clip, in the middle of a block.
    left[BLOCK_FRAMES + 10] = 1.5;
    right[3 * BLOCK_FRAMES + 17] = -2.0;
    assert!(left.len() > 50 * BLOCK_FRAMES);
    let source = stored(&left, &right);
    for format in Format::ALL {
        let started = Instant::now();
        let streamed = stream(&source, format).unwrap();
        eprintln!(
            "{format}: {} bytes streamed in {:.1} s",
            streamed.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            streamed == whole(&source, format),
            "{format}: streamed bytes differ"
        );
    }
}

#[test]
fn short_and_block_edge_lengths_and_16_bit_sources_match_too() {
    for frames in [0, 1, 4095, 4097, BLOCK_FRAMES, BLOCK_FRAMES + 1] {
        let left: Vec<f32> = (0..frames).map(|i| (i as f32 * 0.01).sin() * 0.8).collect();
        let right: Vec<f32> = (0..frames)
            .map(|i| (i as f32 * 0.003).cos() * 0.5)
            .collect();
        let float = stored(&left, &right);
        let int16 = encode(&left, &right, 44_100, Format::Wav16).unwrap();
        for source in [&float, &int16] {
            for format in Format::ALL {
                assert!(
                    stream(source, format).unwrap() == whole(source, format),
                    "{format}, {frames} frames"
                );
            }
        }
    }
}

#[test]
fn bad_sources_and_failing_sinks_are_errors() {
    let left: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.01).sin()).collect();
    let source = stored(&left, &left);
    // Cut short of the length its header states.
    let truncated = &source[..source.len() - 100];
    for format in Format::ALL {
        assert!(
            matches!(stream(truncated, format), Err(AudioError::Corrupt(_))),
            "{format}: {:?}",
            stream(truncated, format).map(|b| b.len())
        );
    }
    assert!(matches!(
        stream(b"not a wav at all", Format::Wav16),
        Err(AudioError::Corrupt(_))
    ));
    // A source that is different the second time it is read.
    let other = stored(&left[..9_999], &left[..9_999]);
    let mut opened = 0;
    let changing = encode_wav_stream(
        || {
            opened += 1;
            Ok(if opened == 1 { &source[..] } else { &other[..] })
        },
        Format::Flac,
        io::sink(),
    );
    assert!(matches!(changing, Err(AudioError::Corrupt(_))));
    // A source whose connection drops is an I/O failure, not a corrupt file.
    let dropped = encode_wav_stream(
        || Ok(Cursor::new(&source[..1000]).chain(FailingReader)),
        Format::Wav16,
        io::sink(),
    );
    assert!(matches!(dropped, Err(AudioError::Io(_))), "{dropped:?}");
    let full_disk = encode_wav_stream(|| Ok(&source[..]), Format::Mp3, FailingWriter);
    assert!(matches!(full_disk, Err(AudioError::Io(_))));
}

struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::ConnectionReset.into())
    }
}

struct FailingWriter;

impl Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::StorageFull.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A float WAV of `frames` frames made up while it is read: nothing of it exists beforehand.
struct GeneratedWav {
    header: Cursor<Vec<u8>>,
    frames: u64,
    /// Next sample (interleaved index) to make.
    next: u64,
    /// The bytes of a sample that did not fit the caller's buffer.
    carry: Cursor<[u8; 4]>,
}

impl GeneratedWav {
    fn new(frames: u64) -> GeneratedWav {
        // The header of an empty file, with the length patched in.
        let mut header = stored(&[], &[]);
        let data_len = (frames * 8) as u32;
        let end = header.len();
        let riff_len = end as u32 - 8 + data_len;
        header[4..8].copy_from_slice(&riff_len.to_le_bytes());
        header[end - 4..].copy_from_slice(&data_len.to_le_bytes());
        GeneratedWav {
            header: Cursor::new(header),
            frames,
            next: 0,
            carry: Cursor::new([0; 4]),
        }
    }

    /// Sample `i`: two tones and some noise, so the encoders have real work.
    fn sample(i: u64) -> f32 {
        let t = (i / 2 % 441_000) as f32 / 44_100.0;
        let noise = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / (1u64 << 24) as f32;
        (t * 220.0 * std::f32::consts::TAU).sin() * 0.4
            + (t * 331.0 * std::f32::consts::TAU).sin() * 0.2
            + (noise - 0.5) * 0.05
    }
}

impl Read for GeneratedWav {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.header.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let mut filled = self.carry.read(buf)?;
        while filled < buf.len() && self.next < 2 * self.frames {
            let bytes = Self::sample(self.next).to_le_bytes();
            self.next += 1;
            let room = &mut buf[filled..];
            if room.len() >= bytes.len() {
                room[..bytes.len()].copy_from_slice(&bytes);
                filled += bytes.len();
            } else {
                self.carry = Cursor::new(bytes);
                filled += self.carry.read(room)?;
            }
        }
        Ok(filled)
    }
}

/// Counts what it is given and keeps nothing.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_long_track_streams_in_bounded_memory_in_every_format() {
    let minutes = std::env::var("DME_BOUNDED_TRACK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(BOUNDED_TRACK_MINUTES);
    let frames = minutes * 60 * 44_100;
    for format in Format::ALL {
        let started = Instant::now();
        let (written, peak) = peak_allocation(|| {
            let mut sink = CountingSink(0);
            let written =
                encode_wav_stream(|| Ok(GeneratedWav::new(frames)), format, &mut sink).unwrap();
            assert_eq!(written, sink.0);
            written
        });
        eprintln!(
            "{format}: {minutes} min -> {:.1} MB in {:.1} s, peak {:.2} MiB allocated",
            written as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            peak as f64 / f64::from(1 << 20)
        );
        assert!(
            peak < MAX_STREAMING_BYTES,
            "{format}: {peak} bytes held at once"
        );
        match format {
            Format::Wav16 => assert_eq!(written, 44 + frames * 4),
            Format::Wav32f => assert_eq!(written, 68 + frames * 8),
            // 40 kB/s at 320 kbit/s, give or take the tag and padding frames.
            Format::Mp3 => assert!(
                written.abs_diff(minutes * 60 * 40_000) < 10_000,
                "{written}"
            ),
            // Lossless: more than the MP3, less than the 16-bit WAV.
            Format::Flac => assert!(
                (minutes * 60 * 40_000..frames * 4).contains(&written),
                "{written}"
            ),
        }
    }
}

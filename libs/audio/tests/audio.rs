//! End-to-end tests of dme-audio on files written to a temporary directory (hound for WAV, our
//! own encoders for FLAC and MP3), on the test song generator's music (`dme_testkit::song`)
//! and on the committed OGG Vorbis and AAC fixtures made from it.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use dme_audio::{
    decode_path, encode, probe_path, read_wav, AudioError, Format, Stereo, StereoDecoder,
    MODEL_SAMPLE_RATE,
};
use dme_testkit::song;
use hound::{SampleFormat, WavSpec, WavWriter};
use tempfile::TempDir;

/// Size of a canonical 16-bit PCM WAV header as hound writes it (RIFF + fmt + data headers).
const WAV16_HEADER_LEN: u64 = 44;

/// Write an interleaved WAV with hound.
fn write_wav<S: hound::Sample + Copy>(
    dir: &TempDir,
    name: &str,
    channels: u16,
    rate: u32,
    bits: u16,
    format: SampleFormat,
    interleaved: &[S],
) -> PathBuf {
    let path = dir.path().join(name);
    let spec = WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: format,
    };
    let mut writer = WavWriter::create(&path, spec).unwrap();
    for s in interleaved {
        writer.write_sample(*s).unwrap();
    }
    writer.finalize().unwrap();
    path
}

/// Deterministic pseudo-random i16 samples (a 64-bit LCG), covering the full range.
fn noise_i16(n: usize, seed: u64) -> Vec<i16> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 48) as u16 as i16
        })
        .collect()
}

fn sine(frames: usize, rate: u32, freq: f64, amp: f64) -> Vec<f32> {
    (0..frames)
        .map(|i| (amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as f32)
        .collect()
}

/// Frequency estimated from sign changes over the middle of the signal (edges skipped).
fn zero_crossing_freq(samples: &[f32], rate: u32) -> f64 {
    let edge = samples.len() / 10;
    let middle = &samples[edge..samples.len() - edge];
    let crossings = middle
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    crossings as f64 / 2.0 / (middle.len() as f64 / f64::from(rate))
}

#[test]
fn probes_16bit_stereo_wav_exactly() {
    let dir = TempDir::new().unwrap();
    let frames = 12_345;
    let path = write_wav(
        &dir,
        "a.wav",
        2,
        44_100,
        16,
        SampleFormat::Int,
        &noise_i16(frames * 2, 1),
    );
    let probe = probe_path(&path, Some("wav")).unwrap();
    assert_eq!(probe.codec, "pcm_s16le");
    assert_eq!(probe.container, "wav");
    assert_eq!(probe.sample_rate, 44_100);
    assert_eq!(probe.channels, 2);
    assert_eq!(probe.frames, frames as u64);
    assert!((probe.duration_s - frames as f64 / 44_100.0).abs() < 1e-12);
    assert_eq!((probe.title, probe.artist), (None, None));
}

#[test]
fn passes_16bit_wav_through_bit_exactly() {
    let dir = TempDir::new().unwrap();
    let mut samples = noise_i16(20_000 * 2, 2);
    samples[0] = i16::MIN;
    samples[1] = i16::MAX;
    let path = write_wav(&dir, "a.wav", 2, 44_100, 16, SampleFormat::Int, &samples);
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(stereo.frames(), 20_000);
    for (i, pair) in samples.chunks(2).enumerate() {
        assert_eq!(stereo.left[i], f32::from(pair[0]) / 32_768.0);
        assert_eq!(stereo.right[i], f32::from(pair[1]) / 32_768.0);
    }
}

#[test]
fn passes_24bit_and_float_wav_through_exactly() {
    let dir = TempDir::new().unwrap();
    let ints: Vec<i32> = noise_i16(5_000 * 2, 3)
        .iter()
        .map(|s| i32::from(*s) * 256 + 77)
        .collect();
    let path = write_wav(&dir, "a24.wav", 2, 44_100, 24, SampleFormat::Int, &ints);
    let probe = probe_path(&path, None).unwrap();
    assert_eq!((probe.codec.as_str(), probe.frames), ("pcm_s24le", 5_000));
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    for (i, pair) in ints.chunks(2).enumerate() {
        assert_eq!(stereo.left[i], pair[0] as f32 / 8_388_608.0);
        assert_eq!(stereo.right[i], pair[1] as f32 / 8_388_608.0);
    }

    let floats: Vec<f32> = ints.iter().map(|s| *s as f32 / 9_000_000.0).collect();
    let path = write_wav(&dir, "f32.wav", 2, 44_100, 32, SampleFormat::Float, &floats);
    assert_eq!(probe_path(&path, None).unwrap().codec, "pcm_f32le");
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    for (i, pair) in floats.chunks(2).enumerate() {
        assert_eq!((stereo.left[i], stereo.right[i]), (pair[0], pair[1]));
    }
}

#[test]
fn duplicates_mono_to_both_channels() {
    let dir = TempDir::new().unwrap();
    let samples = noise_i16(7_000, 4);
    let path = write_wav(&dir, "mono.wav", 1, 44_100, 16, SampleFormat::Int, &samples);
    assert_eq!(probe_path(&path, None).unwrap().channels, 1);
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(stereo.left, stereo.right);
    let expected: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32_768.0).collect();
    assert_eq!(stereo.left, expected);
}

#[test]
fn downmixes_six_channels_itu_style() {
    // hound writes a WAVE_FORMAT_EXTENSIBLE mask for the first six positions:
    // FL FR FC LFE BL BR.
    let dir = TempDir::new().unwrap();
    let levels = [0.1_f32, 0.2, 0.3, 0.9, 0.05, -0.15];
    let frames = 3_000;
    let interleaved: Vec<f32> = (0..frames).flat_map(|_| levels).collect();
    let path = write_wav(
        &dir,
        "51.wav",
        6,
        44_100,
        32,
        SampleFormat::Float,
        &interleaved,
    );
    assert_eq!(probe_path(&path, None).unwrap().channels, 6);
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(stereo.frames(), frames);
    let g = std::f32::consts::FRAC_1_SQRT_2;
    let norm = 1.0 + 2.0 * g;
    let left = (levels[0] + g * levels[2] + g * levels[4]) / norm;
    let right = (levels[1] + g * levels[2] + g * levels[5]) / norm;
    assert!(
        stereo.left.iter().all(|s| (s - left).abs() < 1e-6),
        "{} vs {left}",
        stereo.left[0]
    );
    assert!(
        stereo.right.iter().all(|s| (s - right).abs() < 1e-6),
        "{} vs {right}",
        stereo.right[0]
    );
}

#[test]
fn resamples_96k_six_channel_24bit() {
    let dir = TempDir::new().unwrap();
    let frames = 96_000;
    let tone = sine(frames, 96_000, 440.0, 0.5);
    // The tone on the front left only, 24-bit.
    let interleaved: Vec<i32> = tone
        .iter()
        .flat_map(|s| {
            let v = (f64::from(*s) * 8_388_607.0) as i32;
            [v, 0, 0, 0, 0, 0]
        })
        .collect();
    let path = write_wav(
        &dir,
        "96k.wav",
        6,
        96_000,
        24,
        SampleFormat::Int,
        &interleaved,
    );
    let probe = probe_path(&path, None).unwrap();
    assert_eq!(
        (probe.sample_rate, probe.channels, probe.frames),
        (96_000, 6, frames as u64)
    );
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(stereo.frames(), 44_100);
    assert!((zero_crossing_freq(&stereo.left, 44_100) - 440.0).abs() < 3.0);
    assert!(stereo.right.iter().all(|s| s.abs() < 1e-6));
}

#[test]
fn resamples_48k_to_44k_keeping_pitch() {
    let dir = TempDir::new().unwrap();
    let frames = 48_000 * 2;
    let tone = sine(frames, 48_000, 1_000.0, 0.5);
    let interleaved: Vec<i16> = tone
        .iter()
        .flat_map(|s| [(s * 32_767.0) as i16, (-s * 32_767.0) as i16])
        .collect();
    let path = write_wav(
        &dir,
        "48k.wav",
        2,
        48_000,
        16,
        SampleFormat::Int,
        &interleaved,
    );
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    let expected = frames as f64 * 44_100.0 / 48_000.0;
    assert!(
        (stereo.frames() as f64 - expected).abs() <= 2.0,
        "{} vs {expected}",
        stereo.frames()
    );
    let freq = zero_crossing_freq(&stereo.left, 44_100);
    assert!((freq - 1_000.0).abs() < 2.0, "left at {freq} Hz");
    assert!((zero_crossing_freq(&stereo.right, 44_100) - 1_000.0).abs() < 2.0);
}

#[test]
fn upsamples_8k_mono() {
    let dir = TempDir::new().unwrap();
    let frames = 8_000 * 3;
    let tone = sine(frames, 8_000, 440.0, 0.5);
    let samples: Vec<i16> = tone.iter().map(|s| (s * 32_767.0) as i16).collect();
    let path = write_wav(&dir, "8k.wav", 1, 8_000, 16, SampleFormat::Int, &samples);
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(stereo.frames(), 44_100 * 3);
    assert_eq!(stereo.left, stereo.right);
    assert!((zero_crossing_freq(&stereo.left, 44_100) - 440.0).abs() < 2.0);
}

#[test]
fn streaming_blocks_match_whole_file_decode() {
    let dir = TempDir::new().unwrap();
    let frames = 48_000;
    let tone = sine(frames, 48_000, 300.0, 0.3);
    let interleaved: Vec<f32> = tone.iter().flat_map(|s| [*s, *s * 0.5]).collect();
    let path = write_wav(
        &dir,
        "s.wav",
        2,
        48_000,
        32,
        SampleFormat::Float,
        &interleaved,
    );
    let whole = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    let mut decoder = StereoDecoder::open(&path, Some("wav"), MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(decoder.probe().sample_rate, 48_000);
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut blocks = 0;
    while let Some(block) = decoder.next_block().unwrap() {
        assert_eq!(block.left.len(), block.right.len());
        assert!(!block.left.is_empty());
        left.extend(block.left);
        right.extend(block.right);
        blocks += 1;
    }
    assert!(blocks > 1);
    assert_eq!((left, right), (whole.left, whole.right));
    assert_eq!(decoder.skipped_packets(), 0);
    assert!(decoder.next_block().unwrap().is_none());
}

#[test]
fn streaming_works_in_bounded_blocks() {
    // A minute at 48 kHz: every block must stay small whatever the file length, so the
    // decoder never holds the file in memory.
    let dir = TempDir::new().unwrap();
    let tone = sine(48_000 * 60, 48_000, 220.0, 0.25);
    let interleaved: Vec<i16> = tone
        .iter()
        .flat_map(|s| [(s * 32_767.0) as i16; 2])
        .collect();
    let path = write_wav(
        &dir,
        "long.wav",
        2,
        48_000,
        16,
        SampleFormat::Int,
        &interleaved,
    );
    for target in [48_000, MODEL_SAMPLE_RATE] {
        let mut decoder = StereoDecoder::open(&path, None, target).unwrap();
        let (mut total, mut largest) = (0, 0);
        while let Some(block) = decoder.next_block().unwrap() {
            total += block.frames();
            largest = largest.max(block.frames());
        }
        assert_eq!(total as u64, 60 * u64::from(target));
        assert!(
            largest <= 16_384,
            "block of {largest} frames at {target} Hz"
        );
    }
}

#[test]
fn wav32f_round_trip_is_exact() {
    let left = sine(10_000, 44_100, 123.0, 0.9);
    let mut right = sine(10_000, 44_100, 321.0, 1.5); // out of range survives float WAV
    right[5] = -3.25;
    let bytes = encode(&left, &right, 44_100, Format::Wav32f).unwrap();
    let (stereo, rate) = read_wav(&bytes).unwrap();
    assert_eq!(rate, 44_100);
    assert_eq!((stereo.left, stereo.right), (left, right));
}

#[test]
fn wav16_round_trip_within_one_lsb() {
    let left = sine(10_000, 44_100, 123.0, 0.99);
    let right = sine(10_000, 44_100, 321.0, 0.5);
    let bytes = encode(&left, &right, 48_000, Format::Wav16).unwrap();
    let (stereo, rate) = read_wav(&bytes).unwrap();
    assert_eq!(rate, 48_000);
    for (a, b) in stereo
        .left
        .iter()
        .zip(&left)
        .chain(stereo.right.iter().zip(&right))
    {
        assert!((a - b).abs() <= 1.0 / 32_768.0);
    }
    // The file is also a normal WAV for symphonia.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("w16.wav");
    std::fs::write(&path, &bytes).unwrap();
    let decoded = decode_path(&path, None, 48_000).unwrap();
    assert_eq!(decoded, stereo);
}

#[test]
fn flac_encode_then_decode_within_one_lsb() {
    let frames = 44_100 * 2 + 17;
    let left = sine(frames, 44_100, 440.0, 0.7);
    let right = sine(frames, 44_100, 660.0, 0.4);
    let bytes = encode(&left, &right, 44_100, Format::Flac).unwrap();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("x.flac");
    std::fs::write(&path, &bytes).unwrap();
    let probe = probe_path(&path, Some("flac")).unwrap();
    assert_eq!(
        (probe.codec.as_str(), probe.container.as_str(), probe.frames),
        ("flac", "flac", frames as u64)
    );
    let stereo = decode_path(&path, Some("flac"), MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(stereo.frames(), frames);
    for (a, b) in stereo
        .left
        .iter()
        .zip(&left)
        .chain(stereo.right.iter().zip(&right))
    {
        assert!((a - b).abs() <= 1.0 / 32_768.0);
    }
}

#[test]
fn mp3_encode_then_decode_keeps_length_and_pitch() {
    let frames = 44_100 * 3;
    let left = sine(frames, 44_100, 1_000.0, 0.5);
    let right = sine(frames, 44_100, 500.0, 0.5);
    let bytes = encode(&left, &right, 44_100, Format::Mp3).unwrap();
    // 320 kbit/s for 3 s is 120 kB.
    assert!(
        (110_000..=130_000).contains(&bytes.len()),
        "{} bytes",
        bytes.len()
    );
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("x.mp3");
    std::fs::write(&path, &bytes).unwrap();
    let probe = probe_path(&path, None).unwrap();
    assert_eq!(
        (probe.codec.as_str(), probe.container.as_str()),
        ("mp3", "mp3")
    );
    let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
    println!(
        "mp3 round trip: {frames} frames in, probe {} frames, decoded {}",
        probe.frames,
        stereo.frames()
    );
    // The brief allows one MPEG frame plus decoder delay (~3000 frames) of slack, but the LAME
    // tag's delay and padding are trimmed, so the length comes back exactly.
    assert_eq!(stereo.frames(), frames);
    assert_eq!(probe.frames, frames as u64);
    assert!((zero_crossing_freq(&stereo.left, 44_100) - 1_000.0).abs() < 2.0);
    assert!((zero_crossing_freq(&stereo.right, 44_100) - 500.0).abs() < 2.0);
    // Gapless trimming lines the decoded audio up with the input.
    let error: f64 = stereo.left[4_410..frames - 4_410]
        .iter()
        .zip(&left[4_410..])
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        / (frames - 8_820) as f64;
    assert!(error.sqrt() < 0.01, "rms error {}", error.sqrt());
}

/// An ID3v2.3 tag with one TIT2 frame and `padding` zero bytes.
fn id3v2_tag(title: &str, padding: usize) -> Vec<u8> {
    let mut frame = b"TIT2".to_vec();
    frame.extend_from_slice(&(title.len() as u32 + 1).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0]); // flags, then ISO-8859-1 encoding byte
    frame.extend_from_slice(title.as_bytes());
    let size = frame.len() + padding;
    let syncsafe = [
        (size >> 21) as u8 & 0x7F,
        (size >> 14) as u8 & 0x7F,
        (size >> 7) as u8 & 0x7F,
        size as u8 & 0x7F,
    ];
    let mut tag = b"ID3\x03\x00\x00".to_vec();
    tag.extend_from_slice(&syncsafe);
    tag.extend_from_slice(&frame);
    tag.resize(tag.len() + padding, 0);
    tag
}

#[test]
fn mp3_with_big_id3v2_and_garbage_in_the_middle() {
    let frames = 44_100 * 4;
    let left = sine(frames, 44_100, 1_000.0, 0.5);
    let mp3 = encode(&left, &left, 44_100, Format::Mp3).unwrap();
    let mut file = id3v2_tag("Garbage Test", 400_000);
    let middle = mp3.len() / 2;
    file.extend_from_slice(&mp3[..middle]);
    // Junk with fake frame syncs sprinkled through it.
    let junk: Vec<u8> = noise_i16(3_000, 9)
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            if i % 97 == 0 {
                [0xFF, 0xFB]
            } else {
                s.to_le_bytes()
            }
        })
        .collect();
    file.extend_from_slice(&junk);
    file.extend_from_slice(&mp3[middle..]);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("garbage.mp3");
    std::fs::write(&path, &file).unwrap();

    let probe = probe_path(&path, Some("mp3")).unwrap();
    assert_eq!(probe.title.as_deref(), Some("Garbage Test"));
    assert_eq!(
        (probe.codec.as_str(), probe.sample_rate, probe.channels),
        ("mp3", 44_100, 2)
    );
    let mut decoder = StereoDecoder::open(&path, Some("mp3"), MODEL_SAMPLE_RATE).unwrap();
    let mut decoded = 0;
    while let Some(block) = decoder.next_block().unwrap() {
        decoded += block.frames();
    }
    println!(
        "garbage mp3: {decoded} frames decoded, {} packets skipped",
        decoder.skipped_packets()
    );
    // Everything before and after the junk survives; the false frames synced inside the junk
    // (and the frame it was spliced into, and at most a couple of neighbours that borrow its bit
    // reservoir) are replaced by silence of their duration, so the stream is exactly as long as
    // the probe said.
    let skipped = decoder.skipped_packets() as usize;
    assert!(skipped > 0);
    assert_eq!(decoded as u64, probe.frames, "decoded vs probed length");
    assert!(
        decoded + 3 * 1152 >= frames && decoded <= frames + skipped * 1152,
        "{decoded} vs {frames} with {skipped} packets concealed"
    );
}

#[test]
fn reads_id3v1_when_there_is_no_id3v2() {
    let left = sine(44_100, 44_100, 440.0, 0.5);
    let mut file = encode(&left, &left, 44_100, Format::Mp3).unwrap();
    let mut tag = [0u8; 128];
    tag[..3].copy_from_slice(b"TAG");
    tag[3..3 + 9].copy_from_slice(b"Old Title");
    tag[33..33 + 10].copy_from_slice(b"Old Artist");
    file.extend_from_slice(&tag);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("v1.mp3");
    std::fs::write(&path, &file).unwrap();
    let probe = probe_path(&path, None).unwrap();
    assert_eq!(probe.title.as_deref(), Some("Old Title"));
    assert_eq!(probe.artist.as_deref(), Some("Old Artist"));
    decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
}

#[test]
fn rejects_text_and_images_as_not_audio() {
    let dir = TempDir::new().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is definitely not a song\n".repeat(100)).unwrap();
    assert!(matches!(
        probe_path(&text, Some("mp3")),
        Err(AudioError::NotAudio(_))
    ));
    assert!(matches!(
        decode_path(&text, None, MODEL_SAMPLE_RATE),
        Err(AudioError::NotAudio(_))
    ));

    // A PNG signature followed by noise that contains MPEG frame syncs.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (i, s) in noise_i16(50_000, 5).iter().enumerate() {
        png.extend_from_slice(&if i % 50 == 0 {
            [0xFF, 0xFB]
        } else {
            s.to_le_bytes()
        });
    }
    let image = dir.path().join("cover.png");
    std::fs::write(&image, &png).unwrap();
    assert!(matches!(
        probe_path(&image, None),
        Err(AudioError::NotAudio(_))
    ));
}

#[test]
fn zero_length_encodes_probe_as_empty() {
    let dir = TempDir::new().unwrap();
    for format in [Format::Wav16, Format::Wav32f, Format::Mp3] {
        let path = dir
            .path()
            .join(format!("empty-{}.{}", format.as_str(), format.extension()));
        std::fs::write(&path, encode(&[], &[], 44_100, format).unwrap()).unwrap();
        let probe = probe_path(&path, None).unwrap();
        assert_eq!(
            (probe.frames, probe.sample_rate, probe.channels),
            (0, 44_100, 2),
            "{format}"
        );
        assert!(matches!(
            decode_path(&path, None, MODEL_SAMPLE_RATE),
            Err(AudioError::NoSamples)
        ));
    }
    // A FLAC with STREAMINFO and no frames is valid, but symphonia 0.5 cannot open it (it looks
    // for a first frame); it must still fail cleanly.
    let path = dir.path().join("empty.flac");
    let bytes = encode(&[], &[], 44_100, Format::Flac).unwrap();
    assert_eq!(&bytes[..4], b"fLaC");
    std::fs::write(&path, bytes).unwrap();
    assert!(probe_path(&path, None).is_err());
}

#[test]
fn empty_file_is_empty() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("empty.wav");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        probe_path(&path, Some("wav")),
        Err(AudioError::Empty)
    ));
    assert!(matches!(
        decode_path(&path, None, MODEL_SAMPLE_RATE),
        Err(AudioError::Empty)
    ));
    assert!(matches!(
        StereoDecoder::open(&path, None, MODEL_SAMPLE_RATE),
        Err(AudioError::Empty)
    ));
}

#[test]
fn missing_file_is_io_error() {
    let dir = TempDir::new().unwrap();
    let result = probe_path(&dir.path().join("nope.wav"), None);
    assert!(matches!(result, Err(AudioError::Io(_))));
}

#[test]
fn wav_without_samples_has_no_samples() {
    let dir = TempDir::new().unwrap();
    let path = write_wav::<i16>(&dir, "silent.wav", 2, 44_100, 16, SampleFormat::Int, &[]);
    assert_eq!(probe_path(&path, None).unwrap().frames, 0);
    assert!(matches!(
        decode_path(&path, None, MODEL_SAMPLE_RATE),
        Err(AudioError::NoSamples)
    ));
}

/// Write a 16-bit stereo WAV, cut it to `keep_bytes` of data (possibly mid-frame) and set the
/// data chunk size field to `declared` (and the RIFF size to match the lie when `Some`).
fn lying_wav(dir: &TempDir, name: &str, keep_bytes: u64, declared: u32) -> (PathBuf, Vec<i16>) {
    let samples = noise_i16(10_000 * 2, 6);
    let path = write_wav(dir, name, 2, 44_100, 16, SampleFormat::Int, &samples);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[36..40], b"data");
    bytes.truncate((WAV16_HEADER_LEN + keep_bytes) as usize);
    bytes[40..44].copy_from_slice(&declared.to_le_bytes());
    let riff = if declared == u32::MAX {
        u32::MAX
    } else {
        declared.saturating_add(36)
    };
    bytes[4..8].copy_from_slice(&riff.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    (path, samples)
}

#[test]
fn truncated_wav_with_lying_header_decodes_what_is_there() {
    let dir = TempDir::new().unwrap();
    // Header says 10 000 frames; 6 001.5 frames of data are there.
    let keep = 6_001 * 4 + 2;
    for (name, declared) in [
        ("long.wav", 40_000u32),
        ("streamed0.wav", 0),
        ("streamedff.wav", u32::MAX),
    ] {
        let (path, samples) = lying_wav(&dir, name, keep, declared);
        let probe = probe_path(&path, None).unwrap();
        assert_eq!(probe.frames, 6_001, "{name}");
        let stereo = decode_path(&path, None, MODEL_SAMPLE_RATE).unwrap();
        assert_eq!(stereo.frames(), 6_001, "{name}");
        for (i, pair) in samples.chunks(2).take(6_001).enumerate() {
            assert_eq!(stereo.left[i], f32::from(pair[0]) / 32_768.0);
            assert_eq!(stereo.right[i], f32::from(pair[1]) / 32_768.0);
        }
    }
}

#[test]
fn damaged_files_never_panic() {
    // Truncations and byte corruptions of every format we write must give Ok or a clean error.
    let left = sine(20_000, 44_100, 440.0, 0.5);
    let dir = TempDir::new().unwrap();
    let mut state: u64 = 42;
    for format in Format::ALL {
        let clean = encode(&left, &left, 44_100, format).unwrap();
        for round in 0..16 {
            let mut bytes = clean.clone();
            if round % 2 == 0 {
                bytes.truncate(bytes.len() * (round + 1) / 17);
            }
            for _ in 0..(round * 20) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let at = (state >> 33) as usize % bytes.len().max(1);
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= (state >> 20) as u8 | 1;
                }
            }
            let path = dir.path().join(format!("d{round}.{}", format.extension()));
            std::fs::write(&path, &bytes).unwrap();
            let _ = probe_path(&path, Some(format.extension()));
            let _ = decode_path(&path, Some(format.extension()), MODEL_SAMPLE_RATE);
            // Resampling garbage (NaN, huge floats) must not trip the resampler either.
            let _ = decode_path(&path, None, 48_000);
        }
    }
}

#[test]
fn unsupported_target_rate_is_rejected() {
    let dir = TempDir::new().unwrap();
    let path = write_wav(
        &dir,
        "a.wav",
        2,
        44_100,
        16,
        SampleFormat::Int,
        &noise_i16(200, 7),
    );
    assert!(matches!(
        decode_path(&path, None, 0),
        Err(AudioError::UnsupportedCodec(_))
    ));
}

/// Correlation a lossy decode of the generated song must keep with the generator's samples:
/// MP3 at 320 kbit/s, Vorbis and AAC at about 110 kbit/s measure 0.99 and up; another song
/// scores below 0.5.
const LOSSY_CORRELATION: f64 = 0.95;

/// Decodes `path` block by block at `rate`; returns the audio and the packets concealed.
fn decode_streaming(path: &Path, ext: &str, rate: u32) -> (Stereo, u64) {
    let mut decoder = StereoDecoder::open(path, Some(ext), rate).unwrap();
    let mut audio = Stereo::default();
    while let Some(block) = decoder.next_block().unwrap() {
        audio.left.extend(block.left);
        audio.right.extend(block.right);
    }
    (audio, decoder.skipped_packets())
}

/// The generated test song (30 s, 44.1 kHz stereo) as dme's 320 kbit/s MP3 behind an ID3v2
/// tag: probed exactly (the LAME tag's delay and padding are trimmed), tags read, and decoded
/// in blocks to music that lines up with the generator's, sample for sample.
#[test]
fn generated_song_mp3_probes_decodes_and_matches_the_generator() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("song.mp3");
    std::fs::write(&path, song::test_song_mp3()).unwrap();
    let probe = probe_path(&path, Some("mp3")).unwrap();
    assert_eq!(
        (probe.codec.as_str(), probe.container.as_str()),
        ("mp3", "mp3")
    );
    assert_eq!((probe.sample_rate, probe.channels), (44_100, 2));
    assert_eq!(probe.frames, song::TEST_SONG.frames() as u64);
    assert!(
        (probe.duration_s - 30.0).abs() < 1e-9,
        "{}",
        probe.duration_s
    );
    assert_eq!(probe.title.as_deref(), Some(song::TEST_SONG_TITLE));
    assert_eq!(probe.artist.as_deref(), Some(song::TEST_SONG_ARTIST));

    let (decoded, skipped) = decode_streaming(&path, "mp3", MODEL_SAMPLE_RATE);
    assert_eq!(skipped, 0);
    assert_eq!(decoded.frames() as u64, probe.frames);
    let reference = song::test_song();
    for (channel, (got, want)) in [
        (&decoded.left, &reference.left),
        (&decoded.right, &reference.right),
    ]
    .into_iter()
    .enumerate()
    {
        let a = song::align(got, want, 2_048);
        println!("test song mp3, channel {channel}: {a:?}");
        assert_eq!(a.lag, 0, "gapless decoding lines up exactly");
        assert!(
            a.correlation > LOSSY_CORRELATION,
            "channel {channel}: {a:?}"
        );
    }
}

/// The generated song through dme's lossless encoders at an unusual rate: WAV and FLAC probe to
/// the right length, rate and channels, and decode to the generator's samples within one 16-bit
/// step (float WAV exactly).
#[test]
fn generated_song_wav_and_flac_decode_to_the_generator() {
    let spec = song::SongSpec::new(4.0, 48_000, 4);
    let reference = spec.render();
    let dir = TempDir::new().unwrap();
    for (format, codec, tolerance) in [
        (Format::Wav16, "pcm_s16le", 1.0 / 32_768.0),
        (Format::Wav32f, "pcm_f32le", 0.0),
        (Format::Flac, "flac", 1.0 / 32_768.0),
    ] {
        let path = dir
            .path()
            .join(format!("song-{}.{}", format.as_str(), format.extension()));
        reference.write(&path, format).unwrap();
        let probe = probe_path(&path, None).unwrap();
        assert_eq!(probe.codec, codec);
        assert_eq!(
            (probe.sample_rate, probe.channels, probe.frames),
            (48_000, 2, spec.frames() as u64),
            "{format}"
        );
        let (decoded, skipped) = decode_streaming(&path, format.extension(), 48_000);
        assert_eq!(skipped, 0);
        assert_eq!(decoded.frames(), spec.frames(), "{format}");
        let error = decoded
            .left
            .iter()
            .zip(&reference.left)
            .chain(decoded.right.iter().zip(&reference.right))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(error <= tolerance, "{format}: max error {error}");
    }
}

/// The committed OGG Vorbis and AAC/M4A files (made by `scripts/make_fixtures.sh` from the
/// generator): container, codec, rate, channels, length and tags, and decoded music that
/// correlates with the generator's at the file's own rate; resampled to the model rate, the
/// length scales with the rate.
#[test]
fn committed_vorbis_and_aac_fixtures_decode_to_the_generated_song() {
    for fixture in dme_testkit::fixtures::ALL {
        let path = fixture.path();
        let ext = path.extension().unwrap().to_str().unwrap().to_string();
        let spec = fixture.spec;
        let probe = probe_path(&path, Some(&ext)).unwrap();
        println!("{}: {probe:?}", fixture.file);
        assert_eq!(probe.codec, fixture.codec, "{}", fixture.file);
        assert_eq!(probe.container, fixture.container, "{}", fixture.file);
        assert_eq!(
            (probe.sample_rate, probe.channels),
            (spec.sample_rate, 2),
            "{}",
            fixture.file
        );
        assert_eq!(probe.title.as_deref(), Some(fixture.title));
        assert_eq!(probe.artist.as_deref(), Some(fixture.artist));
        // Encoders pad to whole packets (AAC: 1024 frames, plus its priming) unless the
        // container says how much to drop.
        assert!(
            probe.frames.abs_diff(spec.frames() as u64) <= 2 * 1024,
            "{}: {} frames, encoded {}",
            fixture.file,
            probe.frames,
            spec.frames()
        );

        let (decoded, skipped) = decode_streaming(&path, &ext, spec.sample_rate);
        assert_eq!(skipped, 0, "{}", fixture.file);
        // AAC: the probe takes the MP4's frame count, the decoder gives whole 1024-frame
        // packets (145 408 decoded vs 145 024 stated for this file); elsewhere they agree.
        let slack = if fixture.codec == "aac" { 1024 } else { 0 };
        assert!(
            (decoded.frames() as u64).abs_diff(probe.frames) <= slack,
            "{}: decoded {} frames, probed {}",
            fixture.file,
            decoded.frames(),
            probe.frames
        );
        let reference = spec.render();
        for (got, want) in [
            (&decoded.left, &reference.left),
            (&decoded.right, &reference.right),
        ] {
            let a = song::align(got, want, 4_096);
            println!("{}: {a:?}", fixture.file);
            assert!(a.lag.unsigned_abs() <= 2 * 1024, "{}: {a:?}", fixture.file);
            assert!(a.correlation > LOSSY_CORRELATION, "{}: {a:?}", fixture.file);
        }

        let resampled = decode_path(&path, Some(&ext), MODEL_SAMPLE_RATE).unwrap();
        let expected = (decoded.frames() as f64 * f64::from(MODEL_SAMPLE_RATE)
            / f64::from(spec.sample_rate))
        .round() as usize;
        assert_eq!(resampled.frames(), expected, "{}", fixture.file);
    }
}

/// Found by fuzzing (`fuzz/regressions/probe_decode/resampler-overshoot-*`): a float WAV whose
/// samples jump between the clamp limits rings past them in the resampler's low-pass, so the
/// limit must be applied to the resampled output too.
#[test]
fn resampled_output_stays_within_the_sample_limit() {
    const LIMIT: f32 = 10_000.0;
    // A square wave at the limit, at 48 kHz: every edge rings after resampling to 44.1 kHz.
    let square: Vec<f32> = (0..48_000)
        .map(|i| if (i / 37) % 2 == 0 { LIMIT } else { -LIMIT })
        .collect();
    let dir = TempDir::new().unwrap();
    let path = write_wav(
        &dir,
        "square.wav",
        1,
        48_000,
        32,
        SampleFormat::Float,
        &square,
    );
    let decoded = decode_path(&path, Some("wav"), MODEL_SAMPLE_RATE).unwrap();
    let peak = decoded
        .left
        .iter()
        .chain(&decoded.right)
        .fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(peak <= LIMIT, "peak {peak}");
    assert!(
        peak > 0.9 * LIMIT,
        "peak {peak}: the square wave went missing"
    );
}

/// Frames with valid MPEG headers and random payloads inserted between real frames: each one the
/// decoder cannot decode becomes silence of its duration, so the decoded length is exactly the
/// probed length and the audio after the damage keeps its place in time.
#[test]
fn mp3_fake_frames_are_concealed_and_lengths_agree() {
    let left = sine(44_100 * 2, 44_100, 440.0, 0.5);
    let mp3 = encode(&left, &left, 44_100, Format::Mp3).unwrap();
    let at = mp3.len() / 2;
    let mut file = mp3[..at].to_vec();
    for (i, s) in noise_i16(20 * 520, 3).chunks(520).enumerate() {
        // MPEG-1 layer III, 320 kbit/s, 44.1 kHz, no padding: 1044 bytes a frame.
        file.extend_from_slice(&[0xFF, 0xFB, 0xE0, 0x44]);
        file.extend(s.iter().flat_map(|v| v.to_le_bytes()));
        file.extend_from_slice(&[i as u8; 1044 - 4 - 1040]);
    }
    file.extend_from_slice(&mp3[at..]);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("fake.mp3");
    std::fs::write(&path, &file).unwrap();
    let probe = probe_path(&path, Some("mp3")).unwrap();
    let mut decoder = StereoDecoder::open(&path, Some("mp3"), MODEL_SAMPLE_RATE).unwrap();
    let mut decoded = 0u64;
    while let Some(block) = decoder.next_block().unwrap() {
        decoded += block.frames() as u64;
    }
    assert_eq!(decoded, probe.frames);
    assert!(decoded >= left.len() as u64, "{decoded} < {}", left.len());
}

/// Found by fuzzing: an ID3v2 frame whose size field claims 4 GiB made symphonia allocate 4 GiB
/// before reading it. Such a tag is stepped over; the MP3 behind it decodes in full.
#[test]
fn mp3_behind_an_id3v2_tag_with_a_lying_frame_size_decodes() {
    let left = sine(44_100, 44_100, 440.0, 0.5);
    let mp3 = encode(&left, &left, 44_100, Format::Mp3).unwrap();
    let mut tag = id3v2_tag("Lying Size", 16);
    // The TIT2 frame's size field sits right after the 10-byte tag header and its 4-byte id.
    tag[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("lying.mp3");
    std::fs::write(&path, [&tag[..], &mp3].concat()).unwrap();
    let probe = probe_path(&path, Some("mp3")).unwrap();
    assert_eq!(probe.title, None);
    assert_eq!(probe.frames, left.len() as u64);
    let decoded = decode_path(&path, Some("mp3"), MODEL_SAMPLE_RATE).unwrap();
    assert_eq!(decoded.frames(), left.len());
    // Nothing but such a tag is not audio.
    std::fs::write(&path, &tag).unwrap();
    assert!(matches!(
        probe_path(&path, Some("mp3")),
        Err(AudioError::NotAudio(_))
    ));
}

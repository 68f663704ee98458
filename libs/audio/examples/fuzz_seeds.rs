//! Writes the seed files of the `probe_decode` fuzz target (see `fuzz/README.md`): small valid
//! WAV (8/16/24-bit, float, mono to 6 channels, plain and extensible headers, lying sizes), MP3
//! (with and without tags), FLAC, and the first kilobytes of the test song (`dme_testkit::song`)
//! as MP3 and of the committed OGG Vorbis and AAC/M4A fixtures.
//!
//! `cargo run -p dme-audio --example fuzz_seeds -- fuzz/seeds/probe_decode`

use std::path::PathBuf;

use dme_audio::{encode, Format};

fn tone(frames: usize, rate: u32, freq: f32) -> Vec<f32> {
    (0..frames)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
        .collect()
}

/// A WAV through hound, which writes WAVE_FORMAT_EXTENSIBLE headers for more than two channels
/// or more than 16 bits.
fn hound_wav(channels: u16, rate: u32, bits: u16, float: bool, frames: usize) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
        let signal = tone(frames, rate, 440.0);
        for s in &signal {
            for c in 0..channels {
                let v = s * (1.0 - c as f32 * 0.1);
                if float {
                    writer.write_sample(v).unwrap();
                } else {
                    let scale = ((1i64 << (bits - 1)) - 1) as f32;
                    writer.write_sample((v * scale) as i32).unwrap();
                }
            }
        }
        writer.finalize().unwrap();
    }
    cursor.into_inner()
}

fn id3v2(title: &str) -> Vec<u8> {
    let mut frame = b"TIT2".to_vec();
    frame.extend_from_slice(&(title.len() as u32 + 1).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0]);
    frame.extend_from_slice(title.as_bytes());
    let size = frame.len() as u32;
    let mut tag = b"ID3\x03\x00\x00".to_vec();
    tag.extend([21, 14, 7, 0].map(|shift| (size >> shift) as u8 & 0x7F));
    tag.extend(frame);
    tag
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: fuzz_seeds <output folder>"),
    );
    std::fs::create_dir_all(&out).unwrap();
    let write = |name: &str, bytes: &[u8]| std::fs::write(out.join(name), bytes).unwrap();

    let (l, r) = (tone(2_205, 44_100, 440.0), tone(2_205, 44_100, 660.0));
    write(
        "pcm16-stereo-44k.wav",
        &encode(&l, &r, 44_100, Format::Wav16).unwrap(),
    );
    write(
        "float-stereo-44k.wav",
        &encode(&l, &r, 44_100, Format::Wav32f).unwrap(),
    );
    write("pcm8-mono-8k.wav", &hound_wav(1, 8_000, 8, false, 400));
    write(
        "pcm24-stereo-48k.wav",
        &hound_wav(2, 48_000, 24, false, 1_200),
    );
    write(
        "pcm32-stereo-22k.wav",
        &hound_wav(2, 22_050, 32, false, 800),
    );
    write("float-6ch-96k.wav", &hound_wav(6, 96_000, 32, true, 960));
    write("pcm16-4ch-16k.wav", &hound_wav(4, 16_000, 16, false, 400));
    // Streamed and truncated WAVs: sizes 0, 0xFFFF_FFFF and past the end.
    let wav = encode(&l[..441], &r[..441], 44_100, Format::Wav16).unwrap();
    for (name, size) in [
        ("size-zero.wav", 0u32),
        ("size-ones.wav", u32::MAX),
        ("size-past-end.wav", 1 << 20),
    ] {
        let mut w = wav.clone();
        w[4..8].copy_from_slice(&size.to_le_bytes());
        w[40..44].copy_from_slice(&size.to_le_bytes());
        write(name, &w);
    }

    let (l, r) = (tone(4_410, 44_100, 440.0), tone(4_410, 44_100, 550.0));
    let mp3 = encode(&l, &r, 44_100, Format::Mp3).unwrap();
    write("lame-44k.mp3", &mp3);
    write("id3v2-lame-44k.mp3", &[id3v2("Seed"), mp3.clone()].concat());
    let mut v1 = mp3.clone();
    let mut tag = [0u8; 128];
    tag[..3].copy_from_slice(b"TAG");
    tag[3..7].copy_from_slice(b"Seed");
    v1.extend_from_slice(&tag);
    write("id3v1-lame-44k.mp3", &v1);
    let (l, r) = (tone(2_400, 24_000, 300.0), tone(2_400, 24_000, 400.0));
    write(
        "lame-24k.mp3",
        &encode(&l, &r, 24_000, Format::Mp3).unwrap(),
    );
    let (l, r) = (tone(2_205, 44_100, 440.0), tone(2_205, 44_100, 220.0));
    write(
        "stereo-44k.flac",
        &encode(&l, &r, 44_100, Format::Flac).unwrap(),
    );
    let (l, r) = (tone(800, 8_000, 440.0), tone(800, 8_000, 220.0));
    write(
        "stereo-8k.flac",
        &encode(&l, &r, 8_000, Format::Flac).unwrap(),
    );

    // Seeds are kept small so the fuzzer mutates headers and first packets, not bulk audio.
    const HEAD: usize = 12_000;
    let song = dme_testkit::song::test_song_mp3();
    write("song-head.mp3", &song[..song.len().min(HEAD)]);
    for fixture in dme_testkit::fixtures::ALL {
        let bytes = std::fs::read(fixture.path()).unwrap();
        write(
            &format!(
                "{}-head.{}",
                fixture.codec,
                fixture.path().extension().unwrap().to_str().unwrap()
            ),
            &bytes[..bytes.len().min(HEAD)],
        );
    }
    eprintln!("seeds written to {}", out.display());
}

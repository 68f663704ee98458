//! Any bytes as an uploaded file: `dme_audio::probe_path` and a `StereoDecoder` to the model
//! rate must return (never panic, never hang) and every decoded block must be well formed.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dme_audio::{probe_path, StereoDecoder, MODEL_SAMPLE_RATE};
use libfuzzer_sys::fuzz_target;

/// Extension hints, as a client's file name would give them; picked by the input's length so the
/// input stays a plain file (seeds are real audio files) while every hint gets exercised.
const HINTS: &[Option<&str>] = &[
    None,
    Some("wav"),
    Some("mp3"),
    Some("flac"),
    Some("ogg"),
    Some("m4a"),
    Some("aiff"),
    Some("caf"),
    Some("mkv"),
    Some("aac"),
];

/// Output frames decoded per input at most (about 95 s at 44.1 kHz): enough to cross every
/// packet of a seed, small enough that a header claiming hours of 1 kHz audio stays fast.
const MAX_FRAMES: usize = 1 << 22;

/// Largest sample magnitude the decoder promises.
const SAMPLE_LIMIT: f32 = 10_000.0;

fn input_path() -> &'static PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = DIR.get_or_init(|| {
            tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("a temporary folder")
        });
        dir.path().join("input")
    })
}

fuzz_target!(init: dme_fuzz::install_panic_hook(), |data: &[u8]| {
    dme_fuzz::run(|| check(data));
});

fn check(data: &[u8]) {
    let path = input_path();
    std::fs::write(path, data).expect("writing the input file");
    let hint = HINTS[data.len() % HINTS.len()];

    let probed = probe_path(path, hint);
    let Ok(mut decoder) = StereoDecoder::open(path, hint, MODEL_SAMPLE_RATE) else {
        return;
    };
    // Opening probes the same way.
    let probe = decoder.probe().clone();
    assert_eq!(
        probed.ok().as_ref(),
        Some(&probe),
        "probe_path and open disagree"
    );
    assert!(probe.sample_rate > 0 && probe.duration_s.is_finite());

    let mut frames = 0;
    loop {
        match decoder.next_block() {
            Ok(Some(block)) => {
                assert!(!block.is_empty(), "an empty block");
                assert_eq!(block.left.len(), block.right.len(), "ragged channels");
                assert!(
                    block
                        .left
                        .iter()
                        .chain(&block.right)
                        .all(|s| s.is_finite() && s.abs() <= SAMPLE_LIMIT),
                    "a sample out of range"
                );
                frames += block.frames();
                if frames > MAX_FRAMES {
                    return;
                }
            }
            Ok(None) => {
                // Finished stays finished.
                assert!(matches!(decoder.next_block(), Ok(None)));
                return;
            }
            Err(_) => {
                // A failed decoder stays failed.
                assert!(decoder.next_block().is_err());
                return;
            }
        }
    }
}

//! Writes a generated song (`dme_testkit::song`) as a 16-bit WAV, for tools that encode formats
//! dme cannot (see `scripts/make_fixtures.sh`).
//!
//! Usage: `cargo run -p dme-testkit --example write_song -- <seconds> <rate> <seed> <out.wav>`

use std::path::PathBuf;
use std::time::Instant;

use dme_testkit::song::SongSpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [seconds, rate, seed, out] = args.as_slice() else {
        return Err("usage: write_song <seconds> <rate> <seed> <out.wav>".into());
    };
    let spec = SongSpec::new(seconds.parse()?, rate.parse()?, seed.parse()?);
    let started = Instant::now();
    let song = spec.render();
    let rendered = started.elapsed();
    song.write(&PathBuf::from(out), dme_audio::Format::Wav16)?;
    eprintln!(
        "{out}: {} frames at {} Hz, rendered in {:.2} s",
        song.frames(),
        song.sample_rate,
        rendered.as_secs_f64()
    );
    Ok(())
}

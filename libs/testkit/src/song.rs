//! A deterministic song for tests: stereo drums (kick, snare, hi-hat), a bass line, chords and a
//! sung vowel line with vibrato, each placed differently in the stereo field.
//!
//! [`SongSpec`] fixes the length, the sample rate and a seed; [`SongSpec::render`] gives the same
//! samples for the same spec on every run and machine (no clock, no global state: every random
//! choice comes from the seed). The notes are chosen on a musical timeline in seconds, so a song
//! rendered at two rates holds the same music. [`Song::encode`] writes it with dme's own encoders
//! (16-bit WAV, float WAV, FLAC, MP3); [`id3v2_tag`] makes a tag to put in front of an MP3.
//!
//! [`test_song_mp3`] is the song most end-to-end tests upload: 30 s of 44.1 kHz stereo MP3 at
//! 320 kbit/s behind an ID3v2 tag, rendered once per test process.

use std::f64::consts::TAU;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dme_audio::{AudioError, Format};

/// Tempo of every generated song: 120 beats a minute, 4 beats a bar.
const BEATS_PER_MINUTE: f64 = 120.0;

/// Beats in a bar; the chords change once a bar.
const BEATS_PER_BAR: usize = 4;

/// The chord progression, as semitones above the key's root for each bar's chord root, and
/// whether the chord is minor: i - VI - III - VII, the progression of countless pop songs.
const PROGRESSION: [(i32, bool); 4] = [(0, true), (8, false), (3, false), (10, false)];

/// Notes the voice may sing, in semitones above the root: the minor pentatonic scale over two
/// octaves, which sounds consonant over every chord of [`PROGRESSION`].
const VOICE_SCALE: [i32; 10] = [0, 3, 5, 7, 10, 12, 15, 17, 19, 22];

/// Formant centre frequencies and bandwidths (Hz) of five sung vowels (a, e, i, o, u), from
/// the classic Peterson and Barney measurements, rounded.
const VOWELS: [[(f64, f64); 3]; 5] = [
    [(800.0, 80.0), (1150.0, 90.0), (2900.0, 120.0)],
    [(400.0, 60.0), (1600.0, 80.0), (2700.0, 120.0)],
    [(350.0, 50.0), (2300.0, 100.0), (3000.0, 120.0)],
    [(450.0, 70.0), (800.0, 80.0), (2830.0, 100.0)],
    [(325.0, 50.0), (700.0, 60.0), (2530.0, 170.0)],
];

/// Vibrato rate (Hz) and depth (fraction of the pitch): a trained singer's 5.5 Hz, +-1.2 %.
const VIBRATO: (f64, f64) = (5.5, 0.012);

/// Highest partial the voice and bass synthesise: keeps them below every test rate's Nyquist
/// frequency (8 kHz at the lowest rate the tests use, 16 kHz).
const MAX_PARTIAL_HZ: f64 = 7_000.0;

/// Pan of each part, -1 (left) to 1 (right).
mod pan {
    pub const KICK: f64 = 0.0;
    pub const SNARE: f64 = -0.25;
    pub const HIHAT: f64 = 0.55;
    pub const BASS: f64 = 0.05;
    pub const CHORDS: f64 = -0.45;
    pub const VOICE: f64 = 0.2;
}

/// Level of each part: together they peak below full scale (checked by a test below).
mod level {
    pub const KICK: f64 = 0.55;
    pub const SNARE: f64 = 0.30;
    pub const HIHAT: f64 = 0.08;
    pub const BASS: f64 = 0.22;
    pub const CHORDS: f64 = 0.045;
    pub const VOICE: f64 = 0.16;
}

/// What to generate: length, sample rate and seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SongSpec {
    /// Length in seconds.
    pub seconds: f64,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Picks the key, the bass pattern, the drum fills, the melody and its vowels.
    pub seed: u64,
}

/// A rendered song: planar stereo `f32` at `sample_rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Song {
    /// Left channel.
    pub left: Vec<f32>,
    /// Right channel.
    pub right: Vec<f32>,
    /// Sample rate in Hz.
    pub sample_rate: u32,
}

/// The spec of the song most end-to-end tests upload: 30 s at 44.1 kHz.
pub const TEST_SONG: SongSpec = SongSpec {
    seconds: 30.0,
    sample_rate: 44_100,
    seed: 1,
};

/// Title in the ID3v2 tag of [`test_song_mp3`].
pub const TEST_SONG_TITLE: &str = "dme test song";

/// Artist in the ID3v2 tag of [`test_song_mp3`].
pub const TEST_SONG_ARTIST: &str = "dme testkit";

/// [`TEST_SONG`] rendered, once per process.
pub fn test_song() -> &'static Song {
    static SONG: OnceLock<Song> = OnceLock::new();
    SONG.get_or_init(|| TEST_SONG.render())
}

/// [`TEST_SONG`] as a 320 kbit/s MP3 (dme's encoder, with a LAME tag) behind an ID3v2.3 tag
/// naming [`TEST_SONG_TITLE`] and [`TEST_SONG_ARTIST`]; encoded once per process.
pub fn test_song_mp3() -> &'static [u8] {
    static MP3: OnceLock<Vec<u8>> = OnceLock::new();
    MP3.get_or_init(|| {
        let mp3 = test_song()
            .encode(Format::Mp3)
            .expect("the test song encodes");
        [id3v2_tag(TEST_SONG_TITLE, TEST_SONG_ARTIST), mp3].concat()
    })
}

/// `seconds` of stereo 44.1 kHz digital silence as FLAC, encoded as a stream (bounded memory,
/// any length): long songs that cost little to make, upload and decode.
///
/// # Panics
/// When the encoder fails, or the length does not fit a WAV header (over about 6.7 hours).
pub fn silence_flac(seconds: u64) -> Vec<u8> {
    use std::io::Read;
    let frames: u64 = seconds * 44_100;
    let open = || {
        let mut head = dme_audio::encode(&[], &[], 44_100, Format::Wav16).expect("a header");
        let data = u32::try_from(frames * 4).expect("under 4 GiB");
        let end = head.len();
        let riff = end as u32 - 8 + data;
        head[4..8].copy_from_slice(&riff.to_le_bytes());
        head[end - 4..].copy_from_slice(&data.to_le_bytes());
        Ok(std::io::Cursor::new(head).chain(std::io::repeat(0).take(frames * 4)))
    };
    let mut flac = Vec::new();
    dme_audio::encode_wav_stream(open, Format::Flac, &mut flac).expect("a FLAC");
    flac
}

impl SongSpec {
    /// A spec of `seconds` at `sample_rate` Hz with `seed`.
    pub const fn new(seconds: f64, sample_rate: u32, seed: u64) -> SongSpec {
        SongSpec {
            seconds,
            sample_rate,
            seed,
        }
    }

    /// Number of frames: `round(seconds × sample_rate)`.
    pub fn frames(&self) -> usize {
        (self.seconds * f64::from(self.sample_rate)).round() as usize
    }

    /// Renders the song.
    ///
    /// # Panics
    /// When the sample rate is 0 or the length is negative or not finite.
    pub fn render(&self) -> Song {
        assert!(self.sample_rate > 0, "sample rate 0");
        assert!(
            self.seconds.is_finite() && self.seconds >= 0.0,
            "length {} s",
            self.seconds
        );
        let mut mix = Mix::new(self.frames(), self.sample_rate);
        let mut rng = Rng::new(self.seed);
        let key_root = 45 + (rng.next() % 5) as i32; // A2 to C#3 (MIDI)
        let beat = 60.0 / BEATS_PER_MINUTE;
        let bars = (self.seconds / (beat * BEATS_PER_BAR as f64)).ceil() as usize;
        for bar in 0..bars {
            let start = bar as f64 * beat * BEATS_PER_BAR as f64;
            let (degree, minor) = PROGRESSION[bar % PROGRESSION.len()];
            let chord_root = key_root + degree;
            drums(&mut mix, &mut rng, start, beat, bar);
            bass(&mut mix, &mut rng, start, beat, chord_root);
            chord(
                &mut mix,
                start,
                beat * BEATS_PER_BAR as f64,
                chord_root,
                minor,
            );
            voice(&mut mix, &mut rng, start, beat, key_root);
        }
        Song {
            left: mix.left.iter().map(|s| *s as f32).collect(),
            right: mix.right.iter().map(|s| *s as f32).collect(),
            sample_rate: self.sample_rate,
        }
    }
}

impl Song {
    /// Frames per channel.
    pub fn frames(&self) -> usize {
        self.left.len()
    }

    /// The song as a file in `format`, by dme's own encoders.
    ///
    /// # Errors
    /// What [`dme_audio::encode`] returns.
    pub fn encode(&self, format: Format) -> Result<Vec<u8>, AudioError> {
        dme_audio::encode(&self.left, &self.right, self.sample_rate, format)
    }

    /// Writes the song to `path` in `format`.
    ///
    /// # Errors
    /// [`WriteSongError::Encode`] when the encoder fails, [`WriteSongError::Write`] when the
    /// file cannot be written.
    pub fn write(&self, path: &Path, format: Format) -> Result<(), WriteSongError> {
        let bytes = self.encode(format).map_err(WriteSongError::Encode)?;
        std::fs::write(path, bytes).map_err(|source| WriteSongError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Why [`Song::write`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteSongError {
    /// dme's encoder refused the samples.
    #[error("encoding the song")]
    Encode(#[source] AudioError),
    /// The file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
}

/// Frames of the reference compared at each candidate lag by [`align`]: 0.74 s at 44.1 kHz,
/// long enough to hold drums, bass and voice, so only the true lag correlates well.
const ALIGN_WINDOW: usize = 32_768;

/// How a decoded channel lines up with the generator's: see [`align`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    /// Frames the decoded audio runs late (negative: early).
    pub lag: isize,
    /// Normalised correlation over the whole overlap at that lag (1 is identical up to gain).
    pub correlation: f64,
}

/// Finds the lag in `-max_lag..=max_lag` at which `decoded` best matches `reference` (one
/// channel each, at the same rate), and their correlation there over the whole overlap. A lossy
/// codec that keeps the music scores well above 0.9; another song, silence or noise near 0.
pub fn align(decoded: &[f32], reference: &[f32], max_lag: usize) -> Alignment {
    let correlation = |lag: isize, range: std::ops::Range<usize>| {
        let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
        for i in range {
            let Some(y) = i
                .checked_add_signed(lag)
                .and_then(|j| decoded.get(j))
                .map(|v| f64::from(*v))
            else {
                continue;
            };
            let x = f64::from(reference[i]);
            xy += x * y;
            xx += x * x;
            yy += y * y;
        }
        if xx == 0.0 || yy == 0.0 {
            0.0
        } else {
            xy / (xx * yy).sqrt()
        }
    };
    let window = max_lag.min(reference.len())..(max_lag + ALIGN_WINDOW).min(reference.len());
    let max_lag = max_lag as isize;
    let lag = (-max_lag..=max_lag)
        .map(|lag| (lag, correlation(lag, window.clone())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(lag, _)| lag);
    Alignment {
        lag,
        correlation: correlation(lag, 0..reference.len()),
    }
}

/// An ID3v2.3 tag with a title (`TIT2`) and an artist (`TPE1`), to put in front of an MP3.
pub fn id3v2_tag(title: &str, artist: &str) -> Vec<u8> {
    id3v2_wrap(
        &[
            id3v2_text_frame(b"TIT2", title),
            id3v2_text_frame(b"TPE1", artist),
        ]
        .concat(),
    )
}

/// An ID3v2.3 text frame (ISO-8859-1) holding `text`.
pub fn id3v2_text_frame(id: &[u8; 4], text: &str) -> Vec<u8> {
    // The encoding byte (0: ISO-8859-1), then the text.
    id3v2_frame(id, &[&[0u8][..], text.as_bytes()].concat())
}

/// An ID3v2.3 frame: its id, its size, no flags, then `body`.
pub fn id3v2_frame(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut frame = id.to_vec();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(body);
    frame
}

/// An ID3v2.3 tag holding `frames` (from [`id3v2_frame`]).
pub fn id3v2_wrap(frames: &[u8]) -> Vec<u8> {
    let size = frames.len();
    // The tag size is "syncsafe": 7 bits per byte.
    let syncsafe = [
        (size >> 21) as u8 & 0x7F,
        (size >> 14) as u8 & 0x7F,
        (size >> 7) as u8 & 0x7F,
        size as u8 & 0x7F,
    ];
    let mut tag = b"ID3\x03\x00\x00".to_vec();
    tag.extend_from_slice(&syncsafe);
    tag.extend_from_slice(frames);
    tag
}

/// Frequency (Hz) of a MIDI note number.
fn hz(note: i32) -> f64 {
    440.0 * 2f64.powf(f64::from(note - 69) / 12.0)
}

/// A small deterministic generator (SplitMix64): the same seed gives the same choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// White noise in [-1, 1) as a pure function of a seed and a sample index, so a noisy sound
/// depends only on where it is, not on what was rendered before it.
fn noise(seed: u64, i: usize) -> f64 {
    let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.unit() * 2.0 - 1.0
}

/// The stereo sum being rendered, in f64.
struct Mix {
    left: Vec<f64>,
    right: Vec<f64>,
    rate: f64,
}

impl Mix {
    fn new(frames: usize, rate: u32) -> Mix {
        Mix {
            left: vec![0.0; frames],
            right: vec![0.0; frames],
            rate: f64::from(rate),
        }
    }

    /// Adds `sound(t, i)` (t: seconds since `start`, i: the sample index) from `start` for
    /// `length` seconds, at `pan` with a constant-power law.
    fn add(&mut self, start: f64, length: f64, pan: f64, mut sound: impl FnMut(f64, usize) -> f64) {
        let first = (start * self.rate).ceil().max(0.0) as usize;
        let end = (((start + length) * self.rate).ceil() as usize).min(self.left.len());
        let angle = (pan + 1.0) * std::f64::consts::FRAC_PI_4;
        let (gain_l, gain_r) = (angle.cos(), angle.sin());
        for i in first..end {
            let v = sound(i as f64 / self.rate - start, i);
            self.left[i] += gain_l * v;
            self.right[i] += gain_r * v;
        }
    }
}

/// A kick on beats 1 and 3 (and, now and then, the "and" of 3), a snare on 2 and 4, hi-hats on
/// every eighth note with accents; a snare fill ends every fourth bar.
fn drums(mix: &mut Mix, rng: &mut Rng, start: f64, beat: f64, bar: usize) {
    let mut kicks = vec![0.0, 2.0];
    if rng.unit() < 0.5 {
        kicks.push(2.5);
    }
    for k in kicks {
        mix.add(start + k * beat, 0.35, pan::KICK, |t, _| {
            // A sine swept from 150 Hz down to 45 Hz: the phase is the integral of the sweep.
            let phase = TAU * (45.0 * t + (150.0 - 45.0) * (1.0 - (-t * 25.0).exp()) / 25.0);
            level::KICK * (-t * 9.0).exp() * phase.sin()
        });
    }
    let mut snares = vec![1.0, 3.0];
    if bar % 4 == 3 {
        snares.extend([3.5, 3.75]);
    }
    let noise_seed = rng.next();
    for s in snares {
        mix.add(start + s * beat, 0.25, pan::SNARE, |t, i| {
            let body = (TAU * 185.0 * t).sin() * (-t * 30.0).exp();
            let rattle = noise(noise_seed, i) * (-t * 18.0).exp();
            level::SNARE * (0.5 * body + 0.7 * rattle)
        });
    }
    for eighth in 0..2 * BEATS_PER_BAR {
        let accent = if eighth % 2 == 0 { 1.0 } else { 0.6 } * (0.8 + 0.4 * rng.unit());
        let seed = rng.next();
        let mut previous = 0.0;
        mix.add(
            start + eighth as f64 * beat / 2.0,
            0.08,
            pan::HIHAT,
            |t, i| {
                // A first difference of noise: a crude high-pass that leaves the hiss.
                let n = noise(seed, i);
                let hiss = n - previous;
                previous = n;
                level::HIHAT * accent * hiss * (-t * 60.0).exp()
            },
        );
    }
}

/// Eighth notes on the chord's root an octave below the chords, with a fifth or an octave on
/// some of them.
fn bass(mix: &mut Mix, rng: &mut Rng, start: f64, beat: f64, chord_root: i32) {
    for eighth in 0..2 * BEATS_PER_BAR {
        let interval = match rng.next() % 6 {
            0 => 7,
            1 => 12,
            _ => 0,
        };
        let f = hz(chord_root - 12 + interval);
        let partials = ((MAX_PARTIAL_HZ / f) as usize).min(8);
        mix.add(
            start + eighth as f64 * beat / 2.0,
            beat / 2.0,
            pan::BASS,
            |t, _| {
                // A soft sawtooth: partials falling as 1/k², a plucked decay and a short attack.
                let wave: f64 = (1..=partials)
                    .map(|k| (TAU * f * k as f64 * t).sin() / (k * k) as f64)
                    .sum();
                level::BASS * wave * (t * 400.0).min(1.0) * (-t * 4.0).exp()
            },
        );
    }
}

/// A sustained triad (root position, an octave above the bass) for the whole bar, each note a
/// slightly detuned pair of sines with a slow attack.
fn chord(mix: &mut Mix, start: f64, length: f64, root: i32, minor: bool) {
    let third = if minor { 3 } else { 4 };
    for interval in [0, third, 7] {
        let f = hz(root + 12 + interval);
        mix.add(start, length, pan::CHORDS, |t, _| {
            let envelope = (t / 0.3).min(1.0) * ((length - t) / 0.05).clamp(0.0, 1.0);
            let tone = (TAU * f * 0.998 * t).sin() + (TAU * f * 1.002 * t).sin();
            level::CHORDS * envelope * tone
        });
    }
}

/// A sung line: one or two notes a bar from [`VOICE_SCALE`], each on a vowel of [`VOWELS`],
/// with vibrato; sometimes a rest.
fn voice(mix: &mut Mix, rng: &mut Rng, start: f64, beat: f64, key_root: i32) {
    let mut at = 0.0;
    while at < BEATS_PER_BAR as f64 {
        let beats = if rng.unit() < 0.5 { 2.0 } else { 1.0 };
        let rest = rng.unit() < 0.15;
        let note = key_root + 12 + VOICE_SCALE[(rng.next() % VOICE_SCALE.len() as u64) as usize];
        let vowel = VOWELS[(rng.next() % VOWELS.len() as u64) as usize];
        let length = beats * beat;
        if !rest {
            let f0 = hz(note);
            let mut phase = 0.0;
            let dt = 1.0 / mix.rate;
            mix.add(start + at * beat, length, pan::VOICE, |t, _| {
                // Vibrato fades in over the first 0.2 s, as a singer's does.
                let depth = VIBRATO.1 * (t / 0.2).min(1.0);
                let f = f0 * (1.0 + depth * (TAU * VIBRATO.0 * t).sin());
                phase = (phase + TAU * f * dt) % TAU;
                let mut v = 0.0;
                let mut k = 1.0;
                while k * f < MAX_PARTIAL_HZ {
                    // A glottal source (partials at 1/k) shaped by the vowel's formants.
                    let gain: f64 = vowel
                        .iter()
                        .map(|(centre, width)| 1.0 / (1.0 + ((k * f - centre) / width).powi(2)))
                        .sum();
                    v += gain / k * (k * phase).sin();
                    k += 1.0;
                }
                let envelope = (t / 0.05).min(1.0) * ((length - t) / 0.08).clamp(0.0, 1.0);
                level::VOICE * envelope * v
            });
        }
        at += beats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn the_same_spec_gives_the_same_samples_and_another_seed_other_ones() {
        let spec = SongSpec::new(3.0, 22_050, 7);
        let a = spec.render();
        assert_eq!(a, spec.render());
        assert_eq!(a.frames(), 66_150);
        let b = SongSpec { seed: 8, ..spec }.render();
        assert_ne!(a.left, b.left);
    }

    #[test]
    fn a_song_is_stereo_loud_and_below_full_scale_at_any_rate() {
        for rate in [16_000, 44_100, 48_000] {
            let song = SongSpec::new(8.0, rate, 3).render();
            let peak = song
                .left
                .iter()
                .chain(&song.right)
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((0.3..0.99).contains(&peak), "{rate} Hz: peak {peak}");
            assert!(rms(&song.left) > 0.05 && rms(&song.right) > 0.05);
            // The parts are panned differently, so the channels differ.
            let side: Vec<f32> = song
                .left
                .iter()
                .zip(&song.right)
                .map(|(l, r)| l - r)
                .collect();
            assert!(rms(&side) > 0.02, "{rate} Hz: side rms {}", rms(&side));
        }
    }

    #[test]
    fn any_length_from_nothing_to_minutes() {
        assert_eq!(SongSpec::new(0.0, 44_100, 1).render().frames(), 0);
        assert_eq!(SongSpec::new(0.5, 44_100, 1).render().frames(), 22_050);
        let long = SongSpec::new(150.0, 8_000, 1).render();
        assert_eq!(long.frames(), 1_200_000);
        // Still playing at the end: the last second is not silent.
        assert!(rms(&long.left[long.frames() - 8_000..]) > 0.02);
    }

    #[test]
    fn align_finds_a_delay_and_tells_songs_apart() {
        let song = SongSpec::new(2.0, 16_000, 5).render();
        let late: Vec<f32> = [vec![0.0; 300], song.left.clone()].concat();
        let a = align(&late, &song.left, 1_000);
        assert_eq!(a.lag, 300);
        assert!(a.correlation > 0.999, "{a:?}");
        let other = SongSpec::new(2.0, 16_000, 6).render();
        assert!(align(&other.left, &song.left, 1_000).correlation < 0.5);
    }

    #[test]
    fn the_test_song_mp3_carries_its_tag_and_decodes_to_its_length() {
        let mp3 = test_song_mp3();
        assert!(mp3.starts_with(b"ID3\x03"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("song.mp3");
        std::fs::write(&path, mp3).unwrap();
        let probe = dme_audio::probe_path(&path, Some("mp3")).unwrap();
        assert_eq!(probe.title.as_deref(), Some(TEST_SONG_TITLE));
        assert_eq!(probe.artist.as_deref(), Some(TEST_SONG_ARTIST));
        assert_eq!(probe.frames, TEST_SONG.frames() as u64);
        assert_eq!((probe.sample_rate, probe.channels), (44_100, 2));
    }
}

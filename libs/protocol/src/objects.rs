//! Names and layouts of the objects in [`crate::streams::FILE_BUCKET`].
//!
//! Segment audio and segment stems are little-endian f32, planar: all samples of lane 0, then
//! lane 1, ... (the model's `[1, 2, T]` input and `[1, S, 2, n]` output, flattened), compressed
//! as one zstd frame ([`pack_planar`]). Tracks and mixes are IEEE-float WAV files compressed as
//! one zstd frame (decompressed, they are the float WAV download byte for byte). Compression is
//! lossless, so the samples are bit-identical, and silence costs almost nothing.
//!
//! Every object made from a song's audio belongs to one incarnation of the song's record (see
//! [`Incarnation`]) and carries it in its name: work of a life of the song that a reset ended can
//! neither overwrite nor delete what the song uploaded again makes. Only the original is per song:
//! it is the uploaded bytes themselves, the same in every life.

use std::io::Write;

use crate::records::Gain;
use crate::{DecodeError, Incarnation, MusicId};

/// The uploaded file as it came.
pub fn original(music: MusicId) -> String {
    format!("orig/{music}")
}

/// The model input window of segment `index`: `[2, window_len]` f32.
pub fn segment_input(music: MusicId, incarnation: Incarnation, index: u32) -> String {
    format!("seg/{music}/{incarnation}/{index}")
}

/// The separated samples of segment `index`, cut to the segment: `[S, 2, len]` f32.
pub fn segment_stems(music: MusicId, incarnation: Incarnation, index: u32) -> String {
    format!("stems/{music}/{incarnation}/{index}")
}

/// Stem `stem`'s finished samples of segment `index` of a song: from the segment's offset to
/// the next segment's (to the song's end for the last), blended with the segment before as the
/// whole song's blend does, as interleaved stereo little-endian f32 (the float WAV's data
/// bytes) compressed as one zstd frame ([`pack`]). Made as soon as every segment up to `index`
/// is separated, so the start of a song's stems can be heard while the rest separates; the
/// track is these parts one after another.
pub fn part(music: MusicId, incarnation: Incarnation, stem: &str, index: u32) -> String {
    format!("part/{music}/{incarnation}/{stem}/{index}")
}

/// The assembled stem `stem` of a song, float WAV.
pub fn track(music: MusicId, incarnation: Incarnation, stem: &str) -> String {
    format!("track/{music}/{incarnation}/{stem}")
}

/// The mix of a selection (see [`mix_key`]), float WAV.
pub fn mix(music: MusicId, incarnation: Incarnation, key: &str) -> String {
    format!("mix/{music}/{incarnation}/{key}")
}

/// A cached encoding of a track or mix object in another format (`wav`, `flac`, `mp3`).
pub fn encoded(object: &str, format: &str) -> String {
    format!("{object}.{format}")
}

/// Prefixes of every object of a song, of all its incarnations: an object of the song is named
/// exactly [`original`] or starts with one of the others (see [`of_song`]).
pub fn prefixes(music: MusicId) -> [String; 6] {
    [
        original(music),
        format!("seg/{music}/"),
        format!("stems/{music}/"),
        format!("part/{music}/"),
        format!("track/{music}/"),
        format!("mix/{music}/"),
    ]
}

/// Whether object `name` belongs to song `music` (any incarnation). The original is matched by
/// its whole name: `orig/12` is no object of song `1`.
pub fn of_song(music: MusicId, name: &str) -> bool {
    let [original, rest @ ..] = prefixes(music);
    name == original || rest.iter().any(|p| name.starts_with(p.as_str()))
}

/// Prefixes of every object made in one incarnation of a song: all of [`prefixes`] but the
/// original, which outlives incarnations.
pub fn incarnation_prefixes(music: MusicId, incarnation: Incarnation) -> [String; 5] {
    [
        format!("seg/{music}/{incarnation}/"),
        format!("stems/{music}/{incarnation}/"),
        format!("part/{music}/{incarnation}/"),
        format!("track/{music}/{incarnation}/"),
        format!("mix/{music}/{incarnation}/"),
    ]
}

/// A stable key for a selection of stems at 0 dB, given as their indices in the song's track
/// list: `"0-2-3"`, sorted and without duplicates ([`mix_key`] with every gain at 0 dB).
pub fn selection_key(stem_indices: &[usize]) -> String {
    let stems: Vec<(usize, Gain)> = stem_indices.iter().map(|i| (*i, Gain::UNITY)).collect();
    mix_key(&stems)
}

/// A stable key for a selection of stems and their gains, given as (index in the song's track
/// list, gain) pairs: sorted by index, without duplicates (callers refuse one stem at two gains;
/// the first is kept), each index followed by `~<dB>` when its gain is not 0 dB. Without gains it
/// is [`selection_key`], the key mixes always had (`"0-2-3"`), so their names and links stay;
/// with them, e.g. `"0-2~-3.5-3~6"` (stem 2 at −3.5 dB, stem 3 at +6 dB). Only digits, `-`, `.`
/// and `~`: characters a URL path carries unescaped (`encodeURIComponent` leaves them alone),
/// safe in object names.
pub fn mix_key(stems: &[(usize, Gain)]) -> String {
    let mut v = stems.to_vec();
    v.sort_by_key(|(i, _)| *i);
    v.dedup_by_key(|(i, _)| *i);
    v.iter()
        .map(|(i, gain)| match *gain {
            Gain::UNITY => i.to_string(),
            gain => format!("{i}~{}", tenths(gain.0)),
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Tenths as a decimal without a trailing `.0`: `-35` → `-3.5`, `60` → `6`, `-5` → `-0.5`.
fn tenths(t: i16) -> String {
    let sign = if t < 0 { "-" } else { "" };
    let (whole, tenth) = (t.unsigned_abs() / 10, t.unsigned_abs() % 10);
    if tenth == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{tenth}")
    }
}

/// A track's waveform peaks (JSON, see the gateway's `routes/peaks.rs`), computed on the first
/// request and kept beside the track, so it goes with the track's life of the song.
pub fn peaks(music: MusicId, incarnation: Incarnation, stem: &str) -> String {
    format!("{}.peaks", track(music, incarnation, stem))
}

/// The zstd level of packed audio: silence compresses to almost nothing at any level, and
/// higher ones buy a few per cent on music for several times the CPU of every segment.
pub const PACK_LEVEL: i32 = 1;

/// Largest unpacked size [`unpack_planar`] accepts (a frame header claiming more is refused, not
/// allocated): far above the 11 MB stems of a 7.8 s htdemucs segment.
pub const MAX_UNPACKED_BYTES: usize = 1 << 30;

/// Flattens planar lanes (all of equal length) into little-endian f32 bytes, compressed as one
/// zstd frame that records its decompressed size. The lanes are streamed into the compressor
/// as they lie in memory: no flattened copy of them is made (on a little-endian machine).
pub fn pack_planar(lanes: &[&[f32]]) -> Vec<u8> {
    let total: usize = lanes.iter().map(|l| l.len() * 4).sum();
    let packed = (|| {
        let mut packer = zstd::stream::write::Encoder::new(Vec::new(), PACK_LEVEL)?;
        packer.set_pledged_src_size(Some(total as u64))?;
        packer.include_contentsize(true)?;
        for lane in lanes {
            le_bytes(lane, |bytes| packer.write_all(bytes))?;
        }
        packer.finish()
    })();
    packed.expect("zstd compresses into a Vec")
}

/// Calls `each` with the little-endian bytes of `samples`: their own memory on a
/// little-endian machine, converted copies of blocks of them elsewhere.
fn le_bytes(
    samples: &[f32],
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        return each(bytemuck::cast_slice(samples));
    }
    let mut block = Vec::with_capacity(64 * 1024);
    for part in samples.chunks(16 * 1024) {
        block.clear();
        for v in part {
            block.extend_from_slice(&v.to_le_bytes());
        }
        each(&block)?;
    }
    Ok(())
}

/// Compresses planar little-endian f32 bytes as [`pack_planar`] does.
pub fn pack(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, PACK_LEVEL).expect("zstd compresses into a Vec")
}

/// Decompresses [`pack_planar`]'s bytes into its samples, every lane one after another,
/// decompressed straight into the returned buffer (no copy of the bytes is made).
///
/// # Errors
/// When the bytes are not one zstd frame that records its size (at most
/// [`MAX_UNPACKED_BYTES`]), or do not hold a whole number of samples.
pub fn unpack_samples(packed: &[u8]) -> Result<Vec<f32>, DecodeError> {
    let size = unpacked_size(packed)?;
    let mut samples = vec![0.0f32; size / 4];
    unpack_into(packed, bytemuck::cast_slice_mut(&mut samples))?;
    if cfg!(target_endian = "big") {
        for v in &mut samples {
            *v = f32::from_bits(u32::from_le(v.to_bits()));
        }
    }
    Ok(samples)
}

/// Decompresses [`pack`]'s (or [`pack_planar`]'s) bytes into the little-endian f32 bytes
/// that were packed.
///
/// # Errors
/// As [`unpack_samples`].
pub fn unpack_bytes(packed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut bytes = vec![0u8; unpacked_size(packed)?];
    unpack_into(packed, &mut bytes)?;
    Ok(bytes)
}

/// Why packed bytes cannot be read, said the same way by every reader.
fn corrupt(packed: &[u8], reason: String) -> DecodeError {
    DecodeError {
        what: "packed planar f32 audio",
        reason: format!("{} bytes: {reason}", packed.len()),
    }
}

/// The size `packed`'s zstd frame records, checked: at most [`MAX_UNPACKED_BYTES`] and a whole
/// number of f32 samples.
fn unpacked_size(packed: &[u8]) -> Result<usize, DecodeError> {
    let size = match zstd::zstd_safe::get_frame_content_size(packed) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(corrupt(packed, "a zstd frame without its size".into())),
        Err(_) => return Err(corrupt(packed, "not a zstd frame".into())),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= MAX_UNPACKED_BYTES)
        .ok_or_else(|| corrupt(packed, format!("claims {size} bytes unpacked")))?;
    if !size.is_multiple_of(4) {
        return Err(DecodeError {
            what: "planar f32 audio",
            reason: format!("{size} bytes is not a whole number of samples"),
        });
    }
    Ok(size)
}

/// Decompresses `packed` into `out`, which is exactly [`unpacked_size`] long.
fn unpack_into(packed: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let unpacked = zstd::bulk::decompress_to_buffer(packed, &mut *out)
        .map_err(|e| corrupt(packed, e.to_string()))?;
    if unpacked != out.len() {
        return Err(corrupt(
            packed,
            format!("{unpacked} bytes unpacked, {} claimed", out.len()),
        ));
    }
    Ok(())
}

/// Decompresses [`pack_planar`]'s bytes and splits the samples into `lanes` planar buffers of
/// equal length.
///
/// # Errors
/// As [`unpack_samples`], and when the samples are not a whole number of `lanes`-lane samples.
pub fn unpack_planar(packed: &[u8], lanes: usize) -> Result<Vec<Vec<f32>>, DecodeError> {
    let samples = unpack_samples(packed)?;
    if lanes == 0 || !samples.len().is_multiple_of(lanes) {
        return Err(DecodeError {
            what: "planar f32 audio",
            reason: format!(
                "{} bytes is not a whole number of {lanes}-lane samples",
                samples.len() * 4
            ),
        });
    }
    let n = samples.len() / lanes;
    if n == 0 {
        return Ok(vec![Vec::new(); lanes]);
    }
    Ok(samples.chunks_exact(n).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_round_trip() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [-1.0f32, f32::MIN_POSITIVE, 0.5];
        let bytes = pack_planar(&[&a, &b]);
        let back = unpack_planar(&bytes, 2).unwrap();
        assert_eq!(back, vec![a.to_vec(), b.to_vec()]);
        assert!(unpack_planar(&bytes[1..], 2).is_err());
        assert!(unpack_planar(&bytes[..bytes.len() - 1], 2).is_err());
        assert!(unpack_planar(b"xyz", 2)
            .unwrap_err()
            .reason
            .contains("3 bytes"));
        let silence = vec![0.0f32; 1 << 20];
        let packed = pack_planar(&[&silence, &silence]);
        assert!(
            packed.len() < 1024,
            "8 MiB of silence packed to {}",
            packed.len()
        );
        assert_eq!(
            unpack_planar(&packed, 2).unwrap(),
            vec![silence.clone(), silence]
        );
        let odd = pack_planar(&[&[1.0f32, 2.0, 3.0]]);
        assert!(unpack_planar(&odd, 2).is_err());
        let empty = pack_planar(&[&[], &[], &[]]);
        assert_eq!(
            unpack_planar(&empty, 3).unwrap(),
            vec![Vec::<f32>::new(); 3]
        );
    }

    #[test]
    fn packed_lanes_unpack_as_one_buffer_bit_for_bit() {
        // Lanes of another length than the compressor's blocks, with values whose bits matter.
        let a: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.001).sin()).collect();
        let b = [f32::NAN, -0.0, f32::INFINITY, f32::MIN_POSITIVE / 2.0];
        let packed = pack_planar(&[&a, &b]);
        let same_as_bulk = pack(
            &a.iter()
                .chain(&b)
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let back = unpack_samples(&packed).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let expected: Vec<f32> = a.iter().chain(&b).copied().collect();
        assert_eq!(bits(&back), bits(&expected));
        assert_eq!(
            bits(&unpack_samples(&same_as_bulk).unwrap()),
            bits(&expected)
        );
        assert!(unpack_samples(&packed[..packed.len() - 1]).is_err());
        let three_bytes = pack(&[1, 2, 3]);
        assert!(unpack_samples(&three_bytes)
            .unwrap_err()
            .reason
            .contains("whole number"));
    }

    #[test]
    fn names_carry_the_incarnation_and_stay_under_the_song() {
        let (m, a, b) = (MusicId(12), Incarnation(1), Incarnation(2));
        let names = [
            segment_input(m, a, 3),
            segment_stems(m, a, 3),
            part(m, a, "bass", 3),
            track(m, a, "bass"),
            mix(m, a, "0-1"),
            mix(m, a, "0-1~-3.5"),
            encoded(&track(m, a, "bass"), "flac"),
            peaks(m, a, "bass"),
        ];
        for name in &names {
            assert!(of_song(m, name), "{name}");
            assert!(!of_song(MusicId(1), name), "{name}");
            let own = incarnation_prefixes(m, a);
            assert!(own.iter().any(|p| name.starts_with(p.as_str())), "{name}");
            let other = incarnation_prefixes(m, b);
            assert!(
                !other.iter().any(|p| name.starts_with(p.as_str())),
                "{name}"
            );
        }
        assert_ne!(segment_input(m, a, 3), segment_input(m, b, 3));
        assert!(of_song(m, &original(m)));
        assert!(!of_song(MusicId(1), &original(m)));
    }

    #[test]
    fn selection_keys_are_canonical() {
        // Without gains: the keys of mixes made before gains existed.
        assert_eq!(selection_key(&[3, 0, 3, 2]), "0-2-3");
        assert_eq!(selection_key(&[1]), "1");
        let unity = [(3, Gain::UNITY), (0, Gain::UNITY), (2, Gain::UNITY)];
        assert_eq!(mix_key(&unity), "0-2-3");
        let g = |db: f64| Gain::from_db(db).unwrap();
        let key = mix_key(&[(3, g(6.0)), (0, g(0.0)), (2, g(-3.5))]);
        assert_eq!(key, "0-2~-3.5-3~6");
        // Any order, repeats, and gains within the same tenth of a dB spell the same key.
        assert_eq!(
            mix_key(&[(2, g(-3.46)), (3, g(5.96)), (0, g(0.04)), (3, g(6.0))]),
            key
        );
        assert_eq!(mix_key(&[(0, g(-0.5))]), "0~-0.5");
        assert_eq!(mix_key(&[(0, g(0.5))]), "0~0.5");
        assert_eq!(mix_key(&[(0, g(12.0)), (1, g(-60.0))]), "0~12-1~-60");
        assert_eq!(mix_key(&[(0, g(-0.04))]), "0");
        // Different gains, different keys; keys stay one unescaped path segment.
        assert_ne!(mix_key(&[(0, g(1.0))]), mix_key(&[(0, g(1.1))]));
        assert_ne!(mix_key(&[(1, g(-1.0))]), mix_key(&[(1, g(1.0))]));
        for key in [key, mix_key(&[(10, g(-59.9)), (11, g(11.9))])] {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_digit() || b"-.~".contains(&b)),
                "{key}"
            );
        }
    }
}

//! Names and layouts of the objects in [`crate::streams::FILE_BUCKET`].
//!
//! Segment audio and segment stems are raw little-endian f32, planar: all samples of lane 0,
//! then lane 1, ... (the model's `[1, 2, T]` input and `[1, S, 2, n]` output, flattened). Tracks
//! and mixes are IEEE-float WAV files, so they download as they are.

use crate::{DecodeError, MusicId};

/// The uploaded file as it came.
pub fn original(music: MusicId) -> String {
    format!("orig/{music}")
}

/// The model input window of segment `index`: `[2, window_len]` f32.
pub fn segment_input(music: MusicId, index: u32) -> String {
    format!("seg/{music}/{index}")
}

/// The separated samples of segment `index`, cut to the segment: `[S, 2, len]` f32.
pub fn segment_stems(music: MusicId, index: u32) -> String {
    format!("stems/{music}/{index}")
}

/// The assembled stem `stem` of a song, float WAV.
pub fn track(music: MusicId, stem: &str) -> String {
    format!("track/{music}/{stem}")
}

/// The mix of a selection (see [`selection_key`]), float WAV.
pub fn mix(music: MusicId, key: &str) -> String {
    format!("mix/{music}/{key}")
}

/// A cached encoding of a track or mix object in another format (`wav`, `flac`, `mp3`).
pub fn encoded(object: &str, format: &str) -> String {
    format!("{object}.{format}")
}

/// Prefix of every object of a song.
pub fn prefixes(music: MusicId) -> [String; 5] {
    [
        format!("orig/{music}"),
        format!("seg/{music}/"),
        format!("stems/{music}/"),
        format!("track/{music}/"),
        format!("mix/{music}/"),
    ]
}

/// A stable key for a selection of stems, given as their indices in the song's track list:
/// `"0-2-3"`, sorted and without duplicates.
pub fn selection_key(stem_indices: &[usize]) -> String {
    let mut v = stem_indices.to_vec();
    v.sort_unstable();
    v.dedup();
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("-")
}

/// Flattens planar lanes (all of equal length) into little-endian f32 bytes.
pub fn pack_planar(lanes: &[&[f32]]) -> Vec<u8> {
    let total: usize = lanes.iter().map(|l| l.len()).sum();
    let mut out = Vec::with_capacity(total * 4);
    for lane in lanes {
        for v in *lane {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Splits little-endian f32 bytes into `lanes` planar buffers of equal length.
///
/// # Errors
/// When the byte count is not a whole number of samples for `lanes` lanes.
pub fn unpack_planar(bytes: &[u8], lanes: usize) -> Result<Vec<Vec<f32>>, DecodeError> {
    if lanes == 0 || !bytes.len().is_multiple_of(4 * lanes) {
        return Err(DecodeError {
            what: "planar f32 audio",
            reason: format!(
                "{} bytes is not a whole number of {lanes}-lane samples",
                bytes.len()
            ),
        });
    }
    let (samples, _) = bytes.as_chunks::<4>();
    let n = samples.len() / lanes;
    if n == 0 {
        return Ok(vec![Vec::new(); lanes]);
    }
    Ok(samples
        .chunks_exact(n)
        .map(|lane| lane.iter().map(|c| f32::from_le_bytes(*c)).collect())
        .collect())
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
        assert_eq!(unpack_planar(&[], 3).unwrap(), vec![Vec::<f32>::new(); 3]);
    }

    #[test]
    fn selection_keys_are_canonical() {
        assert_eq!(selection_key(&[3, 0, 3, 2]), "0-2-3");
    }
}

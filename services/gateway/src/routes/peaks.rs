//! `GET|HEAD /music/{id}/track/{track_id}/peaks?buckets=`: a stem's waveform, small enough for a
//! page to draw at once (about 14 KB of JSON for the default 2,000 buckets, whatever the track's
//! length).
//!
//! A bucket's peak is the largest absolute sample of both channels over its frames, rounded to 4
//! decimals and at most 1. The server computes a track's peaks once, at the finest resolution
//! served ([`MAX_BUCKETS`]), streaming over the track (decompressed a chunk at a time, so memory
//! does not grow with its length), and keeps them beside it
//! ([`dme_protocol::objects::peaks`]); any coarser request takes the largest of whole groups of
//! those, which is exactly the peak of the group's frames. Concurrent first requests compute
//! once in this process (a lock per object), at most [`MAX_CONCURRENT_PEAKS`] tracks at a time;
//! the computation runs in a task of its own, so a client that leaves does not waste it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use actix_web::http::header::{self, EntityTag};
use actix_web::{web, HttpRequest, HttpResponse};
use dme_protocol::objects;
use dme_storage::Store;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

use super::files;
use super::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// Buckets when the request names none: enough for a lane as wide as a screen, about 14 KB.
/// Served counts are whole groups of the stored buckets, so a long track gets 1,639 and a short
/// one up to 2,000.
pub const DEFAULT_BUCKETS: usize = 2000;

/// Fewest buckets a request gets (`?buckets=` is clamped to this).
pub const MIN_BUCKETS: usize = 16;

/// Most buckets a request gets, and the resolution stored: 8,192 peaks, about 57 KB a track.
pub const MAX_BUCKETS: usize = 8192;

/// Tracks whose peaks are computed at once in this gateway: each reads its whole track.
pub const MAX_CONCURRENT_PEAKS: usize = 2;

/// Bytes of samples read from the track at a time (a whole number of stereo f32 frames).
const READ_BYTES: usize = 128 * 1024;

/// Decimals kept of each peak: 1/10,000 is far below a pixel, and the JSON stays small.
const PEAK_DECIMALS: i32 = 4;

/// `?buckets=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeaksQuery {
    /// About how many peaks to answer (never more): 2,000 when left out, clamped to 16..=8192.
    #[param(value_type = Option<u64>, example = 2000)]
    buckets: Option<String>,
}

/// A track's peaks, as stored and as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
struct Peaks {
    /// Frames (samples per channel) in the track.
    frames: u64,
    /// Its sample rate.
    sample_rate: u32,
    /// Frames per bucket; the last bucket may hold fewer.
    frames_per_peak: u64,
    /// Largest absolute sample of each bucket, in order.
    peaks: Vec<f32>,
}

impl Peaks {
    /// These peaks at about `buckets` buckets (never more): groups of `k` stored buckets, `k`
    /// the smallest that brings the count to `buckets` or fewer.
    fn coarsened(&self, buckets: usize) -> Peaks {
        let k = self.peaks.len().div_ceil(buckets).max(1);
        Peaks {
            frames: self.frames,
            sample_rate: self.sample_rate,
            frames_per_peak: self.frames_per_peak * k as u64,
            peaks: self
                .peaks
                .chunks(k)
                .map(|group| group.iter().copied().fold(0.0, f32::max))
                .collect(),
        }
    }
}

/// `GET|HEAD /music/{id}/track/{track_id}/peaks?buckets=`: 404 (JSON) until the stems are
/// assembled; an `ETag` of the answer's bytes, `If-None-Match` answered 304.
#[utoipa::path(
    method(get, head),
    path = "/music/{music_id}/track/{track_id}/peaks",
    tag = "music",
    operation_id = "peaks",
    params(
        ("music_id" = u64, Path, description = "The song's id"),
        ("track_id" = u64, Path, description = "The track's id"),
        PeaksQuery,
        ("If-None-Match" = Option<String>, Header,
            description = "`ETag`s the client holds: 304 when one is current"),
    ),
    responses(
        (status = 200, description = "The track's waveform peaks", body = Peaks,
            headers(("ETag" = String, description = "Strong: of the answer's bytes"))),
        (status = 304, description = "The client's copy is current (`If-None-Match`)"),
        (status = 400, description = "A malformed id or `buckets`", body = ErrorBody),
        (status = 404, description = "No such song or track, or not separated yet",
            body = ErrorBody),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn track(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PeaksQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let buckets = match &query.buckets {
        None => DEFAULT_BUCKETS,
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "buckets `{raw}` is not a positive integer (it is clamped to \
                     {MIN_BUCKETS}..={MAX_BUCKETS})"
                ))
            })?
            .clamp(MIN_BUCKETS as u64, MAX_BUCKETS as u64) as usize,
    };
    let (record, track) = files::ready_track(&state, &path).await?;
    let source = objects::track(record.music_id, record.incarnation, &track.name);
    let cached = objects::peaks(record.music_id, record.incarnation, &track.name);
    let stored = stored_peaks(&state.store, &source, &cached)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("track {} is gone", track.track_id)))?;
    let body =
        serde_json::to_vec(&stored.coarsened(buckets)).map_err(|e| ApiError::Internal(e.into()))?;
    let digest = blake3::hash(&body).to_hex();
    let tag = EntityTag::new_strong(digest[..32].to_string());
    if files::none_match(&req, &tag) {
        return Ok(HttpResponse::NotModified()
            .insert_header(header::ETag(tag))
            .finish());
    }
    // The same URL names another life's track after a retry or a reset: check each time.
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(header::ETag(tag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

/// Peaks being computed by this gateway, one lock per stored object's name.
static COMPUTING: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// Bounds [`COMPUTING`] to [`MAX_CONCURRENT_PEAKS`] at once.
static SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(MAX_CONCURRENT_PEAKS)));

/// The stored peaks of track object `source` (object `cached`), computed and stored first if
/// there are none; `None` when the track does not exist.
async fn stored_peaks(
    store: &Store,
    source: &str,
    cached: &str,
) -> Result<Option<Peaks>, ApiError> {
    if let Some(peaks) = read_stored(store, cached).await? {
        return Ok(Some(peaks));
    }
    let lock = COMPUTING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(cached.to_string())
        .or_default()
        .clone();
    let (store_, source_, cached_) = (store.clone(), source.to_string(), cached.to_string());
    tokio::spawn(async move {
        let made = async {
            let _turn = lock.lock().await;
            // Whoever held the lock before may have made them.
            if let Some(peaks) = read_stored(&store_, &cached_).await? {
                return Ok(Some(peaks));
            }
            // Never closed: the semaphore lives as long as the gateway.
            let _slot = SLOTS.clone().acquire_owned().await;
            let Some(peaks) = compute(&store_, &source_).await? else {
                return Ok(None);
            };
            let bytes = serde_json::to_vec(&peaks).map_err(|e| ApiError::Internal(e.into()))?;
            store_.put_object(&cached_, &bytes).await?;
            tracing::info!(object = %cached_, peaks = peaks.peaks.len(), "peaks computed and cached");
            Ok(Some(peaks))
        }
        .await;
        // Forget the lock when nobody else holds it (clones are made under the map's mutex).
        let mut computing = COMPUTING.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&lock) == 2 {
            computing.remove(&cached_);
        }
        made
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

/// The peaks stored as `cached`, if any.
async fn read_stored(store: &Store, cached: &str) -> Result<Option<Peaks>, ApiError> {
    let Some(bytes) = store.get_object(cached).await? else {
        return Ok(None);
    };
    let peaks = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::Internal(format!("the stored peaks {cached} do not decode: {e}").into())
    })?;
    Ok(Some(peaks))
}

/// Computes the peaks of track object `source` (a compressed float WAV) at [`MAX_BUCKETS`],
/// reading it once; `None` when it does not exist.
async fn compute(store: &Store, source: &str) -> Result<Option<Peaks>, ApiError> {
    let Some(mut reader) = store.unpacked_chunked_reader(source).await? else {
        return Ok(None);
    };
    let broken = |e: io::Error| ApiError::Internal(format!("reading track {source}: {e}").into());
    let wav = read_wav_head(&mut reader).await.map_err(broken)?;
    let frame_bytes = 4 * u64::from(wav.channels);
    let frames = wav.data_bytes / frame_bytes;
    let frames_per_peak = frames.div_ceil(MAX_BUCKETS as u64).max(1);
    let mut peaks = vec![0.0f32; frames.div_ceil(frames_per_peak) as usize];
    let mut buf = vec![0u8; READ_BYTES - READ_BYTES % frame_bytes as usize];
    let mut frame = 0u64;
    while frame < frames {
        let want = ((frames - frame) * frame_bytes).min(buf.len() as u64) as usize;
        let block = &mut buf[..want];
        reader.read_exact(block).await.map_err(broken)?;
        for samples in block.chunks_exact(frame_bytes as usize) {
            let loudest = samples
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b).abs())
                .fold(0.0f32, f32::max);
            let peak = &mut peaks[(frame / frames_per_peak) as usize];
            *peak = peak.max(loudest);
            frame += 1;
        }
    }
    let scale = 10f64.powi(PEAK_DECIMALS);
    for peak in &mut peaks {
        *peak = ((f64::from(peak.min(1.0)) * scale).round() / scale) as f32;
    }
    Ok(Some(Peaks {
        frames,
        sample_rate: wav.sample_rate,
        frames_per_peak,
        peaks,
    }))
}

/// What [`read_wav_head`] learns of a WAV: its format and the length of its samples.
struct WavHead {
    channels: u16,
    sample_rate: u32,
    data_bytes: u64,
}

/// Reads a WAV's chunks up to the start of its samples, checking that they are 32-bit float
/// (as the mixer writes tracks); the reader is left at the first sample.
async fn read_wav_head<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<WavHead> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut riff = [0u8; 12];
    reader.read_exact(&mut riff).await?;
    if &riff[..4] != b"RIFF" || &riff[8..] != b"WAVE" {
        return Err(invalid("not a WAV file"));
    }
    let mut format = None;
    loop {
        let mut chunk = [0u8; 8];
        reader.read_exact(&mut chunk).await?;
        let (id, size) = chunk.split_at(4);
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes"));
        match id {
            b"fmt " => {
                if !(16..=1024).contains(&size) {
                    return Err(invalid("a WAV format chunk of an odd size"));
                }
                let mut fmt = vec![0u8; size as usize + (size as usize & 1)];
                reader.read_exact(&mut fmt).await?;
                let u16_at = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
                let tag = match u16_at(0) {
                    // WAVE_FORMAT_EXTENSIBLE: the format is the sub-format GUID's first two bytes.
                    0xFFFE if size >= 26 => u16_at(24),
                    tag => tag,
                };
                let (channels, bits) = (u16_at(2), u16_at(14));
                if tag != 3 || bits != 32 || channels == 0 {
                    return Err(invalid("a WAV whose samples are not 32-bit float"));
                }
                let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
                format = Some((channels, rate));
            }
            b"data" => {
                let (channels, sample_rate) =
                    format.ok_or_else(|| invalid("WAV samples before their format"))?;
                return Ok(WavHead {
                    channels,
                    sample_rate,
                    data_bytes: u64::from(size),
                });
            }
            _ => {
                let skip = u64::from(size) + u64::from(size & 1);
                let skipped =
                    tokio::io::copy(&mut (&mut *reader).take(skip), &mut tokio::io::sink()).await?;
                if skipped != skip {
                    return Err(invalid("a WAV that ends inside a chunk"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float_wav(samples: &[f32]) -> Vec<u8> {
        let data = (samples.len() * 4) as u32;
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(4 + 8 + 16 + 8 + 4 + 8 + data).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        for v in [3u16, 2] {
            wav.extend_from_slice(&v.to_le_bytes());
        }
        wav.extend_from_slice(&44_100u32.to_le_bytes());
        wav.extend_from_slice(&(44_100u32 * 8).to_le_bytes());
        for v in [8u16, 32] {
            wav.extend_from_slice(&v.to_le_bytes());
        }
        wav.extend_from_slice(b"fact");
        wav.extend_from_slice(&4u32.to_le_bytes());
        wav.extend_from_slice(&((samples.len() / 2) as u32).to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&data.to_le_bytes());
        for s in samples {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        wav
    }

    #[tokio::test]
    async fn a_float_wav_head_is_read_past_other_chunks() {
        let wav = float_wav(&[0.5, -0.25, 1.0, 0.0]);
        let mut reader = wav.as_slice();
        let head = read_wav_head(&mut reader).await.unwrap();
        assert_eq!(
            (head.channels, head.sample_rate, head.data_bytes),
            (2, 44_100, 16)
        );
        assert_eq!(reader.len(), 16);
        let mut pcm = wav.clone();
        pcm[20] = 1;
        assert!(read_wav_head(&mut pcm.as_slice()).await.is_err());
        assert!(read_wav_head(&mut &b"RIFF\0\0\0\0WAVE"[..]).await.is_err());
    }

    #[test]
    fn coarser_peaks_are_the_largest_of_whole_groups() {
        let stored = Peaks {
            frames: 10,
            sample_rate: 44_100,
            frames_per_peak: 2,
            peaks: vec![0.1, 0.5, 0.2, 0.3, 0.9],
        };
        assert_eq!(stored.coarsened(8192), stored);
        let two = stored.coarsened(2);
        assert_eq!(
            (two.frames_per_peak, two.peaks.as_slice()),
            (6, &[0.5, 0.9][..])
        );
        let three = stored.coarsened(3);
        assert_eq!(
            (three.frames_per_peak, three.peaks.as_slice()),
            (4, &[0.5, 0.3, 0.9][..])
        );
        let empty = Peaks {
            frames: 0,
            sample_rate: 44_100,
            frames_per_peak: 1,
            peaks: Vec::new(),
        };
        assert_eq!(empty.coarsened(16), empty);
    }
}

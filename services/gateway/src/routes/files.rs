//! Downloads of stem tracks and mixes: float WAV as stored, or encoded on first request into
//! 16-bit WAV (the default), FLAC or MP3 and kept beside the original. Byte ranges are served so
//! players can seek.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use dme_audio::Format;
use dme_protocol::{objects, TrackId};
use serde::Deserialize;

use super::{load_music, parse_id};
use crate::{ApiError, AppState};

/// `?format=`.
#[derive(Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

fn format_of(q: &FormatQuery) -> Result<Format, ApiError> {
    match &q.format {
        None => Ok(Format::Wav16),
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown format `{f}`: use wav, wav32f, flac or mp3"
            ))
        }),
    }
}

/// `GET /music/{id}/track/{track_id}?format=`: one stem.
pub async fn track(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<FormatQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let format = format_of(&query)?;
    let record = load_music(&state, &path.0).await?;
    let track_id: TrackId = parse_id(&path.1, "track id")?;
    let track = record
        .tracks
        .iter()
        .find(|t| t.track_id == track_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!("song {} has no track {track_id}", record.music_id))
        })?;
    if !record.tracks_ready {
        return Err(ApiError::NotFound(format!(
            "track {track_id} is not separated yet"
        )));
    }
    let object = objects::track(record.music_id, &track.name);
    let file_name = format!(
        "{} - {}.{}",
        ascii_name(&record.name),
        track.name,
        format.extension()
    );
    serve(&req, &state, &object, format, &file_name).await
}

/// `GET /music/{id}/mix/{key}?format=`: the mix of a selection.
pub async fn mix(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<FormatQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let format = format_of(&query)?;
    let record = load_music(&state, &path.0).await?;
    let mix = record
        .mixes
        .iter()
        .find(|m| m.key == path.1)
        .ok_or_else(|| {
            ApiError::NotFound(format!("song {} has no mix {}", record.music_id, path.1))
        })?;
    if !mix.ready {
        return Err(ApiError::NotFound(format!(
            "mix {} is not ready yet",
            mix.key
        )));
    }
    let names: Vec<&str> = mix
        .tracks
        .iter()
        .filter_map(|t| record.tracks.iter().find(|x| x.track_id == *t))
        .map(|t| t.name.as_str())
        .collect();
    let object = objects::mix(record.music_id, &mix.key);
    let file_name = format!(
        "{} - {}.{}",
        ascii_name(&record.name),
        names.join("+"),
        format.extension()
    );
    serve(&req, &state, &object, format, &file_name).await
}

async fn serve(
    req: &HttpRequest,
    state: &AppState,
    object: &str,
    format: Format,
    file_name: &str,
) -> Result<HttpResponse, ApiError> {
    let bytes = match format {
        Format::Wav32f => state.store.get_object(object).await?,
        _ => {
            let cached = objects::encoded(object, format.as_str());
            match state.store.get_object(&cached).await? {
                Some(bytes) => Some(bytes),
                None => match state.store.get_object(object).await? {
                    Some(source) => {
                        let encoded = tokio::task::spawn_blocking(move || {
                            let (audio, rate) = dme_audio::read_wav(&source)?;
                            dme_audio::encode(&audio.left, &audio.right, rate, format)
                        })
                        .await
                        .map_err(|e| ApiError::Internal(e.into()))?
                        .map_err(|e| ApiError::Internal(e.into()))?;
                        state.store.put_object(&cached, &encoded).await?;
                        Some(encoded)
                    }
                    None => None,
                },
            }
        }
    }
    .ok_or_else(|| ApiError::NotFound(format!("{object} is gone")))?;
    respond_with_range(req, bytes, format.content_type(), file_name)
}

/// Answers `bytes`, or the part a `Range: bytes=...` header asks for (206), with the headers a
/// browser needs to download or seek.
fn respond_with_range(
    req: &HttpRequest,
    bytes: Vec<u8>,
    content_type: &str,
    file_name: &str,
) -> Result<HttpResponse, ApiError> {
    let total = bytes.len() as u64;
    let disposition = format!("attachment; filename=\"{file_name}\"");
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let Some(range) = range else {
        return Ok(HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((header::ACCEPT_RANGES, "bytes"))
            .insert_header((header::CONTENT_DISPOSITION, disposition))
            .body(bytes));
    };
    let (start, end) = parse_range(range, total).ok_or_else(|| {
        ApiError::RangeNotSatisfiable(format!(
            "range `{range}` is outside the {total} bytes of the file"
        ))
    })?;
    let body = bytes[start as usize..=end as usize].to_vec();
    Ok(HttpResponse::PartialContent()
        .content_type(content_type)
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        ))
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .body(body))
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n`, clamped to the file; `None` when it lies
/// outside.
fn parse_range(value: &str, total: u64) -> Option<(u64, u64)> {
    let spec = value
        .trim()
        .strip_prefix("bytes=")?
        .split(',')
        .next()?
        .trim();
    let (a, b) = spec.split_once('-')?;
    if total == 0 {
        return None;
    }
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 {
                return None;
            }
            (total.saturating_sub(n), total - 1)
        }
        (s, "") => (s.parse().ok()?, total - 1),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(total - 1)),
    };
    (start <= end && start < total).then_some((start, end))
}

/// Longest song name in a download's file name: readable in any file manager, far below
/// header size limits.
const MAX_DOWNLOAD_NAME_CHARS: usize = 100;

/// A song name fit for a Content-Disposition header.
fn ascii_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -_.()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_DOWNLOAD_NAME_CHARS)
        .collect();
    if s.trim().is_empty() {
        "song".into()
    } else {
        s.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=9-2", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}

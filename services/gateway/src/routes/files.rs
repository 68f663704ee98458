//! Downloads of stem tracks and mixes: float WAV as stored (decompressed on the fly), or 16-bit
//! WAV (the default), FLAC or MP3, encoded on first request and kept beside the original (see
//! `encodings`).
//!
//! Every download streams from the object store, so memory does not grow with the file, or from
//! the gateway's local copy of it (`download_cache`) once it has been asked for. HTTP
//! as RFC 9110 says: `GET` and `HEAD`; an `ETag` from the content's SHA-256 (the same bytes in
//! any gateway have the same tag), `If-None-Match` (304); one byte range (206 with
//! `Content-Range`, 416 with `Content-Range: bytes */<size>` when it starts past the end),
//! honoured only when `If-Range` (if sent) names the current tag; `Accept-Ranges: bytes`; a
//! `Content-Disposition` with an ASCII file name and the song's own name in UTF-8.

use std::io;

use actix_web::body::SizedStream;
use actix_web::http::header::{
    self, Charset, ContentDisposition, ContentRange, ContentRangeSpec, DispositionParam,
    DispositionType, EntityTag, ExtendedValue, Header, IfNoneMatch, IfRange,
};
use actix_web::http::Method;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};
use dme_audio::{Format, MODEL_SAMPLE_RATE};
use dme_protocol::records::{MusicRecord, MusicState, TrackRecord};
use dme_protocol::{objects, TrackId};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use utoipa::IntoParams;

use super::encodings::{Download, EncodeError};
use super::openapi::{AudioBytes, DownloadFormat, ErrorBody};
use super::{load_music, parse_id};
use crate::{ApiError, AppState};

/// Bytes read from the object store per piece of a response body (a stored chunk is 512 KiB).
const BODY_CHUNK_BYTES: usize = 128 * 1024;

/// Longest name (of a song or of a stem) in a download's file name: readable in any file
/// manager, far below header size limits.
const MAX_DOWNLOAD_NAME_CHARS: usize = 100;

/// `?format=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// The file's format: `wav` (16-bit, the default), `wav32f` (float, as stored), `flac` or
    /// `mp3`; any case.
    #[param(value_type = Option<DownloadFormat>)]
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

/// The song and its track named by the path (`{music_id}`, `{track_id}`), once the tracks are
/// assembled.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown song or track, or a track not separated yet.
pub(super) async fn ready_track(
    state: &AppState,
    path: &(String, String),
) -> Result<(MusicRecord, TrackRecord), ApiError> {
    let (record, track) = song_track(state, path).await?;
    let track_id = track.track_id;
    if !record.tracks_ready {
        return Err(ApiError::NotFound(format!(
            "track {track_id} is not separated yet"
        )));
    }
    Ok((record, track))
}

/// The song and its track named by the path (`{music_id}`, `{track_id}`), ready or not.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown song or track.
async fn song_track(
    state: &AppState,
    path: &(String, String),
) -> Result<(MusicRecord, TrackRecord), ApiError> {
    let record = load_music(state, &path.0).await?;
    let track_id: TrackId = parse_id(&path.1, "track id")?;
    let track = record
        .tracks
        .iter()
        .find(|t| t.track_id == track_id)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!("song {} has no track {track_id}", record.music_id))
        })?;
    Ok((record, track))
}

/// `GET|HEAD /music/{id}/track/{track_id}?format=`: one stem.
#[utoipa::path(
    method(get, head),
    path = "/music/{music_id}/track/{track_id}",
    tag = "music",
    operation_id = "track",
    params(
        ("music_id" = u64, Path, description = "The song's id"),
        ("track_id" = u64, Path, description = "The track's id"),
        FormatQuery,
        ("Range" = Option<String>, Header,
            description = "One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-512`)"),
        ("If-Range" = Option<String>, Header,
            description = "Honour `Range` only while the file still has this `ETag`"),
        ("If-None-Match" = Option<String>, Header,
            description = "`ETag`s the client holds: 304 when one is current"),
    ),
    responses(
        (status = 200, description = "The whole file (no body for `HEAD`)",
            content(
                (AudioBytes = "audio/wav"),
                (AudioBytes = "audio/flac"),
                (AudioBytes = "audio/mpeg"),
            ),
            headers(
                ("ETag" = String, description = "Strong: from the content's SHA-256, the same \
                    in every gateway"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Content-Disposition" = String, description = "`attachment`, with an ASCII \
                    file name and the song's own name in UTF-8"),
            )),
        (status = 206, description = "The range asked for",
            content(
                (AudioBytes = "audio/wav"),
                (AudioBytes = "audio/flac"),
                (AudioBytes = "audio/mpeg"),
            ),
            headers(("Content-Range" = String, description = "`bytes <first>-<last>/<size>`"))),
        (status = 304, description = "The client's copy is current (`If-None-Match`)"),
        (status = 400, description = "A malformed id or an unknown format", body = ErrorBody),
        (status = 404, description = "No such song or file, or not ready yet", body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */<size>`"))),
        (status = 503, description = "NATS is away", body = ErrorBody),
        (status = 507, description = "The encoding cannot be stored: the store is full",
            body = ErrorBody),
    ),
)]
pub async fn track(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<FormatQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let format = format_of(&query)?;
    let (record, track) = ready_track(&state, &path).await?;
    let object = objects::track(record.music_id, record.incarnation, &track.name);
    let disposition = attachment(&record.name, &[track.name.as_str()], format);
    serve(&req, &state, &object, format, disposition).await
}

/// `GET|HEAD /music/{id}/track/{track_id}/prefix?format=`: as much of one stem, from the
/// song's start, as is separated: while the song separates, a WAV of the stem's finished
/// parts so far (`Dme-Ready-Seconds` says how long it is, `Dme-Complete: false`, never cached);
/// once the stems are assembled, the whole stem as `GET /music/{id}/track/{track_id}` serves
/// it (`Dme-Complete: true`). A player polls it as `ready_s` grows.
#[utoipa::path(
    method(get, head),
    path = "/music/{music_id}/track/{track_id}/prefix",
    tag = "music",
    operation_id = "track_prefix",
    params(
        ("music_id" = u64, Path, description = "The song's id"),
        ("track_id" = u64, Path, description = "The track's id"),
        PrefixFormatQuery,
    ),
    responses(
        (status = 200, description = "The stem from the song's start up to `Dme-Ready-Seconds` \
            (no body for `HEAD`)",
            content((AudioBytes = "audio/wav")),
            headers(
                ("Dme-Ready-Seconds" = String, description = "Seconds of audio in the file"),
                ("Dme-Complete" = String, description = "`true` once it is the whole stem, \
                    else `false`"),
            )),
        (status = 400, description = "A malformed id, or a format other than `wav` and \
            `wav32f`", body = ErrorBody),
        (status = 404, description = "No such song or track, or nothing of it separated yet",
            body = ErrorBody),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn prefix(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PrefixFormatQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let format = match &query.format {
        None => Format::Wav16,
        Some(f) => Format::parse(f)
            .filter(|f| matches!(f, Format::Wav16 | Format::Wav32f))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "format `{f}` cannot be served while the stem grows: use wav or wav32f"
                ))
            })?,
    };
    let (record, track) = song_track(&state, &path).await?;
    let frames = record.ready_frames();
    let seconds = super::music::ready_seconds(frames).to_string();
    if record.tracks_ready {
        let object = objects::track(record.music_id, record.incarnation, &track.name);
        let disposition = attachment(&record.name, &[track.name.as_str()], format);
        let mut answer = serve(&req, &state, &object, format, disposition).await?;
        let headers = answer.headers_mut();
        let value = header::HeaderValue::from_str(&seconds).expect("digits and a point");
        headers.insert(header::HeaderName::from_static(READY_SECONDS), value);
        headers.insert(
            header::HeaderName::from_static(COMPLETE),
            header::HeaderValue::from_static("true"),
        );
        return Ok(answer);
    }
    if frames == 0 || record.state == MusicState::Failed {
        return Err(ApiError::NotFound(format!(
            "nothing of track {} is separated yet (`ready_s` of the song says how much is)",
            track.track_id
        )));
    }
    let header_bytes = dme_audio::wav_stream_header(format, MODEL_SAMPLE_RATE, frames)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let bytes_per_frame = match format {
        Format::Wav32f => 8,
        _ => 4,
    };
    let len = header_bytes.len() as u64 + frames * bytes_per_frame;
    let mut answer = HttpResponse::Ok();
    answer
        .content_type(format.content_type())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((READY_SECONDS, seconds.clone()))
        .insert_header((COMPLETE, "false"))
        .insert_header(attachment(
            &record.name,
            &[&format!("{} (first {seconds} s)", track.name)],
            format,
        ));
    if req.method() == Method::HEAD {
        return Ok(body(answer, len, futures::stream::empty()));
    }
    let (store, music, incarnation) = (state.store.clone(), record.music_id, record.incarnation);
    let stem = track.name.clone();
    let parts = futures::stream::iter(0..record.parts)
        .map(move |index| {
            let (store, name) = (
                store.clone(),
                objects::part(music, incarnation, &stem, index),
            );
            async move {
                let packed = store
                    .get_object(&name)
                    .await
                    .map_err(io::Error::other)?
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{name} is gone"))
                    })?;
                let data = objects::unpack_bytes(&packed).map_err(io::Error::other)?;
                let data = dme_audio::wav_data(format, data).map_err(io::Error::other)?;
                Ok::<_, io::Error>(Bytes::from(data))
            }
        })
        .buffered(PARTS_AHEAD);
    let stream = futures::stream::once(futures::future::ready(Ok(Bytes::from(header_bytes))))
        .chain(parts)
        .inspect_err(|e| tracing::debug!(error = %e, "a stem's prefix ended early"));
    Ok(body(answer, len, stream))
}

/// `Dme-Ready-Seconds`: how much of a stem a prefix holds.
const READY_SECONDS: &str = "dme-ready-seconds";

/// `Dme-Complete`: whether a prefix is the whole stem.
const COMPLETE: &str = "dme-complete";

/// Parts of a prefix fetched ahead of the one being sent (each about 2 MB).
const PARTS_AHEAD: usize = 2;

/// `?format=` of a prefix.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PrefixFormatQuery {
    /// `wav` (16-bit, the default) or `wav32f` (float, as separated); any case.
    #[param(value_type = Option<String>)]
    format: Option<String>,
}

/// `GET|HEAD /music/{id}/mix/{key}?format=`: the mix of a selection.
#[utoipa::path(
    method(get, head),
    path = "/music/{music_id}/mix/{key}",
    tag = "music",
    operation_id = "mix",
    params(
        ("music_id" = u64, Path, description = "The song's id"),
        ("key" = String, Path, description = "The selection's key (its `key`, the end of \
            `final`)", example = "0-2~-3.5-3"),
        FormatQuery,
        ("Range" = Option<String>, Header,
            description = "One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-512`)"),
        ("If-Range" = Option<String>, Header,
            description = "Honour `Range` only while the file still has this `ETag`"),
        ("If-None-Match" = Option<String>, Header,
            description = "`ETag`s the client holds: 304 when one is current"),
    ),
    responses(
        (status = 200, description = "The whole file (no body for `HEAD`)",
            content(
                (AudioBytes = "audio/wav"),
                (AudioBytes = "audio/flac"),
                (AudioBytes = "audio/mpeg"),
            ),
            headers(
                ("ETag" = String, description = "Strong: from the content's SHA-256, the same \
                    in every gateway"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Content-Disposition" = String, description = "`attachment`, with an ASCII \
                    file name and the song's own name in UTF-8"),
            )),
        (status = 206, description = "The range asked for",
            content(
                (AudioBytes = "audio/wav"),
                (AudioBytes = "audio/flac"),
                (AudioBytes = "audio/mpeg"),
            ),
            headers(("Content-Range" = String, description = "`bytes <first>-<last>/<size>`"))),
        (status = 304, description = "The client's copy is current (`If-None-Match`)"),
        (status = 400, description = "A malformed id or an unknown format", body = ErrorBody),
        (status = 404, description = "No such song or file, or not ready yet", body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */<size>`"))),
        (status = 503, description = "NATS is away", body = ErrorBody),
        (status = 507, description = "The encoding cannot be stored: the store is full",
            body = ErrorBody),
    ),
)]
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
    let object = objects::mix(record.music_id, record.incarnation, &mix.key);
    let disposition = attachment(&record.name, &names, format);
    serve(&req, &state, &object, format, disposition).await
}

/// Finds (or makes) `object` in `format` and answers the request from it: from the gateway's
/// [`DownloadCache`](crate::download_cache::DownloadCache) when the file is there, else from
/// the object store, starting a copy into the cache for the next requests (a `GET` only).
/// The caller has checked that the song's current record names `object`.
async fn serve(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    object: &str,
    format: Format,
    disposition: ContentDisposition,
) -> Result<HttpResponse, ApiError> {
    let key = format!("{object}.{format}");
    if let Some(cached) = state.downloads.get(&key) {
        let file = Servable {
            size: cached.size,
            digest: cached.digest,
            body: Body::Local(cached.file),
        };
        return Ok(respond(req, file, format.content_type(), disposition));
    }
    let download = open_download(state, object, format)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{object} is gone")))?;
    if req.method() == Method::GET {
        let (filler, object) = (state.clone(), object.to_string());
        let open = async move {
            match open_download(&filler, &object, format).await {
                Ok(Some(d)) => Ok(d.body),
                Ok(None) => Err(io::Error::new(io::ErrorKind::NotFound, "gone")),
                Err(e) => Err(io::Error::other(e.to_string())),
            }
        };
        let digest = download.digest.clone();
        state.downloads.fill(&key, download.size, digest, open);
    }
    let file = Servable {
        size: download.size,
        digest: download.digest,
        body: Body::Store(download.body),
    };
    Ok(respond(req, file, format.content_type(), disposition))
}

/// `object` in `format` from the object store (see [`super::encodings::Encodings::reader`]).
async fn open_download(
    state: &AppState,
    object: &str,
    format: Format,
) -> Result<Option<Download>, ApiError> {
    state
        .encodings
        .reader(&state.store, object, format)
        .await
        .map_err(|e| match e {
            // A full store (507) or an unreachable one (503) says so; the rest is ours (500).
            EncodeError::Store(store) => ApiError::from(store),
            other => ApiError::Internal(other.into()),
        })
}

/// A file to answer with: its size, its content digest (the `ETag`), and where its bytes are.
struct Servable {
    size: u64,
    digest: Option<String>,
    body: Body,
}

/// Where a download's bytes are read from.
enum Body {
    /// The object store, forward only from the first byte.
    Store(Box<dyn AsyncRead + Unpin>),
    /// A local copy, read at any offset.
    Local(std::fs::File),
}

/// What the request asks of the file, once its conditions are weighed.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// All of it (200).
    Whole,
    /// Bytes `start..=end` (206).
    Part { start: u64, end: u64 },
    /// A range that starts past the end (416).
    Unsatisfiable,
}

/// The answer to `req` from `download`: 304, 200, 206 or 416 with the headers RFC 9110 asks
/// for; the body streams from the object store (none for `HEAD`).
fn respond(
    req: &HttpRequest,
    download: Servable,
    content_type: &str,
    disposition: ContentDisposition,
) -> HttpResponse {
    let total = download.size;
    let tag = download.digest.as_deref().and_then(entity_tag);
    if let Some(tag) = &tag {
        if none_match(req, tag) {
            return HttpResponse::NotModified()
                .insert_header(header::ETag(tag.clone()))
                .finish();
        }
    }
    // A range applies to GET only (RFC 9110 §14.2), and only to the representation the client
    // already holds part of.
    let wanted = if req.method() == Method::GET && if_range_holds(req, tag.as_ref()) {
        req.headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map_or(Wanted::Whole, |v| wanted_range(v, total))
    } else {
        Wanted::Whole
    };
    let (mut answer, start, len) = match wanted {
        Wanted::Whole => (HttpResponse::Ok(), 0, total),
        Wanted::Part { start, end } => {
            let mut answer = HttpResponse::PartialContent();
            answer.insert_header(ContentRange(ContentRangeSpec::Bytes {
                range: Some((start, end)),
                instance_length: Some(total),
            }));
            (answer, start, end - start + 1)
        }
        Wanted::Unsatisfiable => return unsatisfiable(total),
    };
    answer
        .content_type(content_type)
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(disposition);
    if let Some(tag) = tag {
        answer.insert_header(header::ETag(tag));
    }
    if req.method() == Method::HEAD {
        // The length a GET would send; the reader is dropped unread.
        return body(answer, len, futures::stream::empty());
    }
    match download.body {
        Body::Store(reader) => body(answer, len, object_bytes(reader, start, len)),
        Body::Local(file) => body(answer, len, local_bytes(file, start, len)),
    }
}

/// `answer` with a body of exactly `len` bytes from `stream`.
fn body(
    mut answer: HttpResponseBuilder,
    len: u64,
    stream: impl Stream<Item = io::Result<Bytes>> + 'static,
) -> HttpResponse {
    answer.body(SizedStream::new(len, stream.boxed_local()))
}

/// 416 with the JSON error and `Content-Range: bytes */<total>`.
fn unsatisfiable(total: u64) -> HttpResponse {
    let error = ApiError::RangeNotSatisfiable(format!(
        "the range asked for starts past the end of the file ({total} bytes)"
    ));
    let mut answer = error.error_response();
    let range = ContentRange(ContentRangeSpec::Bytes {
        range: None,
        instance_length: Some(total),
    });
    if let Ok(value) = header::TryIntoHeaderValue::try_into_value(range) {
        answer.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    answer
}

/// `len` bytes of `reader` from byte `start`: the bytes before it are read and dropped (the
/// object store reads forward only), lazily, once the headers are sent.
fn object_bytes(
    mut reader: Box<dyn AsyncRead + Unpin>,
    start: u64,
    len: u64,
) -> impl Stream<Item = io::Result<Bytes>> {
    let positioned = async move {
        let skipped =
            tokio::io::copy(&mut (&mut reader).take(start), &mut tokio::io::sink()).await?;
        if skipped < start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object is shorter than its size",
            ));
        }
        Ok(ReaderStream::with_capacity(
            reader.take(len),
            BODY_CHUNK_BYTES,
        ))
    };
    futures::stream::once(positioned).try_flatten()
}

/// Longest range of a local file read at once, in the handler: a read of the page cache (or a
/// few disk blocks), microseconds, where handing it to a blocking thread would cost more. Longer
/// ones stream through tokio's file reads.
const LOCAL_READ_AT_ONCE_BYTES: u64 = 256 * 1024;

/// `len` bytes of the local file `file` from byte `start`.
fn local_bytes(file: std::fs::File, start: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> {
    if len <= LOCAL_READ_AT_ONCE_BYTES {
        let mut bytes = vec![0; len as usize];
        let read = std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, start);
        return futures::stream::once(futures::future::ready(read.map(|()| Bytes::from(bytes))))
            .left_stream();
    }
    let positioned = async move {
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(start)).await?;
        Ok::<_, io::Error>(ReaderStream::with_capacity(
            file.take(len),
            BODY_CHUNK_BYTES,
        ))
    };
    futures::stream::once(positioned)
        .try_flatten()
        .right_stream()
}

/// The strong entity tag of an object whose NATS digest is `digest` (`SHA-256=<base64url>`),
/// or `None` for a digest that cannot be one.
fn entity_tag(digest: &str) -> Option<EntityTag> {
    let hash = digest.strip_prefix("SHA-256=")?;
    let valid = !hash.is_empty()
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b));
    valid.then(|| EntityTag::new_strong(format!("sha256-{hash}")))
}

/// Whether `If-None-Match` names `tag` (weak comparison) or is `*`: the client's copy is
/// current (RFC 9110 §13.1.2). A malformed header is ignored.
pub(super) fn none_match(req: &HttpRequest, tag: &EntityTag) -> bool {
    match IfNoneMatch::parse(req) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(tag)),
        Err(_) => false,
    }
}

/// Whether a `Range` may be honoured under `If-Range` (RFC 9110 §13.1.5): no `If-Range`, or
/// one that names `tag` by strong comparison. A date never matches: downloads carry no
/// `Last-Modified`.
fn if_range_holds(req: &HttpRequest, tag: Option<&EntityTag>) -> bool {
    if !req.headers().contains_key(header::IF_RANGE) {
        return true;
    }
    match (IfRange::parse(req), tag) {
        (Ok(IfRange::EntityTag(asked)), Some(tag)) => asked.strong_eq(tag),
        _ => false,
    }
}

/// What a `Range` header value asks of a file of `total` bytes (RFC 9110 §14.1.2):
/// - a malformed value or a unit other than `bytes` is ignored: [`Wanted::Whole`];
/// - several ranges are answered with the whole file too (allowed by §14.2; a multipart
///   answer buys players nothing);
/// - one range that starts at or past the end (or a suffix of 0, or any range of an empty file)
///   is [`Wanted::Unsatisfiable`], as is a range whose end comes before its start (an invalid
///   range, which §14.2 lets a server reject);
/// - otherwise the range, its end clamped to the file.
fn wanted_range(value: &str, total: u64) -> Wanted {
    let Some((unit, set)) = value.split_once('=') else {
        return Wanted::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Wanted::Whole;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs.as_slice() else {
        return Wanted::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let (Some(first), Some(last)) = (position(first), position(last)) else {
        return Wanted::Whole;
    };
    match (first, last) {
        (None, None) => Wanted::Whole,
        // A suffix: the last `n` bytes.
        (None, Some(n)) if n > 0 && total > 0 => Wanted::Part {
            start: total.saturating_sub(n),
            end: total - 1,
        },
        (None, Some(_)) => Wanted::Unsatisfiable,
        (Some(start), last) => {
            let end = last.unwrap_or(u64::MAX);
            if start >= total || end < start {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start,
                    end: end.min(total - 1),
                }
            }
        }
    }
}

/// A byte position of a range: `Some(None)` when absent, `Some(Some(n))` for digits (a number
/// past `u64::MAX` is `u64::MAX`: past the end of any file), `None` when malformed.
fn position(s: &str) -> Option<Option<u64>> {
    if s.is_empty() {
        return Some(None);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Some(s.parse().unwrap_or(u64::MAX)))
}

/// `Content-Disposition: attachment` naming the file `<song> - <parts joined by +>.<ext>`: an
/// ASCII `filename` any client reads, and `filename*` with the names as they are in UTF-8
/// (less what a file system or terminal would choke on).
fn attachment(song: &str, parts: &[&str], format: Format) -> ContentDisposition {
    let name = |clean: fn(&str, &str) -> String| {
        let parts: Vec<String> = parts.iter().map(|p| clean(p, "track")).collect();
        format!(
            "{} - {}.{}",
            clean(song, "song"),
            parts.join("+"),
            format.extension()
        )
    };
    ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![
            DispositionParam::Filename(name(ascii_name)),
            DispositionParam::FilenameExt(ExtendedValue {
                charset: Charset::Ext("UTF-8".into()),
                language_tag: None,
                value: name(readable_name).into_bytes(),
            }),
        ],
    }
}

/// `name` in plain ASCII letters, digits and ` -_.()` (anything else becomes `_`), at most
/// [`MAX_DOWNLOAD_NAME_CHARS`]; `fallback` when nothing is left.
fn ascii_name(name: &str, fallback: &str) -> String {
    clean_name(name, fallback, |c| {
        c.is_ascii_alphanumeric() || " -_.()".contains(c)
    })
}

/// `name` as it is, less control characters, path separators and quotes (each becomes `_`),
/// at most [`MAX_DOWNLOAD_NAME_CHARS`]; `fallback` when nothing is left.
fn readable_name(name: &str, fallback: &str) -> String {
    clean_name(name, fallback, |c| !c.is_control() && !"/\\\"".contains(c))
}

fn clean_name(name: &str, fallback: &str, keep: impl Fn(char) -> bool) -> String {
    let s: String = name
        .chars()
        .map(|c| if keep(c) { c } else { '_' })
        .take(MAX_DOWNLOAD_NAME_CHARS)
        .collect();
    let s = s.trim().trim_matches('.');
    if s.is_empty() {
        fallback.to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> Wanted {
        Wanted::Part { start, end }
    }

    #[test]
    fn one_range_is_a_part_clamped_to_the_file() {
        assert_eq!(wanted_range("bytes=0-9", 100), part(0, 9));
        assert_eq!(wanted_range("bytes=90-", 100), part(90, 99));
        assert_eq!(wanted_range("bytes=-10", 100), part(90, 99));
        assert_eq!(wanted_range("bytes=-1000", 100), part(0, 99));
        assert_eq!(wanted_range("bytes=50-500", 100), part(50, 99));
        assert_eq!(wanted_range("Bytes = 1-2", 100), part(1, 2));
        assert_eq!(
            wanted_range("bytes=0-18446744073709551616", 100),
            part(0, 99)
        );
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        for range in [
            "bytes=100-",
            "bytes=9-2",
            "bytes=-0",
            "bytes=18446744073709551616-",
        ] {
            assert_eq!(wanted_range(range, 100), Wanted::Unsatisfiable, "{range}");
        }
        assert_eq!(wanted_range("bytes=0-", 0), Wanted::Unsatisfiable);
        assert_eq!(wanted_range("bytes=-5", 0), Wanted::Unsatisfiable);
    }

    #[test]
    fn malformed_ranges_other_units_and_several_ranges_are_the_whole_file() {
        for range in [
            "items=0-1",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=1",
            "=0-1",
            "bytes=0-1,5-9",
        ] {
            assert_eq!(wanted_range(range, 100), Wanted::Whole, "{range}");
        }
    }

    #[test]
    fn tags_come_from_sha256_digests_only() {
        let tag = entity_tag("SHA-256=abc-_=").expect("a tag");
        assert_eq!(tag.to_string(), "\"sha256-abc-_=\"");
        assert!(entity_tag("MD5=abc").is_none());
        assert!(entity_tag("SHA-256=a\"b").is_none());
        assert!(entity_tag("SHA-256=").is_none());
    }

    #[test]
    fn file_names_are_safe_in_ascii_and_kept_in_utf8() {
        let header = attachment("Ünïcode \"/\\ song\r\n", &["drums", "bass"], Format::Flac);
        let text = header.to_string();
        assert!(text.starts_with("attachment; "), "{text}");
        assert!(
            text.contains("filename=\"_n_code ___ song__ - drums+bass.flac\""),
            "{text}"
        );
        assert!(text.contains("filename*=UTF-8''%C3%9C"), "{text}");
        assert!(!text.contains('\r') && !text.contains('\n'), "{text}");
        assert_eq!(ascii_name("..", "song"), "song");
        assert_eq!(readable_name("  ", "track"), "track");
    }
}

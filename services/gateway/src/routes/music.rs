//! `/music`: upload, list, progress and selection.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use dme_audio::MODEL_SAMPLE_RATE;
use dme_protocol::messages::{MixRequest, ProgressEvent};
use dme_protocol::records::{Gain, MixRecord, ModelInfo, MusicRecord, MusicState, TrackRecord};
use dme_protocol::{now_ms, objects, subjects, Incarnation, MusicId, TrackId};
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{AudioBytes, ErrorBody, Selection, SongState, UploadForm};
use super::{base_url, load_music, models};
use crate::admission::{self, Cost};
use crate::upload;
use crate::{ApiError, AppState};

/// Selections a song keeps: beyond it the oldest mixed ones (with their files) are dropped, and
/// a new selection is refused (429) while this many still wait to be mixed.
const MAX_MIXES: usize = 16;

/// Largest body of a selection: room for thousands of track ids, while nobody can make the
/// gateway buffer megabytes (and the answer stays a JSON error, not the framework's plain text).
const MAX_SELECTION_BYTES: usize = 64 * 1024;

/// One track in an answer.
#[derive(Serialize, ToSchema)]
struct Track {
    /// The stem's name.
    #[schema(example = "drums")]
    name: String,
    /// Its id.
    #[schema(value_type = u64, example = 3164892)]
    track_id: TrackId,
}

/// api.yaml's `Musica`, extended with what the probe found and where processing is.
#[derive(Serialize, ToSchema)]
pub(crate) struct Music {
    /// The song's id, derived from the file's content and its model: the same bytes with the
    /// same model are the same song.
    #[schema(value_type = u64, example = 123345678)]
    music_id: MusicId,
    /// Its title (from its tags, else the file's name).
    #[schema(example = "Another One Bites the Dust")]
    name: String,
    /// Its artist (from its tags; may be empty).
    #[schema(example = "Queen")]
    band: String,
    /// One track per stem of the model.
    tracks: Vec<Track>,
    /// Its length in seconds.
    duration_s: f64,
    /// Its sample rate as uploaded.
    sample_rate: u32,
    /// Its channels as uploaded.
    channels: u16,
    /// Its codec.
    #[schema(example = "mp3")]
    codec: String,
    /// The file's size in bytes.
    size: u64,
    /// Where it is.
    #[schema(value_type = SongState)]
    state: &'static str,
    /// Percent done, 0 to 100.
    #[schema(maximum = 100)]
    progress: u8,
}

impl From<&MusicRecord> for Music {
    fn from(r: &MusicRecord) -> Self {
        Music {
            music_id: r.music_id,
            name: r.name.clone(),
            band: r.band.clone(),
            tracks: r
                .tracks
                .iter()
                .map(|t| Track {
                    name: t.name.clone(),
                    track_id: t.track_id,
                })
                .collect(),
            duration_s: r.duration_s,
            sample_rate: r.sample_rate,
            channels: r.channels,
            codec: r.codec.clone(),
            size: r.size,
            state: r.state.as_str(),
            progress: r.progress(),
        }
    }
}

/// An instrument link (api.yaml's `Instrument`).
#[derive(Serialize, ToSchema)]
struct Instrument {
    /// The stem's name.
    #[schema(example = "vocals")]
    name: String,
    /// The link to its download (`?format=` for another format).
    #[schema(
        format = "uri",
        example = "http://localhost:8080/music/123345678/track/3164892"
    )]
    track: String,
    /// Its track id.
    #[schema(value_type = u64)]
    track_id: TrackId,
}

/// api.yaml's `Progress`, extended.
#[derive(Serialize, ToSchema)]
pub(crate) struct Progress {
    /// The song's id.
    #[schema(value_type = u64)]
    music_id: MusicId,
    /// Its title.
    name: String,
    /// Its artist.
    band: String,
    /// Percent done, 0 to 100: the share of segments separated, held at 99 until the stems
    /// are assembled and the latest selection is mixed (so at 100 every link is there).
    #[schema(maximum = 100)]
    progress: u8,
    /// Where it is.
    #[schema(value_type = SongState)]
    state: &'static str,
    /// Why it failed or stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    error: Option<String>,
    /// A link per stem once the stems are assembled (empty before).
    instruments: Vec<Instrument>,
    /// The link to the latest selection's mix, once it is mixed.
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = "uri",
        example = "http://localhost:8080/music/123345678/mix/0-2-3")]
    final_mix: Option<String>,
    /// The latest selection's tracks.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<u64>)]
    selection: Option<Vec<TrackId>>,
    /// The latest selection's gains, aligned with `selection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<f64>)]
    gains_db: Option<Vec<f64>>,
    /// Segments the song is cut into (0 until it is cut).
    segments: u32,
    /// Segments separated.
    segments_done: u32,
    /// Seconds from the song's start that every stem can be played already:
    /// `GET /music/{music_id}/track/{track_id}/prefix` serves them while the rest separates
    /// (the whole song once the stems are assembled).
    ready_s: f64,
    /// One track per stem.
    tracks: Vec<Track>,
    /// Its length in seconds.
    duration_s: f64,
}

/// `POST /music`: store a song, answer its id and tracks; the same bytes again give the same id
/// (and cost nothing new, so they are never refused for want of room). A new song is admitted
/// first (`admission`): 429 when its client has too much in work, 507 when the store is too
/// full.
#[utoipa::path(
    post,
    path = "/music",
    tag = "music",
    operation_id = "submit",
    params(
        ("name" = Option<String>, Query,
            description = "The file's name for a raw body (else `X-File-Name`, else the \
                `filename` of `Content-Disposition`)"),
        ("model" = Option<String>, Query,
            description = "The model to separate the song with, by name or fingerprint (see \
                `GET /models`); else the default (`DME_DEFAULT_MODEL`), else the only model \
                offered. The same file with two models is two songs"),
        ("X-File-Name" = Option<String>, Header, description = "The file's name for a raw body"),
    ),
    request_body(
        description = "The audio file: raw bytes (any content type but multipart), or a \
            `multipart/form-data` form whose first file part is the song",
        content(
            (AudioBytes = "application/octet-stream"),
            (UploadForm = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "The song stored (or found: the same bytes again)",
            body = Music),
        (status = 400, description = "A malformed body (a form without a file), a model that \
            is not offered, or no model named while several are offered and none is the \
            default (the message lists the models)", body = ErrorBody),
        (status = 408, description = "The body paused or took too long", body = ErrorBody),
        (status = 409, description = "A different file already has this id", body = ErrorBody),
        (status = 413, description = "Over the size or duration limit, or a song that could \
            never fit in the store", body = ErrorBody),
        (status = 415, description = "Not audio, or a codec dme cannot decode", body = ErrorBody),
        (status = 429, description = "This client has too much work in flight",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 503, description = "No model is registered yet, or NATS is away",
            body = ErrorBody),
        (status = 507, description = "The store is too full for a new song",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds"))),
    ),
)]
pub async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let requested = requested_model(&req)?;
    // Chosen once the body is read: an answer sent while a client still sends a large body
    // reaches it as a reset connection, not as the JSON that says what to change.
    let spooled = upload::receive(&req, payload, &state).await?;
    let model = models::choose(&state, requested.as_deref()).await?;
    let client = admission::client_key(&req, &state.config.trusted_proxies);
    Ok(HttpResponse::Ok().json(store(&state, spooled, client, &model).await?))
}

/// The `model` query parameter of an upload, if any.
fn requested_model(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    Ok(query.get("model").cloned())
}

/// Stores a received upload as a song of `model` (see [`models::choose`]) for `client` (whose
/// work in flight admission counts) and answers it as `POST /music` does: the HTTP and the NATS
/// upload both end here. The song's id comes from the file's content and the model: the same
/// file with another model is another song.
///
/// # Errors
/// 413 for a song longer than the limit, 415 for what is not audio, 409 for a hash collision,
/// 429/507 from admission, 503 when NATS is away.
pub(crate) async fn store(
    state: &AppState,
    spooled: upload::Spooled,
    client: String,
    model: &ModelInfo,
) -> Result<Music, ApiError> {
    let music_id = MusicId::of_upload(&spooled.hash, &model.fingerprint);
    let hash = spooled.hash.to_hex().to_string();
    let _storing = UploadInFlight::wait_for_turn(music_id).await;
    if let Some(existing) = state.store.music(music_id).await? {
        return existing_upload(state, existing, &hash, model).await;
    }
    let probe = upload::probe(&spooled).await?;
    if probe.duration_s > state.config.max_duration_s {
        return Err(ApiError::TooLarge(format!(
            "the song lasts {:.0} s; the limit is {:.0} s",
            probe.duration_s, state.config.max_duration_s
        )));
    }
    // Tags are the client's words too: cleaned as a file name is, so no control character,
    // bidirectional override or megabyte of text reaches a page, a log line or a header.
    let name = probe
        .title
        .as_deref()
        .map(upload::sanitise_text)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            std::path::Path::new(&spooled.file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "untitled".into());
    let cost = Cost {
        bytes: spooled.size,
        seconds: probe.duration_s,
        store_bytes: admission::peak_store_bytes(
            spooled.size,
            probe.duration_s,
            model.sources.len(),
            model.segment,
        ),
    };
    // Held until the record is written, so this gateway's concurrent uploads count it.
    let _reservation = admission::admit(state, &client, cost).await?;
    let record = MusicRecord {
        music_id,
        content_hash: hash.clone(),
        name: name.trim().to_string(),
        band: probe
            .artist
            .as_deref()
            .map(upload::sanitise_text)
            .unwrap_or_default(),
        file_name: spooled.file_name.clone(),
        size: spooled.size,
        codec: probe.codec.clone(),
        sample_rate: probe.sample_rate,
        channels: probe.channels,
        duration_s: probe.duration_s,
        tracks: TrackRecord::for_sources(music_id, &model.sources),
        model: model.fingerprint.clone(),
        created_ms: now_ms(),
        updated_ms: now_ms(),
        state: MusicState::Queued,
        error: None,
        plan: None,
        separated: Vec::new(),
        parts: 0,
        tracks_ready: false,
        mixes: Vec::new(),
        incarnation: Incarnation::fresh(),
        client: Some(client),
    };
    let original = objects::original(music_id);
    // An original of this size under this content-derived name is these bytes, stored by an
    // upload that stopped before its record (or by another gateway a moment ago): replacing it
    // would only leave its chunks behind, or pull them from under a splitter reading them.
    if state.store.object_size(&original).await? != Some(spooled.size) {
        let mut file = tokio::fs::File::open(&spooled.file)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        state.store.put_object_from(&original, &mut file).await?;
    }
    if !state.store.create_music(&record).await? {
        // Another client uploaded the same bytes at the same moment.
        let existing = state.store.music(music_id).await?.ok_or_else(|| {
            ApiError::Internal(format!("record {music_id} vanished after a create race").into())
        })?;
        return existing_upload(state, existing, &hash, model).await;
    }
    dme_storage::song::publish_uploaded(&state.store, &record).await?;
    tracing::info!(%music_id, name = %record.name, size = record.size, codec = %record.codec, "song uploaded");
    Ok(Music::from(&record))
}

/// Songs being stored by this gateway, each with the lock its uploads queue on.
static IN_FLIGHT: LazyLock<Mutex<HashMap<MusicId, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// This gateway's turn to store a song: many clients sending the same file at once are served
/// one after another, so the first stores the original and the record and the others find the
/// record. (Gateways do not share this; across gateways the existing-original check and the
/// atomic record creation keep one record and one original.)
pub(super) struct UploadInFlight {
    music_id: MusicId,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl UploadInFlight {
    pub(super) async fn wait_for_turn(music_id: MusicId) -> UploadInFlight {
        let lock = IN_FLIGHT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(music_id)
            .or_default()
            .clone();
        UploadInFlight {
            music_id,
            _turn: lock.lock_owned().await,
        }
    }
}

impl Drop for UploadInFlight {
    fn drop(&mut self) {
        let mut in_flight = IN_FLIGHT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Held by the map and by this turn only: nobody is queued behind it.
        if in_flight
            .get(&self.music_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            in_flight.remove(&self.music_id);
        }
    }
}

async fn existing_upload(
    state: &AppState,
    existing: MusicRecord,
    hash: &str,
    model: &ModelInfo,
) -> Result<Music, ApiError> {
    if existing.content_hash != hash || existing.model != model.fingerprint {
        return Err(ApiError::Conflict(format!(
            "a different file already has id {}; this upload cannot be stored",
            existing.music_id
        )));
    }
    if existing.state == MusicState::Queued {
        // The first upload's event may have been lost between the record and the publish.
        dme_storage::song::publish_uploaded(&state.store, &existing).await?;
    }
    Ok(Music::from(&existing))
}

/// `GET /music`: every song, oldest first.
#[utoipa::path(
    get,
    path = "/music",
    tag = "music",
    operation_id = "listAll",
    responses(
        (status = 200, description = "Every song, oldest first", body = Vec<Music>),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(all(&state).await?))
}

/// Every song, oldest first, as `GET /music` answers.
///
/// # Errors
/// 503 when NATS is away.
pub(crate) async fn all(state: &AppState) -> Result<Vec<Music>, ApiError> {
    let mut records = state.store.list_music().await?;
    records.sort_by_key(|r| (r.created_ms, r.music_id));
    Ok(records.iter().map(Music::from).collect())
}

/// `GET /music/{id}`: progress, links to finished stems, and the mix link when it is ready.
#[utoipa::path(
    get,
    path = "/music/{music_id}",
    tag = "music",
    operation_id = "progress",
    params(("music_id" = u64, Path, description = "The song's id")),
    responses(
        (status = 200, description = "Where the song is, with its links", body = Progress),
        (status = 400, description = "A malformed id", body = ErrorBody),
        (status = 404, description = "Music not found", body = ErrorBody),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn progress(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let base = base_url(&req, &state);
    Ok(HttpResponse::Ok().json(progress_of(&state, &path, &base).await?))
}

/// `frames` at the model's rate as seconds, to the millisecond (`ready_s`).
pub(crate) fn ready_seconds(frames: u64) -> f64 {
    (frames * 1000 / u64::from(MODEL_SAMPLE_RATE)) as f64 / 1000.0
}

/// The song whose id is `raw` as `GET /music/{id}` answers, its links under `base`.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one, 503 when NATS is away.
pub(crate) async fn progress_of(
    state: &AppState,
    raw: &str,
    base: &str,
) -> Result<Progress, ApiError> {
    let record = load_music(state, raw).await?;
    let instruments = if record.tracks_ready {
        record
            .tracks
            .iter()
            .map(|t| Instrument {
                name: t.name.clone(),
                track: format!("{base}/music/{}/track/{}", record.music_id, t.track_id),
                track_id: t.track_id,
            })
            .collect()
    } else {
        Vec::new()
    };
    let stalled = record.stalled(now_ms(), state.config.stall_after_s * 1000);
    let latest = record.latest_mix();
    let final_mix = latest
        .filter(|m| m.ready)
        .map(|m| format!("{base}/music/{}/mix/{}", record.music_id, m.key));
    let body = Progress {
        music_id: record.music_id,
        name: record.name.clone(),
        band: record.band.clone(),
        progress: record.progress(),
        state: if stalled {
            "stalled"
        } else {
            record.state.as_str()
        },
        error: if stalled {
            Some(format!(
                "no progress for over {} s: no separator may be running, or a service is down",
                state.config.stall_after_s
            ))
        } else {
            record.error.clone()
        },
        instruments,
        final_mix,
        selection: latest.map(|m| m.tracks.clone()),
        gains_db: latest.map(MixRecord::gains_db),
        segments: record.separated.len() as u32,
        segments_done: record.segments_done(),
        ready_s: ready_seconds(record.ready_frames()),
        tracks: Music::from(&record).tracks,
        duration_s: record.duration_s,
    };
    Ok(body)
}

/// `POST /music/{id}`: mix a selection of the song's tracks. The body is the original
/// contract's JSON array of track ids (each at 0 dB), or `{"tracks": [{"track_id": <id>,
/// "gain_db": <dB>}, ...]}` (see [`parse_selection`]); a track left out is not in the mix.
/// Answers at once; separation started at upload, and a selection already mixed with the same
/// gains (its key) is not mixed again.
#[utoipa::path(
    post,
    path = "/music/{music_id}",
    tag = "music",
    operation_id = "process",
    params(("music_id" = u64, Path, description = "The song's id")),
    request_body(content = Selection, content_type = "application/json",
        description = "The tracks to mix (at most 64 KiB of JSON)"),
    responses(
        (status = 200, description = "The selection recorded; its mix follows", body = Selected),
        (status = 400, description = "A malformed id or selection (the reason says which)",
            body = ErrorBody),
        (status = 404, description = "Music not found", body = ErrorBody),
        (status = 405, description = "Track not found: a track the song does not have",
            body = ErrorBody),
        (status = 413, description = "A selection over 64 KiB", body = ErrorBody),
        (status = 429, description = "16 selections of the song still wait to be mixed",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn select(
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_selection(payload).await?;
    Ok(HttpResponse::Ok().json(choose(&state, &path, &body).await?))
}

/// The answer to a selection.
#[derive(Serialize, ToSchema)]
pub(crate) struct Selected {
    /// The song's id.
    #[schema(value_type = u64)]
    music_id: MusicId,
    /// The tracks chosen, each once, in the order given.
    #[schema(value_type = Vec<u64>)]
    tracks: Vec<TrackId>,
    /// Their gains in dB (0.1 dB steps), aligned with `tracks`.
    gains_db: Vec<f64>,
    /// The mix's key: its link is `/music/{music_id}/mix/{key}`.
    #[schema(example = "0-2~-3.5-3")]
    key: String,
    /// Where the song is now.
    #[schema(value_type = SongState)]
    state: &'static str,
    /// Percent done, 0 to 100.
    #[schema(maximum = 100)]
    progress: u8,
}

/// Records the selection `body` (see [`parse_selection`]) of the song whose id is `raw` and
/// has it mixed, as `POST /music/{id}` does.
///
/// # Errors
/// 400 for a malformed id or body, 404 for an unknown song, 405 for a track the song does not
/// have (the original contract's status), 429 when [`MAX_MIXES`] selections wait to be mixed.
pub(crate) async fn choose(state: &AppState, raw: &str, body: &[u8]) -> Result<Selected, ApiError> {
    // The HTTP body is read within this bound already; a NATS request's is checked here.
    if body.len() > MAX_SELECTION_BYTES {
        return Err(ApiError::TooLarge(format!(
            "a selection is at most {MAX_SELECTION_BYTES} bytes of JSON"
        )));
    }
    let record = load_music(state, raw).await?;
    let not_the_songs = |t: &dyn std::fmt::Display| {
        ApiError::TrackNotFound(format!("song {} has no track {t}", record.music_id))
    };
    // Each track is checked as it is read, so what is deduplicated is a handful of stems.
    let chosen = parse_selection(body, |track| match track {
        TrackRef::Id(id) if record.stem_index(*id).is_some() => Ok(*id),
        TrackRef::Id(id) => Err(not_the_songs(id)),
        TrackRef::Name(name) => record
            .tracks
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .map(|t| t.track_id)
            .ok_or_else(|| {
                let names: Vec<&str> = record.tracks.iter().map(|t| t.name.as_str()).collect();
                ApiError::TrackNotFound(format!(
                    "song {} has no track named {name:?}; its tracks are {}",
                    record.music_id,
                    names.join(", ")
                ))
            }),
    })?;
    let mut stems = Vec::with_capacity(chosen.len());
    for (t, gain) in &chosen {
        let i = record.stem_index(*t).ok_or_else(|| not_the_songs(t))?;
        stems.push((i, *gain));
    }
    let key = objects::mix_key(&stems);
    let unique: Vec<TrackId> = chosen.iter().map(|(t, _)| *t).collect();
    let gains: Vec<Gain> = if chosen.iter().all(|(_, g)| *g == Gain::UNITY) {
        Vec::new()
    } else {
        chosen.iter().map(|(_, g)| *g).collect()
    };
    let (mut evicted, mut crowded) = (Vec::new(), false);
    let updated = state
        .store
        .update_music(record.music_id, |m| {
            evicted.clear();
            let existing = m.mixes.iter().position(|x| x.key == key);
            crowded =
                existing.is_none() && m.mixes.iter().filter(|x| !x.ready).count() >= MAX_MIXES;
            if crowded {
                return false;
            }
            let mix = match existing {
                Some(i) => m.mixes.remove(i),
                None => MixRecord {
                    key: key.clone(),
                    tracks: unique.clone(),
                    gains: gains.clone(),
                    ready: false,
                },
            };
            if !mix.ready && m.tracks_ready && m.state == MusicState::Done {
                m.state = MusicState::Mixing;
            }
            m.mixes.push(mix);
            // The oldest mixed selections make room: a record (and every event) stays small,
            // and so does what one song keeps in the store, however many gains are tried.
            while m.mixes.len() > MAX_MIXES {
                let Some(i) = m.mixes[..m.mixes.len() - 1].iter().position(|x| x.ready) else {
                    break;
                };
                evicted.push(m.mixes.remove(i).key);
            }
            m.updated_ms = now_ms();
            true
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no music with id {}", record.music_id)))?;
    if crowded {
        return Err(ApiError::TooManyRequests {
            reason: format!(
                "{MAX_MIXES} selections of song {} are still waiting to be mixed: try again \
                 when they are done",
                record.music_id
            ),
            retry_after_s: 10,
        });
    }
    for key in &evicted {
        let mix = objects::mix(updated.music_id, updated.incarnation, key);
        for format in dme_audio::Format::ALL {
            let _ = state
                .store
                .delete_object(&objects::encoded(&mix, format.as_str()))
                .await;
        }
        let _ = state.store.delete_object(&mix).await;
    }
    let ready = updated.latest_mix().is_some_and(|m| m.ready);
    if !ready {
        state
            .store
            .publish(
                subjects::WORK_MIX,
                &MixRequest {
                    music_id: updated.music_id,
                    tracks: unique.clone(),
                    incarnation: updated.incarnation,
                    gains: gains.clone(),
                },
                None,
            )
            .await?;
    }
    state
        .store
        .publish_progress(&ProgressEvent::of(&updated))
        .await;
    Ok(Selected {
        music_id: updated.music_id,
        tracks: unique,
        gains_db: chosen.iter().map(|(_, g)| g.db()).collect(),
        key,
        state: updated.state.as_str(),
        progress: updated.progress(),
    })
}

/// How a selection is written, for error messages.
const SELECTION_FORMS: &str = r#"a JSON array of track ids or names, or {"tracks": [{"track_id": <id or name>, "gain_db": <dB>}, ...]}"#;

/// A track as a selection names it: by id, or by its stem name (`"vocals"`, any case).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TrackRef {
    Id(TrackId),
    Name(String),
}

/// The tracks and gains of a selection's body, in the order given, each track once:
/// - `[track, ...]`: each track at 0 dB (the original contract, with ids);
/// - `{"tracks": [track or {"track_id": track, "gain_db": dB}, ...]}`: `gain_db` optional
///   (0 dB), a finite number within [−60, +12], rounded to 0.1 dB ([`Gain::from_db`]);
///
/// where a track is its id or its stem name, which `resolve` turns into its id.
///
/// A track given twice counts once; twice with different gains (after rounding) is refused.
/// Fields other than these are refused too, so that a misspelt `gain_db` is an error rather
/// than a silent 0 dB.
///
/// # Errors
/// 400 with the reason for anything else, and for an empty selection; what `resolve` says of
/// a name.
pub(crate) fn parse_selection(
    body: &[u8],
    resolve: impl Fn(&TrackRef) -> Result<TrackId, ApiError>,
) -> Result<Vec<(TrackId, Gain)>, ApiError> {
    let bad = |reason: String| ApiError::BadRequest(reason);
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("body must be {SELECTION_FORMS}: {e}")))?;
    let track = |item: &serde_json::Value| match item {
        serde_json::Value::String(name) => resolve(&TrackRef::Name(name.clone())),
        other => other
            .as_u64()
            .map(TrackId)
            .ok_or_else(|| {
                bad(format!(
                    "track {other} is neither a positive integer id nor a stem name"
                ))
            })
            .and_then(|id| resolve(&TrackRef::Id(id))),
    };
    let mut given = Vec::new();
    match &value {
        serde_json::Value::Array(items) => {
            for item in items {
                given.push((track(item)?, Gain::UNITY));
            }
        }
        serde_json::Value::Object(fields) => {
            if let Some(other) = fields.keys().find(|k| *k != "tracks") {
                return Err(bad(format!(
                    "unknown field `{other}`: a selection is {SELECTION_FORMS}"
                )));
            }
            let items = fields
                .get("tracks")
                .and_then(|t| t.as_array())
                .ok_or_else(|| bad(format!("`tracks` must be a list: {SELECTION_FORMS}")))?;
            for item in items {
                let entry = match item {
                    serde_json::Value::Object(entry) => entry,
                    serde_json::Value::String(_) | serde_json::Value::Number(_) => {
                        given.push((track(item)?, Gain::UNITY));
                        continue;
                    }
                    _ => {
                        return Err(bad(format!(
                            "each of `tracks` must be a track id, a stem name or \
                             {{\"track_id\": <id or name>, \"gain_db\": <dB>}}, not {item}"
                        )))
                    }
                };
                if let Some(other) = entry.keys().find(|k| *k != "track_id" && *k != "gain_db") {
                    return Err(bad(format!(
                        "unknown field `{other}` in a track: use `track_id` and `gain_db`"
                    )));
                }
                let id = track(
                    entry
                        .get("track_id")
                        .ok_or_else(|| bad(format!("a track without `track_id`: {item}")))?,
                )?;
                let gain = match entry.get("gain_db") {
                    None => Gain::UNITY,
                    Some(db) => db.as_f64().and_then(Gain::from_db).ok_or_else(|| {
                        bad(format!(
                            "gain_db {db} of track {id} must be a number from {} to +{} dB",
                            Gain::MIN_DB,
                            Gain::MAX_DB
                        ))
                    })?,
                };
                given.push((id, gain));
            }
        }
        _ => return Err(bad(format!("body must be {SELECTION_FORMS}"))),
    }
    if given.is_empty() {
        return Err(bad("choose at least one track".into()));
    }
    let mut chosen: Vec<(TrackId, Gain)> = Vec::with_capacity(given.len());
    for (id, gain) in given {
        match chosen.iter().find(|(t, _)| *t == id) {
            None => chosen.push((id, gain)),
            Some((_, g)) if *g == gain => {}
            Some((_, g)) => {
                return Err(bad(format!(
                    "track {id} is given twice, at {} dB and at {} dB",
                    g.db(),
                    gain.db()
                )))
            }
        }
    }
    Ok(chosen)
}

/// The body of a selection, at most [`MAX_SELECTION_BYTES`].
async fn read_selection(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("selection body interrupted: {e}")))?;
        if body.len() + chunk.len() > MAX_SELECTION_BYTES {
            return Err(ApiError::TooLarge(format!(
                "a selection is at most {MAX_SELECTION_BYTES} bytes of JSON"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vec<(TrackId, Gain)>, String> {
        let resolve = |t: &TrackRef| match t {
            TrackRef::Id(id) => Ok(*id),
            TrackRef::Name(n) if n == "vocals" => Ok(TrackId(9)),
            TrackRef::Name(n) => Err(ApiError::TrackNotFound(format!("no track named {n:?}"))),
        };
        parse_selection(body.as_bytes(), resolve).map_err(|e| e.to_string())
    }

    #[test]
    fn selections_are_arrays_of_ids_or_tracks_with_gains() {
        let unity = |ids: &[u64]| -> Vec<(TrackId, Gain)> {
            ids.iter().map(|i| (TrackId(*i), Gain::UNITY)).collect()
        };
        assert_eq!(parse("[7, 3, 7]").unwrap(), unity(&[7, 3]));
        assert_eq!(parse(r#"[7, "vocals", 9]"#).unwrap(), unity(&[7, 9]));
        assert_eq!(
            parse(r#"{"tracks": ["vocals", 3, {"track_id": "vocals"}]}"#).unwrap(),
            unity(&[9, 3])
        );
        let tracks = r#"{"tracks": [{"track_id": 7, "gain_db": -3.54}, {"track_id": 3},
            {"track_id": 9, "gain_db": 12}, {"track_id": 7, "gain_db": -3.5}]}"#;
        assert_eq!(
            parse(tracks).unwrap(),
            [
                (TrackId(7), Gain(-35)),
                (TrackId(3), Gain::UNITY),
                (TrackId(9), Gain(120))
            ]
        );
        for (bad, why) in [
            ("[]", "at least one"),
            (r#"{"tracks": []}"#, "at least one"),
            ("{}", "`tracks` must be a list"),
            ("7", "body must be"),
            ("[-1]", "neither a positive integer id nor a stem name"),
            ("[1.5]", "neither a positive integer id nor a stem name"),
            (r#"["drums"]"#, "no track named \"drums\""),
            (r#"{"tracks": [null]}"#, "each of `tracks`"),
            (r#"{"tracks": [{"gain_db": 1}]}"#, "without `track_id`"),
            (
                r#"{"tracks": [{"track_id": 1, "gain": 1}]}"#,
                "unknown field `gain`",
            ),
            (
                r#"{"tracks": [], "format": "mp3"}"#,
                "unknown field `format`",
            ),
            (
                r#"{"tracks": [{"track_id": 1, "gain_db": 12.01}]}"#,
                "from -60 to +12 dB",
            ),
            (
                r#"{"tracks": [{"track_id": 1, "gain_db": -61}]}"#,
                "from -60 to +12 dB",
            ),
            (
                r#"{"tracks": [{"track_id": 1, "gain_db": "6"}]}"#,
                "must be a number",
            ),
            (
                r#"{"tracks": [{"track_id": 1, "gain_db": null}]}"#,
                "must be a number",
            ),
            (
                r#"{"tracks": [{"track_id": 1, "gain_db": 1e999}]}"#,
                "body must be",
            ),
            (
                r#"{"tracks": [{"track_id": 1, "gain_db": 1}, {"track_id": 1, "gain_db": 2}]}"#,
                "given twice, at 1 dB and at 2 dB",
            ),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

//! `/music`: upload, list, progress and selection.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use dme_protocol::messages::{MixRequest, ProgressEvent};
use dme_protocol::records::{MixRecord, MusicRecord, MusicState, TrackRecord};
use dme_protocol::{now_ms, objects, subjects, Incarnation, MusicId, TrackId};
use futures::StreamExt;
use serde::Serialize;

use super::{base_url, load_music};
use crate::admission::{self, Cost};
use crate::upload;
use crate::{ApiError, AppState};

/// Largest body of a selection: room for thousands of track ids, while nobody can make the
/// gateway buffer megabytes (and the answer stays a JSON error, not the framework's plain text).
const MAX_SELECTION_BYTES: usize = 64 * 1024;

/// One track in an answer.
#[derive(Serialize)]
struct Track {
    name: String,
    track_id: TrackId,
}

/// api.yaml's `Musica`, extended with what the probe found and where processing is.
#[derive(Serialize)]
pub(super) struct Music {
    music_id: MusicId,
    name: String,
    band: String,
    tracks: Vec<Track>,
    duration_s: f64,
    sample_rate: u32,
    channels: u16,
    codec: String,
    size: u64,
    state: &'static str,
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
#[derive(Serialize)]
struct Instrument {
    name: String,
    track: String,
    track_id: TrackId,
}

/// api.yaml's `Progress`, extended.
#[derive(Serialize)]
struct Progress {
    music_id: MusicId,
    name: String,
    band: String,
    progress: u8,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    instruments: Vec<Instrument>,
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    final_mix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selection: Option<Vec<TrackId>>,
    segments: u32,
    segments_done: u32,
    tracks: Vec<Track>,
    duration_s: f64,
}

/// `POST /music`: store a song, answer its id and tracks; the same bytes again give the same id
/// (and cost nothing new, so they are never refused for want of room). A new song is admitted
/// first (`admission`): 429 when its client has too much in work, 507 when the store is too
/// full.
pub async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let spooled = upload::receive(&req, payload, &state).await?;
    let music_id = MusicId::from_content_hash(&spooled.hash);
    let hash = spooled.hash.to_hex().to_string();
    let _storing = UploadInFlight::wait_for_turn(music_id).await;
    if let Some(existing) = state.store.music(music_id).await? {
        return existing_upload(&state, existing, &hash).await;
    }
    let probe = upload::probe(&spooled).await?;
    if probe.duration_s > state.config.max_duration_s {
        return Err(ApiError::TooLarge(format!(
            "the song lasts {:.0} s; the limit is {:.0} s",
            probe.duration_s, state.config.max_duration_s
        )));
    }
    let model = state.store.model().await?.ok_or_else(|| {
        ApiError::Unavailable(
            "no separator has registered a model yet: start a separator and retry".into(),
        )
    })?;
    let name = probe
        .title
        .clone()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            std::path::Path::new(&spooled.file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "untitled".into());
    let client = admission::client_key(&req, &state.config.trusted_proxies);
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
    let _reservation = admission::admit(&state, &client, cost).await?;
    let record = MusicRecord {
        music_id,
        content_hash: hash.clone(),
        name: name.trim().to_string(),
        band: probe.artist.clone().unwrap_or_default().trim().to_string(),
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
        return existing_upload(&state, existing, &hash).await;
    }
    dme_storage::song::publish_uploaded(&state.store, &record).await?;
    tracing::info!(%music_id, name = %record.name, size = record.size, codec = %record.codec, "song uploaded");
    Ok(HttpResponse::Ok().json(Music::from(&record)))
}

/// Songs being stored by this gateway, each with the lock its uploads queue on.
static IN_FLIGHT: LazyLock<Mutex<HashMap<MusicId, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// This gateway's turn to store a song: many clients sending the same file at once are served
/// one after another, so the first stores the original and the record and the others find the
/// record. (Gateways do not share this; across gateways the existing-original check and the
/// atomic record creation keep one record and one original.)
struct UploadInFlight {
    music_id: MusicId,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl UploadInFlight {
    async fn wait_for_turn(music_id: MusicId) -> UploadInFlight {
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
) -> Result<HttpResponse, ApiError> {
    if existing.content_hash != hash {
        return Err(ApiError::Conflict(format!(
            "a different file already has id {}; this upload cannot be stored",
            existing.music_id
        )));
    }
    if existing.state == MusicState::Queued {
        // The first upload's event may have been lost between the record and the publish.
        dme_storage::song::publish_uploaded(&state.store, &existing).await?;
    }
    Ok(HttpResponse::Ok().json(Music::from(&existing)))
}

/// `GET /music`: every song, oldest first.
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut records = state.store.list_music().await?;
    records.sort_by_key(|r| (r.created_ms, r.music_id));
    let out: Vec<Music> = records.iter().map(Music::from).collect();
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /music/{id}`: progress, links to finished stems, and the mix link when it is ready.
pub async fn progress(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = load_music(&state, &path).await?;
    let base = base_url(&req, &state);
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
        segments: record.separated.len() as u32,
        segments_done: record.segments_done(),
        tracks: Music::from(&record).tracks,
        duration_s: record.duration_s,
    };
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /music/{id}` with a JSON array of track ids: mix those tracks. Answers at once;
/// separation started at upload, and a selection already mixed is not mixed again.
pub async fn select(
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = load_music(&state, &path).await?;
    let body = read_selection(payload).await?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("body must be a JSON array of track ids: {e}"))
    })?;
    let items = value
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("body must be a JSON array of track ids".into()))?;
    if items.is_empty() {
        return Err(ApiError::BadRequest("choose at least one track".into()));
    }
    let mut tracks = Vec::with_capacity(items.len());
    for item in items {
        let id = item.as_u64().ok_or_else(|| {
            ApiError::BadRequest(format!("track id {item} is not a positive integer"))
        })?;
        tracks.push(TrackId(id));
    }
    let mut indices = Vec::with_capacity(tracks.len());
    for t in &tracks {
        let i = record.stem_index(*t).ok_or_else(|| {
            ApiError::TrackNotFound(format!("song {} has no track {t}", record.music_id))
        })?;
        indices.push(i);
    }
    let key = objects::selection_key(&indices);
    let mut unique: Vec<TrackId> = Vec::new();
    for t in tracks {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    let updated = state
        .store
        .update_music(record.music_id, |m| {
            let existing = m.mixes.iter().position(|x| x.key == key);
            let mix = match existing {
                Some(i) => m.mixes.remove(i),
                None => MixRecord {
                    key: key.clone(),
                    tracks: unique.clone(),
                    ready: false,
                },
            };
            if !mix.ready && m.tracks_ready && m.state == MusicState::Done {
                m.state = MusicState::Mixing;
            }
            m.mixes.push(mix);
            m.updated_ms = now_ms();
            true
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no music with id {}", record.music_id)))?;
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
                },
                None,
            )
            .await?;
    }
    state
        .store
        .publish_progress(&ProgressEvent::of(&updated))
        .await;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "music_id": updated.music_id,
        "tracks": unique,
        "state": updated.state.as_str(),
        "progress": updated.progress(),
    })))
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

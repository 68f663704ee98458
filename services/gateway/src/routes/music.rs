//! `/music`: upload, list, progress and selection.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use dme_protocol::messages::{MixRequest, ProgressEvent};
use dme_protocol::records::{Gain, MixRecord, MusicRecord, MusicState, TrackRecord};
use dme_protocol::{now_ms, objects, subjects, Incarnation, MusicId, TrackId};
use futures::StreamExt;
use serde::Serialize;

use super::{base_url, load_music};
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
    /// The latest selection's gains, aligned with `selection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    gains_db: Option<Vec<f64>>,
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
        gains_db: latest.map(MixRecord::gains_db),
        segments: record.separated.len() as u32,
        segments_done: record.segments_done(),
        tracks: Music::from(&record).tracks,
        duration_s: record.duration_s,
    };
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /music/{id}`: mix a selection of the song's tracks. The body is the original
/// contract's JSON array of track ids (each at 0 dB), or `{"tracks": [{"track_id": <id>,
/// "gain_db": <dB>}, ...]}` (see [`parse_selection`]); a track left out is not in the mix.
/// Answers at once; separation started at upload, and a selection already mixed with the same
/// gains (its key) is not mixed again.
pub async fn select(
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = load_music(&state, &path).await?;
    let body = read_selection(payload).await?;
    let chosen = parse_selection(&body)?;
    let mut stems = Vec::with_capacity(chosen.len());
    for (t, gain) in &chosen {
        let i = record.stem_index(*t).ok_or_else(|| {
            ApiError::TrackNotFound(format!("song {} has no track {t}", record.music_id))
        })?;
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
    let gains_db: Vec<f64> = chosen.iter().map(|(_, g)| g.db()).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "music_id": updated.music_id,
        "tracks": unique,
        "gains_db": gains_db,
        "key": key,
        "state": updated.state.as_str(),
        "progress": updated.progress(),
    })))
}

/// How a selection is written, for error messages.
const SELECTION_FORMS: &str =
    r#"a JSON array of track ids, or {"tracks": [{"track_id": <id>, "gain_db": <dB>}, ...]}"#;

/// The tracks and gains of a selection's body, in the order given, each track once:
/// - `[id, ...]`: each track at 0 dB (the original contract);
/// - `{"tracks": [{"track_id": id, "gain_db": dB}, ...]}`: `gain_db` optional (0 dB), a finite
///   number within [−60, +12], rounded to 0.1 dB ([`Gain::from_db`]).
///
/// A track given twice counts once; twice with different gains (after rounding) is refused.
/// Fields other than these are refused too, so that a misspelt `gain_db` is an error rather
/// than a silent 0 dB.
///
/// # Errors
/// 400 with the reason for anything else, and for an empty selection.
fn parse_selection(body: &[u8]) -> Result<Vec<(TrackId, Gain)>, ApiError> {
    let bad = |reason: String| ApiError::BadRequest(reason);
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("body must be {SELECTION_FORMS}: {e}")))?;
    let track_id = |item: &serde_json::Value| {
        item.as_u64()
            .map(TrackId)
            .ok_or_else(|| bad(format!("track id {item} is not a positive integer")))
    };
    let mut given = Vec::new();
    match &value {
        serde_json::Value::Array(items) => {
            for item in items {
                given.push((track_id(item)?, Gain::UNITY));
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
                let entry = item.as_object().ok_or_else(|| {
                    bad(format!(
                        "each of `tracks` must be {{\"track_id\": <id>, \"gain_db\": <dB>}}, not {item}"
                    ))
                })?;
                if let Some(other) = entry.keys().find(|k| *k != "track_id" && *k != "gain_db") {
                    return Err(bad(format!(
                        "unknown field `{other}` in a track: use `track_id` and `gain_db`"
                    )));
                }
                let id = track_id(
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
        parse_selection(body.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn selections_are_arrays_of_ids_or_tracks_with_gains() {
        let unity = |ids: &[u64]| -> Vec<(TrackId, Gain)> {
            ids.iter().map(|i| (TrackId(*i), Gain::UNITY)).collect()
        };
        assert_eq!(parse("[7, 3, 7]").unwrap(), unity(&[7, 3]));
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
            ("[-1]", "not a positive integer"),
            ("[1.5]", "not a positive integer"),
            (r#"{"tracks": [3]}"#, "each of `tracks`"),
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

//! Live events as Server-Sent Events: `GET /music/{id}/events` (one song) and `GET /events`
//! (every song), fed from the progress event stream.
//!
//! Each event is `id:` its sequence in the event stream, `event:` what changed (`progress`,
//! `stem`, `mix`, `failed`) and `data:` one line of JSON with the song's whole visible state and
//! its links, shaped like `GET /music/{id}`. A client that connects without `Last-Event-ID` first
//! gets the current state (of the song, or of each song) built from the records, then live
//! events; with `Last-Event-ID: N` it gets every event after `N` in order, once each, then live
//! ones (when events after `N` are no longer kept, the current state first). A `: keep-alive`
//! comment every [`crate::GatewayConfig::sse_heartbeat_s`] keeps proxies from closing a quiet
//! stream. A stream ends when its client leaves: its ordered consumer goes with it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use dme_protocol::messages::ProgressEvent;
use dme_protocol::records::MusicRecord;
use dme_protocol::{now_ms, MusicId, TrackId};
use dme_storage::{ProgressFeed, StoreError};
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{ErrorBody, EventKind, SongState};
use super::{base_url, parse_id};
use crate::{ApiError, AppState};

/// `GET /music/{id}/events`: one song's events. Without `Last-Event-ID` the song's current
/// state comes first, then live events; with it, every event after it still kept (else the
/// current state first).
#[utoipa::path(
    get,
    path = "/music/{music_id}/events",
    tag = "music",
    operation_id = "songEvents",
    params(
        ("music_id" = u64, Path, description = "The song's id"),
        ("Last-Event-ID" = Option<u64>, Header,
            description = "The `id` of the last event the client got: resume after it"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events, until the client leaves: each \
            `id: <sequence>`, `event: <kind>` (`progress`, `stem`, `mix`, `failed`) and \
            `data:` one line of JSON, an `Event`; `: keep-alive` comments between them",
            content_type = "text/event-stream", body = String,
            example = "id: 42\nevent: progress\ndata: {\"music_id\":123345678,\"kind\":\"progress\",...}\n\n"),
        (status = 400, description = "A malformed id or `Last-Event-ID`", body = ErrorBody),
        (status = 404, description = "Music not found", body = ErrorBody),
        (status = 503, description = "Too many event streams open, or NATS is away",
            body = ErrorBody),
    ),
)]
pub async fn song(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let music: MusicId = parse_id(&path, "music id")?;
    let resume = last_event_id(&req)?;
    let slot = StreamSlot::take(state.config.max_event_streams)?;
    // The bounds before the record: the record then shows at least every event up to `last`.
    let bounds = state.store.event_bounds().await?;
    let record = state
        .store
        .music(music)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no music with id {music}")))?;
    let base = base_url(&req, &state);
    let (initial, after) = match resume {
        Some(n) if bounds.keeps_all_after(n) => (VecDeque::new(), n),
        _ => {
            let now = snapshot(&record, &state);
            let frame = frame(Some(bounds.last), &now, &base);
            (VecDeque::from([frame]), bounds.last)
        }
    };
    let feed = state.store.follow_progress(Some(music), after).await?;
    Ok(respond(initial, feed, base, &state, slot))
}

/// `GET /events`: every song's events. Without `Last-Event-ID` each song's current state comes
/// first, then live events.
#[utoipa::path(
    get,
    path = "/events",
    tag = "music",
    operation_id = "allEvents",
    params(
        ("Last-Event-ID" = Option<u64>, Header,
            description = "The `id` of the last event the client got: resume after it"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events, until the client leaves: each \
            `id: <sequence>`, `event: <kind>` (`progress`, `stem`, `mix`, `failed`) and \
            `data:` one line of JSON, an `Event`; `: keep-alive` comments between them",
            content_type = "text/event-stream", body = String,
            example = "id: 42\nevent: progress\ndata: {\"music_id\":123345678,\"kind\":\"progress\",...}\n\n"),
        (status = 400, description = "A malformed id or `Last-Event-ID`", body = ErrorBody),
        (status = 503, description = "Too many event streams open, or NATS is away",
            body = ErrorBody),
    ),
)]
pub async fn all(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let resume = last_event_id(&req)?;
    let slot = StreamSlot::take(state.config.max_event_streams)?;
    let bounds = state.store.event_bounds().await?;
    let base = base_url(&req, &state);
    let (initial, after) = match resume {
        Some(n) if bounds.keeps_all_after(n) => (VecDeque::new(), n),
        _ => {
            let mut records = state.store.list_music().await?;
            records.sort_by_key(|r| (r.created_ms, r.music_id));
            let count = records.len();
            // Only the last carries the id: a client that leaves halfway resumes with the
            // state it had, and is shown every song again.
            let frames = records.iter().enumerate().map(|(i, r)| {
                let id = (i + 1 == count).then_some(bounds.last);
                frame(id, &snapshot(r, &state), &base)
            });
            (frames.collect(), bounds.last)
        }
    };
    let feed = state.store.follow_progress(None, after).await?;
    Ok(respond(initial, feed, base, &state, slot))
}

/// The `Last-Event-ID` header: the sequence of the last event the client got.
///
/// # Errors
/// 400 when it is there and not a sequence number.
fn last_event_id(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or_default().trim();
    // An empty value is what a browser sends back for an event that had no id.
    if raw.is_empty() {
        return Ok(None);
    }
    parse_id(raw, "Last-Event-ID").map(Some)
}

/// A song's event as the client sees it now, from its record: a song with no change for the
/// stall time is shown `stalled`, as by `GET /music/{id}`.
struct Snapshot {
    event: ProgressEvent,
    stalled_after_s: Option<u64>,
}

fn snapshot(record: &MusicRecord, state: &AppState) -> Snapshot {
    let mut event = ProgressEvent::of(record);
    // The client knows nothing yet: everything that is there is news to it.
    event.kind = event.kind_after(None);
    let after_s = state.config.stall_after_s;
    Snapshot {
        event,
        stalled_after_s: record.stalled(now_ms(), after_s * 1000).then_some(after_s),
    }
}

/// The streaming answer: `initial` frames, then the feed's events and heartbeats.
fn respond(
    initial: VecDeque<Bytes>,
    feed: ProgressFeed,
    base: String,
    state: &AppState,
    slot: StreamSlot,
) -> HttpResponse {
    let period = Duration::from_secs(state.config.sse_heartbeat_s.max(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        initial,
        feed,
        heartbeat,
        base,
        _slot: slot,
    };
    let body = futures::stream::unfold(live, |mut live| async move {
        let frame = live.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), live))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// What one event stream holds; dropped (consumer, slot and all) when its client leaves.
struct Live {
    initial: VecDeque<Bytes>,
    feed: ProgressFeed,
    heartbeat: tokio::time::Interval,
    base: String,
    _slot: StreamSlot,
}

/// The heartbeat: an SSE comment, which clients ignore.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

impl Live {
    /// The next frame to send; `None` ends the stream (NATS failed: the client reconnects with
    /// its `Last-Event-ID` and loses nothing).
    async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.initial.pop_front() {
            return Some(frame);
        }
        loop {
            tokio::select! {
                next = self.feed.next() => match next? {
                    Ok(stored) => {
                        let now = Snapshot { event: stored.event, stalled_after_s: None };
                        return Some(frame(Some(stored.seq), &now, &self.base));
                    }
                    Err(StoreError::Decode(e)) => {
                        tracing::warn!(error = %e, "an undecodable progress event skipped");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream ended: NATS failed");
                        return None;
                    }
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(KEEP_ALIVE)),
            }
        }
    }
}

/// One SSE event: its id (when it has one), its kind and its state as one line of JSON.
fn frame(id: Option<u64>, now: &Snapshot, base: &str) -> Bytes {
    let data = EventData::new(now, base);
    let json = serde_json::to_string(&data).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an event could not be written as JSON");
        "{}".into()
    });
    let mut out = String::with_capacity(json.len() + 48);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!(
        "event: {}\ndata: {json}\n\n",
        now.event.kind.as_str()
    ));
    Bytes::from(out)
}

/// An event as one line of JSON: the `data` of its SSE frame, with `id`, its sequence in the
/// event stream (what the JSON copy on NATS publishes).
pub(crate) fn event_json(seq: u64, event: ProgressEvent, base: &str) -> String {
    #[derive(Serialize)]
    struct WithId<'a> {
        id: u64,
        #[serde(flatten)]
        data: EventData<'a>,
    }
    let now = Snapshot {
        event,
        stalled_after_s: None,
    };
    let data = WithId {
        id: seq,
        data: EventData::new(&now, base),
    };
    serde_json::to_string(&data).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an event could not be written as JSON");
        "{}".into()
    })
}

/// A stem link, as `GET /music/{id}` shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = EventInstrument)]
struct Instrument {
    /// The stem's name.
    name: String,
    /// The link to its download.
    #[schema(format = "uri")]
    track: String,
    /// Its track id.
    #[schema(value_type = u64)]
    track_id: TrackId,
}

/// A stem, as `GET /music/{id}` shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = EventTrack)]
struct Track<'a> {
    /// The stem's name.
    name: &'a str,
    /// Its track id.
    #[schema(value_type = u64)]
    track_id: TrackId,
}

/// A selection and, once it is mixed, its link.
#[derive(Serialize, ToSchema)]
#[schema(as = EventMix)]
struct Mix<'a> {
    /// Its key.
    key: &'a str,
    /// Its tracks.
    #[schema(value_type = Vec<u64>)]
    tracks: &'a [TrackId],
    /// Whether it is mixed.
    ready: bool,
    /// The link to its mix, once it is mixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = "uri")]
    mix: Option<String>,
}

/// An event's `data`: the fields of `GET /music/{id}` that change, plus every selection.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
pub(crate) struct EventData<'a> {
    /// The song's id.
    #[schema(value_type = u64)]
    music_id: MusicId,
    /// What changed (the SSE `event:` name too).
    #[schema(value_type = EventKind)]
    kind: &'static str,
    /// Where the song is.
    #[schema(value_type = SongState)]
    state: &'static str,
    /// Percent done, 0 to 100, as `GET /music/{music_id}`.
    progress: u8,
    /// Why it failed or stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    error: Option<String>,
    /// Segments the song is cut into.
    segments: u32,
    /// Segments separated.
    segments_done: u32,
    /// Seconds from the song's start that every stem can be played already, as
    /// `GET /music/{music_id}`.
    ready_s: f64,
    /// A link per stem once the stems are assembled.
    instruments: Vec<Instrument>,
    /// The link to the latest selection's mix, once it is mixed.
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = "uri")]
    final_mix: Option<String>,
    /// The latest selection's tracks.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<u64>)]
    selection: Option<&'a [TrackId]>,
    /// Every selection of the song, oldest first.
    mixes: Vec<Mix<'a>>,
    /// One track per stem.
    tracks: Vec<Track<'a>>,
}

impl<'a> EventData<'a> {
    fn new(now: &'a Snapshot, base: &str) -> EventData<'a> {
        let e = &now.event;
        let music = e.music_id;
        let instruments = if e.tracks_ready {
            e.tracks
                .iter()
                .map(|t| Instrument {
                    name: t.name.clone(),
                    track: format!("{base}/music/{music}/track/{}", t.track_id),
                    track_id: t.track_id,
                })
                .collect()
        } else {
            Vec::new()
        };
        let mix_link = |key: &str| format!("{base}/music/{music}/mix/{key}");
        let (state, error) = match now.stalled_after_s {
            Some(s) => (
                "stalled",
                Some(format!(
                    "no progress for over {s} s: no separator may be running, or a service is down"
                )),
            ),
            None => (e.state.as_str(), e.error.clone()),
        };
        EventData {
            music_id: music,
            kind: e.kind.as_str(),
            state,
            progress: e.progress,
            error,
            segments: e.segments,
            segments_done: e.segments_done,
            ready_s: super::music::ready_seconds(e.ready_frames),
            instruments,
            final_mix: e.final_mix().map(|m| mix_link(&m.key)),
            selection: e.mixes.last().map(|m| m.tracks.as_slice()),
            mixes: e
                .mixes
                .iter()
                .map(|m| Mix {
                    key: &m.key,
                    tracks: &m.tracks,
                    ready: m.ready,
                    mix: m.ready.then(|| mix_link(&m.key)),
                })
                .collect(),
            tracks: e
                .tracks
                .iter()
                .map(|t| Track {
                    name: &t.name,
                    track_id: t.track_id,
                })
                .collect(),
        }
    }
}

/// Event streams open in this process (one gateway per process).
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`crate::GatewayConfig::max_event_streams`] places, held for a stream's life.
struct StreamSlot;

impl StreamSlot {
    /// A place, if one is free.
    ///
    /// # Errors
    /// 503 when `max` streams are open.
    fn take(max: usize) -> Result<StreamSlot, ApiError> {
        let taken = OPEN_STREAMS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < max).then_some(open + 1)
        });
        match taken {
            Ok(_) => Ok(StreamSlot),
            Err(_) => Err(ApiError::Unavailable(format!(
                "{max} event streams are open, the most this gateway serves: retry later"
            ))),
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

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

use super::{base_url, parse_id};
use crate::{ApiError, AppState};

/// `GET /music/{id}/events`: one song's events.
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

/// `GET /events`: every song's events.
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

/// A stem link, as `GET /music/{id}` shows it.
#[derive(Serialize)]
struct Instrument {
    name: String,
    track: String,
    track_id: TrackId,
}

/// A stem, as `GET /music/{id}` shows it.
#[derive(Serialize)]
struct Track<'a> {
    name: &'a str,
    track_id: TrackId,
}

/// A selection and, once it is mixed, its link.
#[derive(Serialize)]
struct Mix<'a> {
    key: &'a str,
    tracks: &'a [TrackId],
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mix: Option<String>,
}

/// An event's `data`: the fields of `GET /music/{id}` that change, plus every selection.
#[derive(Serialize)]
struct EventData<'a> {
    music_id: MusicId,
    kind: &'static str,
    state: &'static str,
    progress: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    segments: u32,
    segments_done: u32,
    instruments: Vec<Instrument>,
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    final_mix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selection: Option<&'a [TrackId]>,
    mixes: Vec<Mix<'a>>,
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

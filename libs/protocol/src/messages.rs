//! Messages on the work and event subjects (CBOR, see [`crate::encode`]).

use serde::{Deserialize, Serialize};

use crate::records::{MixRecord, MusicRecord, MusicState, TrackRecord};
use crate::{DecodeError, Incarnation, JobId, MusicId, SegmentPlan, TrackId};

/// What every message a work consumer takes says about itself, for logs.
pub trait WorkItem {
    /// The song the work is for, when the message names one.
    fn music_id(&self) -> Option<MusicId>;
    /// The segment the work is for, when it is for one.
    fn segment_index(&self) -> Option<u32> {
        None
    }
}

/// [`crate::subjects::WORK_UPLOADED`]: a song's original is stored and its record written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MusicUploaded {
    /// The song.
    pub music_id: MusicId,
    /// The life of its record this upload belongs to.
    #[serde(default)]
    pub incarnation: Incarnation,
}

impl WorkItem for MusicUploaded {
    fn music_id(&self) -> Option<MusicId> {
        Some(self.music_id)
    }
}

impl MusicUploaded {
    /// The JetStream message id that makes a repeated publish (a re-upload) a no-op; a song
    /// uploaded again after a reset has a new incarnation, so a new id.
    pub fn msg_id(&self) -> String {
        format!("up-{}-{}", self.music_id, self.incarnation)
    }
}

/// Segments of one song in the separators' queue at once, at least, unless configured otherwise
/// (`DME_SEGMENT_WINDOW`): the floor of the adaptive window ([`segment_window`]). With several
/// songs in flight on a small pool each gets this many places, so a short song waits behind at
/// most this many segments of a long one.
pub const DEFAULT_SEGMENT_WINDOW: u32 = 16;

/// The adaptive window's headroom: a song's share of the pool's workers plus a quarter of it
/// (rounded up), so a worker that finishes finds a segment of the song already waiting while the
/// release of the next one is on its way, without queueing a whole extra wave ahead of a new song.
pub const WINDOW_HEADROOM_DIVISOR: u32 = 4;

/// The window of a song (segments released ahead of the one a worker just finished): at least
/// `floor` (`DME_SEGMENT_WINDOW`), else the song's fair share of the `workers` live in its model's
/// pool (`workers / songs`, rounded up, `songs` being the songs with segments queued for that
/// pool, this one included) plus headroom ([`WINDOW_HEADROOM_DIVISOR`]). One song alone gets
/// every worker; n songs get a 1/n share each, so a new song's first segments wait behind about
/// one wave of the pool, never behind the whole of a long song.
pub fn segment_window(floor: u32, workers: u32, songs: u32) -> u32 {
    let share = workers.div_ceil(songs.max(1));
    let adaptive = share.saturating_add(share.div_ceil(WINDOW_HEADROOM_DIVISOR));
    floor.max(adaptive).max(1)
}

/// [`crate::subjects::WORK_SEGMENT`]: separate one segment.
///
/// The input window is in the object store at [`crate::objects::segment_input`]. Segments of one
/// song are released a window at a time: the splitter releases `0..window`; the worker that
/// finishes segment `k`, released with window `w`, releases `k + 1 ..= k + max(w, window)`
/// ([`SegmentWork::released_on_finish`], `window` being the window as it is now; message ids drop what was
/// released before). So many songs share the workers fairly instead of queueing one behind
/// another, and whatever the window does between releases, and in whatever order segments
/// finish, no segment is left unreleased: the lowest unreleased one's predecessor was
/// released, and its walk includes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentWork {
    /// The song.
    pub music_id: MusicId,
    /// The job record of this segment.
    pub job_id: JobId,
    /// Segment index in the plan.
    pub index: u32,
    /// The song's segment plan.
    pub plan: SegmentPlan,
    /// The song's window when this item was released: the worker that finishes it releases up
    /// to `index + max(window, the window then)`.
    pub window: u32,
    /// Fingerprint of the model the plan was made for: a worker running another model refuses.
    pub model: String,
    /// The life of the song's record the segment belongs to.
    #[serde(default)]
    pub incarnation: Incarnation,
}

impl WorkItem for SegmentWork {
    fn music_id(&self) -> Option<MusicId> {
        Some(self.music_id)
    }
    fn segment_index(&self) -> Option<u32> {
        Some(self.index)
    }
}

impl SegmentWork {
    /// The items that finishing this one releases when the song's window is `window` now:
    /// segments `index + 1 ..= index + max(self.window, window)` that lie in the plan, each
    /// released with `window` (see the type's docs for why the walk starts at `index + 1`).
    pub fn released_on_finish(&self, window: u32) -> impl Iterator<Item = SegmentWork> + '_ {
        self.ahead(self.window.max(window))
            .map(move |ahead| self.at(ahead.index, window))
    }

    /// The items of segments `index + 1 ..= index + window` that lie in the plan, released with
    /// window `window`, highest index first.
    pub fn ahead(&self, window: u32) -> impl Iterator<Item = SegmentWork> + '_ {
        let count = self.plan.count();
        let top = self
            .index
            .saturating_add(window)
            .min(count.saturating_sub(1));
        (self.index.saturating_add(1)..=top)
            .rev()
            .map(move |index| self.at(index, window))
    }

    /// The item of segment `index` of the same song, released with window `window`.
    pub fn at(&self, index: u32, window: u32) -> SegmentWork {
        SegmentWork {
            job_id: JobId::of(self.music_id, index),
            index,
            window,
            ..self.clone()
        }
    }

    /// The JetStream message id that makes a repeated publish of this item a no-op.
    pub fn msg_id(&self) -> String {
        format!("seg-{}-{}-{}", self.music_id, self.incarnation, self.index)
    }

    /// The report that this segment's stems are stored.
    pub fn done(&self) -> SegmentDone {
        SegmentDone {
            music_id: self.music_id,
            index: self.index,
            job_id: self.job_id,
            incarnation: self.incarnation,
        }
    }
}

/// [`crate::subjects::WORK_SEPARATED`]: the stems of one segment are in the object store at
/// [`crate::objects::segment_stems`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentDone {
    /// The song.
    pub music_id: MusicId,
    /// Segment index in the plan.
    pub index: u32,
    /// The job that produced it.
    pub job_id: JobId,
    /// The life of the song's record the segment belongs to.
    #[serde(default)]
    pub incarnation: Incarnation,
}

impl WorkItem for SegmentDone {
    fn music_id(&self) -> Option<MusicId> {
        Some(self.music_id)
    }
    fn segment_index(&self) -> Option<u32> {
        Some(self.index)
    }
}

impl SegmentDone {
    /// The JetStream message id that makes a repeated publish (a redelivered segment) a no-op.
    pub fn msg_id(&self) -> String {
        format!("done-{}-{}-{}", self.music_id, self.incarnation, self.index)
    }
}

/// [`crate::subjects::WORK_MIX`]: mix these tracks of a song.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixRequest {
    /// The song.
    pub music_id: MusicId,
    /// The chosen tracks (checked against the song by the gateway).
    pub tracks: Vec<TrackId>,
    /// The life of the song's record the selection was made on.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// Each track's gain, aligned with `tracks`; empty when every gain is 0 dB. The mixer mixes
    /// what the song's record holds (the selection's [`MixRecord`], found by its key); this says
    /// which one a reader of the message is looking at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gains: Vec<crate::records::Gain>,
}

impl WorkItem for MixRequest {
    fn music_id(&self) -> Option<MusicId> {
        Some(self.music_id)
    }
}

/// JetStream's `io.nats.jetstream.advisory.v1.max_deliver` advisory (JSON, not CBOR): a message
/// of a work consumer was delivered as often as the consumer allows without a verdict (every
/// worker that took it died). Captured by [`crate::streams::ADVISORY_STREAM`]; only the fields
/// dme uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaxDeliveries {
    /// The stream of the message ([`crate::streams::WORK_STREAM`]).
    pub stream: String,
    /// The consumer whose deliveries ran out.
    pub consumer: String,
    /// The message's sequence in the stream.
    pub stream_seq: u64,
    /// How often it was delivered.
    pub deliveries: u64,
}

impl MaxDeliveries {
    /// Reads an advisory as the server publishes it.
    ///
    /// # Errors
    /// [`DecodeError`] when the bytes are not such an advisory.
    pub fn from_json(bytes: &[u8]) -> Result<MaxDeliveries, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError {
            what: "max-deliveries advisory",
            reason: e.to_string(),
        })
    }
}

impl WorkItem for MaxDeliveries {
    /// Only the work message it points at names the song.
    fn music_id(&self) -> Option<MusicId> {
        None
    }
}

/// `dme.event.<music_id>`: a song's state or progress changed. Each event carries the song's
/// whole visible state (a page needs nothing else to draw it) and, in `kind`, what changed since
/// the song's previous event. Fields added after the first version have serde defaults, so
/// events kept from before still decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// The song.
    pub music_id: MusicId,
    /// Its state now.
    pub state: MusicState,
    /// 0-100.
    pub progress: u8,
    /// Segments separated so far, out of `segments`.
    pub segments_done: u32,
    /// Segments in the song's plan (0 until the splitter has cut it).
    pub segments: u32,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The life of the song's record this event is of: an event of another life (the song was
    /// deleted or retried since) says nothing about what changed in this one.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// Samples per channel from the song's start that every stem holds finished (playable
    /// through the gateway's `/music/{id}/track/{track}/prefix` while the rest separates): the
    /// song's length once the tracks are ready.
    #[serde(default)]
    pub ready_frames: u64,
    /// True once every stem track is assembled (downloadable).
    #[serde(default)]
    pub tracks_ready: bool,
    /// The song's stem tracks.
    #[serde(default)]
    pub tracks: Vec<TrackRecord>,
    /// The selections asked for, latest last, each with whether its mix is ready.
    #[serde(default)]
    pub mixes: Vec<MixRecord>,
    /// What this event tells that the song's previous one did not; set when the event is
    /// published (`dme_storage`'s `publish_progress` compares it with the song's last event).
    #[serde(default)]
    pub kind: EventKind,
}

/// What a [`ProgressEvent`] tells that the song's previous event did not, most telling first:
/// a failure, then a mix, then stems; anything else is progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Segments separated, a state change, a selection asked for.
    #[default]
    Progress,
    /// The stem tracks became ready.
    Stem,
    /// A selection's mix became ready, or the latest selection is one whose mix was ready.
    Mix,
    /// The song failed; `error` says why.
    Failed,
}

impl EventKind {
    /// Lower-case name, as in the HTTP API's event streams.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Progress => "progress",
            EventKind::Stem => "stem",
            EventKind::Mix => "mix",
            EventKind::Failed => "failed",
        }
    }
}

impl ProgressEvent {
    /// The event that tells where `record`'s song is now (`kind` is [`EventKind::Progress`]
    /// until compared with the previous event: [`ProgressEvent::kind_after`]).
    pub fn of(record: &MusicRecord) -> ProgressEvent {
        ProgressEvent {
            music_id: record.music_id,
            state: record.state,
            progress: record.progress(),
            segments_done: record.segments_done(),
            segments: record.separated.len() as u32,
            error: record.error.clone(),
            incarnation: record.incarnation,
            ready_frames: record.ready_frames(),
            tracks_ready: record.tracks_ready,
            tracks: record.tracks.clone(),
            mixes: record.mixes.clone(),
            kind: EventKind::Progress,
        }
    }

    /// The latest selection's mix, when it is ready (the HTTP API's `final`).
    pub fn final_mix(&self) -> Option<&MixRecord> {
        self.mixes.last().filter(|m| m.ready)
    }

    /// What this event tells that `previous` (the song's last event before it; `None` when
    /// there is none, or for a reader that knows nothing yet) did not.
    pub fn kind_after(&self, previous: Option<&ProgressEvent>) -> EventKind {
        // An event of another life of the song tells nothing about this one.
        let previous = previous.filter(|p| p.incarnation == self.incarnation);
        if self.state == MusicState::Failed
            && previous.is_none_or(|p| p.state != MusicState::Failed)
        {
            return EventKind::Failed;
        }
        let was_ready =
            |key: &str| previous.is_some_and(|p| p.mixes.iter().any(|m| m.key == key && m.ready));
        let newly_mixed = self.mixes.iter().any(|m| m.ready && !was_ready(&m.key));
        let final_key = |e: &ProgressEvent| e.final_mix().map(|m| m.key.clone());
        let new_final =
            self.final_mix().is_some() && previous.is_none_or(|p| final_key(p) != final_key(self));
        if newly_mixed || new_final {
            return EventKind::Mix;
        }
        if self.tracks_ready && previous.is_none_or(|p| !p.tracks_ready) {
            return EventKind::Stem;
        }
        EventKind::Progress
    }

    /// Whether this event shows the song behind `previous` (its last event): of the same life,
    /// yet not failed where `previous` was, without stems `previous` had ready, or with a mix
    /// `previous` had ready not ready. A song never goes back within one life, so such an event
    /// is a snapshot taken before `previous`'s and published after it.
    pub fn is_behind(&self, previous: &ProgressEvent) -> bool {
        if previous.incarnation != self.incarnation {
            return false;
        }
        let unmixed = |key: &str| self.mixes.iter().any(|m| m.key == key && !m.ready);
        (previous.state == MusicState::Failed && self.state != MusicState::Failed)
            || (previous.tracks_ready && !self.tracks_ready)
            || previous.mixes.iter().any(|m| m.ready && unmixed(&m.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_items_ahead_run_from_the_top_of_the_window_down_inside_the_plan() {
        let plan = SegmentPlan::new(100, 40, true); // 4 segments
        assert_eq!(plan.count(), 4);
        let first = SegmentWork {
            music_id: MusicId(7),
            job_id: JobId::of(MusicId(7), 1),
            index: 1,
            plan,
            window: 2,
            model: "m".into(),
            incarnation: Incarnation(9),
        };
        let ahead: Vec<SegmentWork> = first.ahead(2).collect();
        assert_eq!(ahead.iter().map(|w| w.index).collect::<Vec<_>>(), [3, 2]);
        let next = &ahead[0];
        assert_eq!(next.job_id, JobId::of(MusicId(7), 3));
        assert_eq!(next.incarnation, Incarnation(9));
        // A window reaching past the plan stops at its last segment; one of 1 releases the next.
        assert_eq!(first.ahead(50).map(|w| w.index).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(first.ahead(1).map(|w| w.index).collect::<Vec<_>>(), [2]);
        assert_eq!(first.ahead(0).count(), 0);
        assert_eq!(next.ahead(4).count(), 0);
        assert_eq!(first.ahead(u32::MAX).count(), 2);
        assert_ne!(
            next.msg_id(),
            SegmentWork {
                incarnation: Incarnation(10),
                ..next.clone()
            }
            .msg_id()
        );
        let bytes = crate::encode(&first);
        assert_eq!(crate::decode::<SegmentWork>(&bytes).unwrap(), first);
        assert!(crate::decode::<SegmentWork>(b"\xff\x00garbage").is_err());
    }

    #[test]
    fn the_window_is_a_fair_share_of_the_pool_with_a_floor() {
        // A small pool: the floor rules.
        assert_eq!(segment_window(16, 2, 1), 16);
        assert_eq!(segment_window(16, 0, 0), 16);
        // One song alone gets every worker, and a quarter more waiting.
        assert_eq!(segment_window(16, 64, 1), 80);
        assert_eq!(segment_window(2, 6, 1), 8);
        // Several songs share it.
        assert_eq!(segment_window(2, 6, 2), 4);
        assert_eq!(segment_window(16, 64, 2), 40);
        assert_eq!(segment_window(16, 64, 8), 16);
        // Never 0, never overflowing.
        assert_eq!(segment_window(0, 0, 5), 1);
        assert!(segment_window(1, u32::MAX, 1) >= u32::MAX / 2);
    }

    /// A song's record at the start of its life, with two stems.
    fn fresh_song() -> MusicRecord {
        let music = MusicId(7);
        MusicRecord {
            music_id: music,
            content_hash: "ab".into(),
            name: "song".into(),
            band: String::new(),
            file_name: "song.wav".into(),
            size: 10,
            codec: "pcm_s16le".into(),
            sample_rate: 44_100,
            channels: 2,
            duration_s: 1.0,
            tracks: TrackRecord::for_sources(music, &["drums".into(), "bass".into()]),
            model: "m".into(),
            created_ms: 1,
            updated_ms: 1,
            state: MusicState::Queued,
            error: None,
            plan: None,
            separated: Vec::new(),
            parts: 0,
            tracks_ready: false,
            mixes: Vec::new(),
            incarnation: Incarnation(1),
            client: None,
        }
    }

    #[test]
    fn an_events_kind_is_what_changed_since_the_songs_previous_event() {
        let mut song = fresh_song();
        let mix = |key: &str, ready| MixRecord {
            key: key.into(),
            tracks: Vec::new(),
            gains: Vec::new(),
            ready,
        };
        let mut kinds = Vec::new();
        let mut previous: Option<ProgressEvent> = None;
        let mut step = |song: &MusicRecord| {
            let event = ProgressEvent::of(song);
            kinds.push(event.kind_after(previous.as_ref()));
            previous = Some(event);
        };
        song.state = MusicState::Separating;
        song.separated = vec![true, false];
        step(&song);
        song.mixes.push(mix("0", false));
        step(&song);
        song.separated = vec![true, true];
        song.tracks_ready = true;
        song.state = MusicState::Mixing;
        step(&song);
        song.mixes.push(mix("0-1", false));
        step(&song);
        // The first selection's mix: the latest is not ready yet, but a mix is.
        song.mixes[0].ready = true;
        step(&song);
        song.mixes[1].ready = true;
        song.state = MusicState::Done;
        step(&song);
        // Asking again for a selection mixed before makes it the latest: its mix is the final.
        let again = song.mixes.remove(0);
        song.mixes.push(again);
        step(&song);
        // Nothing new.
        step(&song);
        song.fail("the model failed");
        step(&song);
        use EventKind::*;
        assert_eq!(
            kinds,
            [Progress, Progress, Stem, Progress, Mix, Mix, Mix, Progress, Failed]
        );

        // A reader that knows nothing hears the most telling news of the state it is shown.
        let failed = ProgressEvent::of(&song);
        assert_eq!(failed.kind_after(None), Failed);
        song.state = MusicState::Done;
        song.error = None;
        let done = ProgressEvent::of(&song);
        assert_eq!(done.kind_after(None), Mix);
        // An event of the song's previous life tells nothing about this one.
        let mut retried = song.clone();
        retried.incarnation = Incarnation(2);
        let retried = ProgressEvent::of(&retried);
        assert_eq!(retried.kind_after(Some(&done)), Mix);
        song.mixes.clear();
        assert_eq!(ProgressEvent::of(&song).kind_after(None), Stem);
    }

    #[test]
    fn an_event_is_behind_a_later_one_of_the_same_life_only() {
        let mut song = fresh_song();
        song.state = MusicState::Separating;
        song.separated = vec![true, false];
        let separating = ProgressEvent::of(&song);
        song.separated = vec![true, true];
        let separated = ProgressEvent::of(&song);
        // Segments counted out of order are not going back: both are told.
        assert!(!separating.is_behind(&separated));
        song.tracks_ready = true;
        song.state = MusicState::Mixing;
        song.mixes.push(MixRecord {
            key: "0".into(),
            tracks: Vec::new(),
            gains: Vec::new(),
            ready: false,
        });
        let stems = ProgressEvent::of(&song);
        assert!(separated.is_behind(&stems));
        assert!(!stems.is_behind(&separated));
        song.mixes[0].ready = true;
        song.state = MusicState::Done;
        let mixed = ProgressEvent::of(&song);
        assert!(stems.is_behind(&mixed));
        assert!(!mixed.is_behind(&stems));
        song.fail("gone wrong");
        let failed = ProgressEvent::of(&song);
        assert!(mixed.is_behind(&failed));
        assert!(!failed.is_behind(&mixed));
        // Another life of the song starts from nothing: never behind the last one.
        let mut retried = fresh_song();
        retried.incarnation = Incarnation(2);
        assert!(!ProgressEvent::of(&retried).is_behind(&failed));
    }

    #[test]
    fn an_event_from_before_the_added_fields_decodes_with_their_defaults() {
        let event = ProgressEvent::of(&fresh_song());
        let mut value = ciborium::Value::serialized(&event).unwrap();
        let ciborium::Value::Map(fields) = &mut value else {
            panic!("an event is a CBOR map");
        };
        let first_version = [
            "music_id",
            "state",
            "progress",
            "segments_done",
            "segments",
            "error",
        ];
        fields.retain(|(k, _)| k.as_text().is_some_and(|k| first_version.contains(&k)));
        let old: ProgressEvent = crate::decode(&crate::encode(&value)).unwrap();
        assert_eq!(old.kind, EventKind::Progress);
        assert_eq!(old.incarnation, Incarnation::default());
        assert!(!old.tracks_ready && old.tracks.is_empty() && old.mixes.is_empty());
        assert_eq!((old.music_id, old.state), (event.music_id, event.state));
    }

    #[test]
    fn max_deliveries_advisories_read_as_the_server_writes_them() {
        let json = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x",
            "timestamp":"2026-01-01T00:00:00Z","stream":"DME_WORK","consumer":"separator",
            "stream_seq":42,"deliveries":5}"#;
        let advisory = MaxDeliveries::from_json(json).unwrap();
        assert_eq!((advisory.stream_seq, advisory.deliveries), (42, 5));
        assert!(MaxDeliveries::from_json(b"{}").is_err());
    }

    /// Songs whose segments finish in any order while the window changes at every release:
    /// every segment is released. The reviewer's counterexample (window 2, segment 1 finishing
    /// before segment 0, then window 3) left segments 4, 7, 10, ... unreleased under a walk
    /// from `k + min(w, window)`.
    #[test]
    fn segments_finishing_in_any_order_under_any_window_are_all_released() {
        let plan = SegmentPlan::new(40 * 10, 10, true); // 40 segments
        let count = plan.count();
        let first = |window: u32| SegmentWork {
            music_id: MusicId(7),
            job_id: JobId::of(MusicId(7), 0),
            index: 0,
            plan,
            window,
            model: "m".into(),
            incarnation: Incarnation(1),
        };
        let run = |mut next_window: Box<dyn FnMut() -> u32>,
                   mut pick: Box<dyn FnMut(usize) -> usize>| {
            let w0 = next_window();
            let song = first(w0);
            // The splitter releases `0..w0`.
            let mut released: std::collections::BTreeMap<u32, SegmentWork> =
                (0..w0.min(count)).map(|i| (i, song.at(i, w0))).collect();
            let mut pending: Vec<u32> = released.keys().copied().collect();
            while !pending.is_empty() {
                let k = pending.remove(pick(pending.len()));
                let window = next_window();
                let finished = released[&k].clone();
                for next in finished.released_on_finish(window) {
                    if let std::collections::btree_map::Entry::Vacant(e) =
                        released.entry(next.index)
                    {
                        pending.push(next.index);
                        e.insert(next);
                    }
                }
            }
            released.len() as u32
        };
        // The counterexample: window 2, then 3; segment 1 finishes first, then in order.
        let mut windows = vec![2, 2, 3].into_iter();
        let mut order = vec![1, 0].into_iter();
        assert_eq!(
            run(
                Box::new(move || windows.next().unwrap_or(3)),
                Box::new(move |_| order.next().unwrap_or(0)),
            ),
            count
        );
        // Pseudo-random windows (1 to 9) and finishing orders.
        for seed in 0..200u64 {
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let rand = move || {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u32
            };
            let rand = std::rc::Rc::new(std::cell::RefCell::new(rand));
            let (a, b) = (rand.clone(), rand.clone());
            assert_eq!(
                run(
                    Box::new(move || 1 + (a.borrow_mut())() % 9),
                    Box::new(move |n| (b.borrow_mut())() as usize % n),
                ),
                count,
                "seed {seed}"
            );
        }
    }
}

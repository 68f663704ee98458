//! What the KV buckets hold (CBOR, see [`crate::encode`]).

use serde::{Deserialize, Serialize};

use crate::{Incarnation, JobId, MusicId, SegmentPlan, TrackId};

/// Where a song is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MusicState {
    /// Stored, waiting for the splitter.
    Queued,
    /// Segments are being separated.
    Separating,
    /// Stems are being assembled or a selection mixed.
    Mixing,
    /// Stems (and the latest selection's mix, if any) are ready.
    Done,
    /// Gave up; `error` says why.
    Failed,
}

impl MusicState {
    /// Lower-case name, as in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            MusicState::Queued => "queued",
            MusicState::Separating => "separating",
            MusicState::Mixing => "mixing",
            MusicState::Done => "done",
            MusicState::Failed => "failed",
        }
    }
}

/// One stem track of a song.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRecord {
    /// Stem name from the model (`drums`, `bass`, ...).
    pub name: String,
    /// Its id.
    pub track_id: TrackId,
}

impl TrackRecord {
    /// The tracks of `music` for a model with these `sources`, with stable ids.
    pub fn for_sources(music: MusicId, sources: &[String]) -> Vec<TrackRecord> {
        sources
            .iter()
            .map(|name| TrackRecord {
                name: name.clone(),
                track_id: TrackId::of(music, name),
            })
            .collect()
    }
}

/// A track's gain in a mix, in tenths of a decibel: the API's `gain_db` rounded to 0.1 dB, so
/// that gains a listener cannot tell apart are one mix, compare equal and spell one key.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Gain(pub i16);

impl Gain {
    /// Quietest gain a selection may ask for: −60 dB is inaudible under the other stems (a track
    /// left out of the selection is the way to mute it).
    pub const MIN_DB: f64 = -60.0;
    /// Loudest gain a selection may ask for: +12 dB lifts a quiet stem well above the others;
    /// more would only make the mix's peak normalisation turn everything else down.
    pub const MAX_DB: f64 = 12.0;
    /// 0 dB: the track as separated.
    pub const UNITY: Gain = Gain(0);

    /// `db` rounded to 0.1 dB; `None` when it is not a finite number within
    /// [[`Gain::MIN_DB`], [`Gain::MAX_DB`]].
    pub fn from_db(db: f64) -> Option<Gain> {
        (db.is_finite() && (Self::MIN_DB..=Self::MAX_DB).contains(&db))
            .then(|| Gain((db * 10.0).round() as i16))
    }

    /// The gain in decibels (a multiple of 0.1).
    pub fn db(self) -> f64 {
        f64::from(self.0) / 10.0
    }

    /// The factor samples are multiplied by: exactly 1.0 at 0 dB, so a mix without gains is the
    /// plain sum of its tracks, bit for bit.
    pub fn linear(self) -> f32 {
        if self == Gain::UNITY {
            1.0
        } else {
            10f64.powf(self.db() / 20.0) as f32
        }
    }
}

/// A selection of tracks and its mix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixRecord {
    /// [`crate::objects::mix_key`] of the selection and its gains.
    pub key: String,
    /// The tracks, as chosen.
    pub tracks: Vec<TrackId>,
    /// Each track's gain, aligned with `tracks`; empty when every gain is 0 dB (and in records
    /// written before gains existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gains: Vec<Gain>,
    /// True once the mix object is written.
    pub ready: bool,
}

impl MixRecord {
    /// The gain of the `i`-th track of [`MixRecord::tracks`] (0 dB when none is recorded).
    pub fn gain(&self, i: usize) -> Gain {
        self.gains.get(i).copied().unwrap_or_default()
    }

    /// Every track's gain in decibels, aligned with [`MixRecord::tracks`].
    pub fn gains_db(&self) -> Vec<f64> {
        (0..self.tracks.len()).map(|i| self.gain(i).db()).collect()
    }
}

/// A song: what the gateway answers for `GET /music/{id}`, and the progress of its processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MusicRecord {
    /// Its id (from the content hash).
    pub music_id: MusicId,
    /// blake3 of the file, hex: tells a real duplicate from an id collision.
    pub content_hash: String,
    /// Title from the tags, else the file name without extension.
    pub name: String,
    /// Artist from the tags, else empty.
    pub band: String,
    /// File name as uploaded (sanitised), may be empty.
    pub file_name: String,
    /// Bytes of the original.
    pub size: u64,
    /// Codec short name.
    pub codec: String,
    /// Source sample rate.
    pub sample_rate: u32,
    /// Source channels.
    pub channels: u16,
    /// Duration in seconds.
    pub duration_s: f64,
    /// The stems this song is separated into.
    pub tracks: Vec<TrackRecord>,
    /// Fingerprint of the model the tracks come from.
    pub model: String,
    /// Upload time, ms since the epoch.
    pub created_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_ms: u64,
    /// State.
    pub state: MusicState,
    /// Why it failed.
    pub error: Option<String>,
    /// The segment plan, once the splitter has cut the song.
    pub plan: Option<SegmentPlan>,
    /// Which segments are separated (index → done); empty until cut.
    pub separated: Vec<bool>,
    /// Segments whose finished part of every stem is stored ([`crate::objects::part`]): the
    /// first `parts` segments, so the stems are playable up to [`MusicRecord::ready_frames`]
    /// while the rest separates. 0 in records written before parts existed.
    #[serde(default)]
    pub parts: u32,
    /// True once every stem track is assembled.
    pub tracks_ready: bool,
    /// Mixes asked for, latest last.
    pub mixes: Vec<MixRecord>,
    /// This life of the record (chosen when it is created): work that carries another one is
    /// left over from before a reset and is dropped.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// Who uploaded it, as the gateway keys clients (an IPv4 address, or an IPv6 address's /64),
    /// so that every gateway counts a client's uploads in flight from the records alone; `None`
    /// in records written before it existed.
    #[serde(default)]
    pub client: Option<String>,
}

impl MusicRecord {
    /// True while the song still takes work and store space to finish: neither done nor failed.
    pub fn in_flight(&self) -> bool {
        !matches!(self.state, MusicState::Done | MusicState::Failed)
    }

    /// Samples per channel from the song's start that every stem holds finished: all of them
    /// once the tracks are ready, else up to the offset of the first segment without a part;
    /// none for a failed song (it is separated again from the start when retried).
    pub fn ready_frames(&self) -> u64 {
        let Some(plan) = self.plan.filter(|_| self.state != MusicState::Failed) else {
            return 0;
        };
        if self.tracks_ready {
            return plan.frames;
        }
        plan.part_end(self.parts)
    }

    /// Segments separated so far.
    pub fn segments_done(&self) -> u32 {
        self.separated.iter().filter(|d| **d).count() as u32
    }

    /// 0-100: the share of segments separated; 100 only once the stems are assembled and the
    /// latest selection (if any) is mixed, so a client that sees 100 finds every link.
    pub fn progress(&self) -> u8 {
        if self.tracks_ready && self.mixes.last().is_none_or(|m| m.ready) {
            return 100;
        }
        if self.separated.is_empty() {
            return 0;
        }
        let pct = 100 * self.segments_done() as u64 / self.separated.len() as u64;
        pct.min(99) as u8
    }

    /// True when the song should be moving (queued, separating or mixing) but its record has not
    /// changed for `after_ms`: no segment finished, no step completed.
    pub fn stalled(&self, now_ms: u64, after_ms: u64) -> bool {
        matches!(
            self.state,
            MusicState::Queued | MusicState::Separating | MusicState::Mixing
        ) && now_ms.saturating_sub(self.updated_ms) > after_ms
    }

    /// Marks the song failed with `reason`; false (and nothing changed) when it already failed,
    /// so the first reason stays.
    pub fn fail(&mut self, reason: &str) -> bool {
        if self.state == MusicState::Failed {
            return false;
        }
        self.state = MusicState::Failed;
        self.error = Some(reason.to_string());
        self.updated_ms = crate::now_ms();
        true
    }

    /// The latest selection, if any.
    pub fn latest_mix(&self) -> Option<&MixRecord> {
        self.mixes.last()
    }

    /// Index of the track in this song's track list.
    pub fn stem_index(&self, track: TrackId) -> Option<usize> {
        self.tracks.iter().position(|t| t.track_id == track)
    }
}

/// Where one segment's separation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// In the queue (or waiting for its turn in the song's window).
    Queued,
    /// A worker has it.
    Running,
    /// Stems stored.
    Done,
    /// Given up.
    Failed,
}

/// One segment's separation: what `GET /job/{id}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub job_id: JobId,
    /// The song.
    pub music_id: MusicId,
    /// Segment index.
    pub index: u32,
    /// First sample of the segment in the song.
    pub offset: u64,
    /// Samples in the segment.
    pub len: u32,
    /// Bytes of the model input.
    pub size: u64,
    /// State.
    pub state: JobState,
    /// Worker that ran (or runs) it.
    pub worker: Option<String>,
    /// Deliveries so far.
    pub attempts: u32,
    /// Milliseconds of inference of the successful attempt.
    pub time_ms: u64,
    /// The tracks this job produces stems for.
    pub tracks: Vec<TrackId>,
    /// Why it failed.
    pub error: Option<String>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_ms: u64,
    /// The life of the song's record the job belongs to: work left over from before a reset
    /// leaves a job of the song uploaded after it alone.
    #[serde(default)]
    pub incarnation: Incarnation,
}

impl JobRecord {
    /// Marks the job taken by `worker` on delivery `attempt`.
    pub fn start(&mut self, worker: &str, attempt: u32) {
        self.state = JobState::Running;
        self.worker = Some(worker.to_string());
        self.attempts = attempt;
        self.updated_ms = crate::now_ms();
    }

    /// Marks the job done by `worker` on delivery `attempt`, after `time_ms` of inference.
    pub fn finish(&mut self, worker: &str, attempt: u32, time_ms: u64) {
        self.state = JobState::Done;
        self.worker = Some(worker.to_string());
        self.attempts = attempt;
        self.time_ms = time_ms;
        self.error = None;
        self.updated_ms = crate::now_ms();
    }

    /// Marks the job failed with `reason`.
    pub fn fail(&mut self, reason: &str) {
        self.state = JobState::Failed;
        self.error = Some(reason.to_string());
        self.updated_ms = crate::now_ms();
    }
}

/// The model the separators run, registered by each separator at start-up. The gateway reads it
/// to answer an upload with the model's stems, the splitter to cut songs to its segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Short name (from the model's metadata, else its file name).
    pub name: String,
    /// blake3 of the model file, hex, first 16 characters.
    pub fingerprint: String,
    /// Stem names, in output order.
    pub sources: Vec<String>,
    /// Segment length in samples.
    pub segment: u32,
    /// True when the model takes exactly `segment` samples.
    pub fixed: bool,
    /// Sample rate the model runs at.
    pub sample_rate: u32,
}

impl ModelInfo {
    /// What a simulated separator (`DME_FAKE_INFER_MS`, a test and benchmark aid) registers
    /// instead of this model: another name and fingerprint, so its stems (the input and
    /// silence) form a pool of their own and never reach a song cut for the real model.
    pub fn simulated(&self) -> ModelInfo {
        let fingerprint = blake3::hash(format!("{}:simulated", self.fingerprint).as_bytes());
        ModelInfo {
            name: format!("{}-simulated", self.name),
            fingerprint: fingerprint.to_hex()[..16].to_string(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gains_round_to_a_tenth_of_a_decibel_within_their_range() {
        assert_eq!(Gain::from_db(-3.54), Some(Gain(-35)));
        assert_eq!(Gain::from_db(-3.55), Some(Gain(-36)));
        assert_eq!(Gain::from_db(-0.04), Some(Gain::UNITY));
        assert_eq!(Gain::from_db(12.0), Some(Gain(120)));
        assert_eq!(Gain::from_db(-60.0), Some(Gain(-600)));
        for bad in [12.01, -60.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Gain::from_db(bad), None, "{bad}");
        }
        assert_eq!(Gain::UNITY.linear(), 1.0);
        assert!((Gain(60).linear() - 1.995_262_3).abs() < 1e-6);
        assert!((Gain(-200).linear() - 0.1).abs() < 1e-7);
    }

    /// A mix record as written before gains: it decodes with every gain at 0 dB, and a record
    /// without gains is written exactly as before.
    #[test]
    fn a_mix_record_from_before_gains_decodes_at_unity() {
        let mix = MixRecord {
            key: "0-2".into(),
            tracks: vec![TrackId(5), TrackId(9)],
            gains: Vec::new(),
            ready: true,
        };
        let mut value = ciborium::Value::serialized(&mix).unwrap();
        let ciborium::Value::Map(fields) = &mut value else {
            panic!("a mix record is a CBOR map");
        };
        assert!(fields.iter().all(|(k, _)| k.as_text() != Some("gains")));
        fields.retain(|(k, _)| k.as_text() != Some("gains"));
        let old: MixRecord = crate::decode(&crate::encode(&value)).unwrap();
        assert_eq!(old, mix);
        assert_eq!(old.gains_db(), [0.0, 0.0]);
        let loud = MixRecord {
            gains: vec![Gain(-35), Gain(60)],
            ..mix
        };
        let back: MixRecord = crate::decode(&crate::encode(&loud)).unwrap();
        assert_eq!(back.gains_db(), [-3.5, 6.0]);
    }

    /// A record as an older gateway wrote it: every field but `client`.
    #[test]
    fn a_record_from_before_the_client_field_decodes_without_a_client() {
        let music = MusicId(7);
        let record = MusicRecord {
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
            tracks: TrackRecord::for_sources(music, &["drums".into()]),
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
            incarnation: Incarnation::default(),
            client: Some("10.0.0.1".into()),
        };
        let mut value = ciborium::Value::serialized(&record).unwrap();
        let ciborium::Value::Map(fields) = &mut value else {
            panic!("a record is a CBOR map");
        };
        fields.retain(|(k, _)| k.as_text() != Some("client"));
        let old = crate::encode(&value);
        let decoded: MusicRecord = crate::decode(&old).unwrap();
        assert_eq!(decoded.client, None);
        assert_eq!(
            decoded,
            MusicRecord {
                client: None,
                ..record.clone()
            }
        );
        let now: MusicRecord = crate::decode(&crate::encode(&record)).unwrap();
        assert_eq!(now.client.as_deref(), Some("10.0.0.1"));
    }
}

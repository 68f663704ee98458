//! Messages on the work and event subjects (CBOR, see [`crate::encode`]).

use serde::{Deserialize, Serialize};

use crate::records::{MusicRecord, MusicState};
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

/// Segments of one song in the separators' queue at once, unless configured otherwise
/// (`DME_SEGMENT_WINDOW`). With several songs in flight each gets this many places, so a short
/// song waits behind at most this many segments of a long one; 16 keeps up to 16 separators busy
/// on a single song.
pub const DEFAULT_SEGMENT_WINDOW: u32 = 16;

/// [`crate::subjects::WORK_SEGMENT`]: separate one segment.
///
/// The input window is in the object store at [`crate::objects::segment_input`]. Segments of one
/// song are released `window` at a time: the worker that finishes segment `k` releases
/// `k + window`, so many songs share the workers fairly instead of queueing one behind another.
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
    /// Segments of this song in the queue at once.
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
    /// The work item that finishing this one releases, if any.
    pub fn successor(&self) -> Option<SegmentWork> {
        if self.window == 0 {
            return None;
        }
        let index = self.index.checked_add(self.window)?;
        self.plan.segment(index)?;
        Some(SegmentWork {
            job_id: JobId::of(self.music_id, index),
            index,
            ..self.clone()
        })
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

/// `dme.event.<music_id>`: a song's state or progress changed.
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
}

impl ProgressEvent {
    /// The event that tells where `record`'s song is now.
    pub fn of(record: &MusicRecord) -> ProgressEvent {
        ProgressEvent {
            music_id: record.music_id,
            state: record.state,
            progress: record.progress(),
            segments_done: record.segments_done(),
            segments: record.separated.len() as u32,
            error: record.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_chain_through_the_plan() {
        let plan = SegmentPlan::new(100, 40, true); // 4 segments
        let first = SegmentWork {
            music_id: MusicId(7),
            job_id: JobId::of(MusicId(7), 1),
            index: 1,
            plan,
            window: 2,
            model: "m".into(),
            incarnation: Incarnation(9),
        };
        let next = first.successor().unwrap();
        assert_eq!(next.index, 3);
        assert_eq!(next.job_id, JobId::of(MusicId(7), 3));
        assert_eq!(next.incarnation, Incarnation(9));
        assert_ne!(
            next.msg_id(),
            SegmentWork {
                incarnation: Incarnation(10),
                ..next.clone()
            }
            .msg_id()
        );
        assert!(next.successor().is_none());
        let bytes = crate::encode(&first);
        assert_eq!(crate::decode::<SegmentWork>(&bytes).unwrap(), first);
        assert!(crate::decode::<SegmentWork>(b"\xff\x00garbage").is_err());
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
}

//! Messages on the work and event subjects (CBOR, see [`crate::encode`]).

use serde::{Deserialize, Serialize};

use crate::records::{MusicRecord, MusicState};
use crate::{JobId, MusicId, SegmentPlan, TrackId};

/// What every work message says about itself, for logs and for failing its song.
pub trait WorkItem {
    /// The song the work is for.
    fn music_id(&self) -> MusicId;
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
}

impl WorkItem for MusicUploaded {
    fn music_id(&self) -> MusicId {
        self.music_id
    }
}

impl MusicUploaded {
    /// The JetStream message id that makes a repeated publish (a re-upload) a no-op.
    pub fn msg_id(&self) -> String {
        format!("up-{}", self.music_id)
    }
}

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
}

impl WorkItem for SegmentWork {
    fn music_id(&self) -> MusicId {
        self.music_id
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
        format!("seg-{}-{}", self.music_id, self.index)
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
}

impl WorkItem for SegmentDone {
    fn music_id(&self) -> MusicId {
        self.music_id
    }
    fn segment_index(&self) -> Option<u32> {
        Some(self.index)
    }
}

impl SegmentDone {
    /// The JetStream message id that makes a repeated publish (a redelivered segment) a no-op.
    pub fn msg_id(&self) -> String {
        format!("done-{}-{}", self.music_id, self.index)
    }
}

/// [`crate::subjects::WORK_MIX`]: mix these tracks of a song.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixRequest {
    /// The song.
    pub music_id: MusicId,
    /// The chosen tracks (checked against the song by the gateway).
    pub tracks: Vec<TrackId>,
}

impl WorkItem for MixRequest {
    fn music_id(&self) -> MusicId {
        self.music_id
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
        };
        let next = first.successor().unwrap();
        assert_eq!(next.index, 3);
        assert_eq!(next.job_id, JobId::of(MusicId(7), 3));
        assert!(next.successor().is_none());
        let bytes = crate::encode(&first);
        assert_eq!(crate::decode::<SegmentWork>(&bytes).unwrap(), first);
        assert!(crate::decode::<SegmentWork>(b"\xff\x00garbage").is_err());
    }
}

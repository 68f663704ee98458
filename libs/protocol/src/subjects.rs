//! Subject names, each constant named like its subject (`WORK_SEGMENT` is `dme.work.segment`).
//! Work subjects are consumed once (work-queue streams); event subjects are broadcast and kept
//! for a while for live progress.

use crate::MusicId;

/// `dme.work.uploaded`: an upload was stored; the splitter decodes and cuts it. Payload:
/// [`crate::messages::MusicUploaded`].
pub const WORK_UPLOADED: &str = "dme.work.uploaded";
/// `dme.work.segment`: one segment to separate. Payload: [`crate::messages::SegmentWork`].
pub const WORK_SEGMENT: &str = "dme.work.segment";
/// `dme.work.separated`: one segment was separated; its stems are in the object store. Payload:
/// [`crate::messages::SegmentDone`].
pub const WORK_SEPARATED: &str = "dme.work.separated";
/// `dme.work.mix`: a user chose instruments to mix. Payload: [`crate::messages::MixRequest`].
pub const WORK_MIX: &str = "dme.work.mix";
/// `dme.work.>`: every work subject.
pub const WORK_ALL: &str = "dme.work.>";

/// `dme.event`: prefix of progress events, `dme.event.<music_id>`. Payload:
/// [`crate::messages::ProgressEvent`].
pub const EVENT_PREFIX: &str = "dme.event";
/// `dme.event.>`: every progress event.
pub const EVENT_ALL: &str = "dme.event.>";

/// Subject of the progress events of one song.
pub fn event(music: MusicId) -> String {
    format!("{EVENT_PREFIX}.{music}")
}

/// JetStream advisory published when a message of `stream`'s `consumer` ran out of deliveries
/// (`*` for every consumer). Captured by [`crate::streams::ADVISORY_STREAM`].
pub fn max_deliveries_advisory(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

//! Subject names. Work subjects are consumed once (work-queue streams); event subjects are
//! broadcast and kept for a while for live progress.

use crate::MusicId;

/// An upload was stored; the splitter decodes and cuts it. Payload: [`crate::messages::MusicUploaded`].
pub const MUSIC_UPLOADED: &str = "dme.work.uploaded";
/// One segment to separate. Payload: [`crate::messages::SegmentWork`].
pub const SEGMENT_TODO: &str = "dme.work.segment";
/// One segment was separated; its stems are in the object store. Payload: [`crate::messages::SegmentDone`].
pub const SEGMENT_DONE: &str = "dme.work.separated";
/// A user chose instruments to mix. Payload: [`crate::messages::MixRequest`].
pub const MIX_REQUESTED: &str = "dme.work.mix";
/// Prefix of all work subjects.
pub const WORK_ALL: &str = "dme.work.>";

/// Prefix of progress events: `dme.event.<music_id>`. Payload: [`crate::messages::ProgressEvent`].
pub const EVENT_PREFIX: &str = "dme.event";
/// Every progress event.
pub const EVENT_ALL: &str = "dme.event.>";

/// Subject of the progress events of one song.
pub fn event(music: MusicId) -> String {
    format!("{EVENT_PREFIX}.{music}")
}

/// JetStream advisory published when a message of `stream`'s `consumer` ran out of deliveries.
pub fn max_deliveries_advisory(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

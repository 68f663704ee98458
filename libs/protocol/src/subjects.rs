//! Subject names, each constant named like its subject (`WORK_SEGMENT` is `dme.work.segment`).
//! Work subjects are consumed once (work-queue streams); event subjects are broadcast and kept
//! for a while for live progress.
//!
//! A work message travels on its kind's subject followed by its song's id
//! (`dme.work.segment.<music_id>`, see [`work`]), so what is queued for one song can be counted
//! or dropped by subject ([`song_work`]); each consumer takes every song's ([`work_filter`]).

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

/// The subject of a work message of `kind` (one of the `WORK_*` constants) for `music`.
pub fn work(kind: &str, music: MusicId) -> String {
    format!("{kind}.{music}")
}

/// The filter of `kind`'s consumer: that kind of work for every song.
pub fn work_filter(kind: &str) -> String {
    format!("{kind}.*")
}

/// Every kind of work queued for `music`.
pub fn song_work(music: MusicId) -> String {
    format!("dme.work.*.{music}")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_songs_work_is_matched_by_its_kinds_filter_and_its_songs_subject() {
        let subject = work(WORK_SEGMENT, MusicId(42));
        assert_eq!(subject, "dme.work.segment.42");
        assert_eq!(work_filter(WORK_SEGMENT), "dme.work.segment.*");
        assert_eq!(song_work(MusicId(42)), "dme.work.*.42");
        assert!(subject.starts_with("dme.work."), "inside {WORK_ALL}");
    }
}

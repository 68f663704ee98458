//! Subject names, each constant named like its subject (`WORK_SEGMENT` is `dme.work.segment`).
//! Work subjects are consumed once (work-queue streams); event subjects are broadcast and kept
//! for a while for live progress.
//!
//! A work message travels on its kind's subject followed by its song's id
//! (`dme.work.uploaded.<music_id>`, see [`work`]), so what is queued for one song can be counted
//! or dropped by subject ([`song_work`]); each consumer takes every song's ([`work_filter`]).
//! Segments are the one kind split further, by the model they were cut for
//! (`dme.work.segment.<fingerprint>.<music_id>`, see [`work_segment`]): each model's pool of
//! separators has its own consumer, and a worker never receives another model's segment.

use crate::MusicId;

/// `dme.work.uploaded`: an upload was stored; the splitter decodes and cuts it. Payload:
/// [`crate::messages::MusicUploaded`].
pub const WORK_UPLOADED: &str = "dme.work.uploaded";
/// `dme.work.segment`: prefix of the segments to separate, one kind per model
/// ([`work_segment`]). Payload: [`crate::messages::SegmentWork`].
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

/// The kind of work of the segments cut for the model whose fingerprint is `model`:
/// `dme.work.segment.<fingerprint>`, so a segment's subject is
/// `work(&work_segment(model), music)` and its pool's consumer filters
/// `work_filter(&work_segment(model))`. (A fingerprint is hex, so it is one subject token.)
pub fn work_segment(model: &str) -> String {
    format!("{WORK_SEGMENT}.{model}")
}

/// The filters of every kind of work queued for `music`: the kinds of one word
/// (`dme.work.*.<music>`) and the segments of every model (`dme.work.*.*.<music>`).
pub fn song_work(music: MusicId) -> [String; 2] {
    [
        format!("dme.work.*.{music}"),
        format!("dme.work.*.*.{music}"),
    ]
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

/// `dme.api`: prefix of the JSON request/reply API (the `dme-api` NATS micro service the gateway
/// serves): `dme.api.music.upload`, `dme.api.music.get`, ... (see [`API_ENDPOINTS`]).
pub const API_PREFIX: &str = "dme.api";

/// Name of the JSON API's NATS micro service (`nats micro info dme-api`).
pub const API_SERVICE: &str = "dme-api";

/// The JSON API's endpoints: each is `dme.api.<subject>` and is named `<name>` in the micro
/// service's info. Bodies are the HTTP API's JSON.
pub const API_ENDPOINTS: [(&str, &str); 10] = [
    ("music-upload", "music.upload"),
    ("music-list", "music.list"),
    ("music-get", "music.get"),
    ("music-select", "music.select"),
    ("music-delete", "music.delete"),
    ("music-retry", "music.retry"),
    ("job-list", "job.list"),
    ("job-get", "job.get"),
    ("model-list", "model.list"),
    ("reset", "reset"),
];

/// The subjects (after [`API_PREFIX`]) of the endpoints only an administrator may use: they
/// delete what others uploaded. The job submitter's NATS user is denied them.
pub const API_ADMIN_ENDPOINTS: [&str; 2] = ["music.delete", "reset"];

/// `dme.api.event`: prefix of the JSON copy of progress events, `dme.api.event.<music_id>`,
/// published on core NATS (not kept) with the `data` of the HTTP event stream, so that
/// `nats sub 'dme.api.event.>'` shows them readably.
pub const API_EVENT_PREFIX: &str = "dme.api.event";

/// Subject of the JSON progress events of one song.
pub fn api_event(music: MusicId) -> String {
    format!("{API_EVENT_PREFIX}.{music}")
}

/// Whether dme answers a request whose reply subject is `reply`: only an inbox (`_INBOX.<id>`
/// of tools and clients, `_INBOX_<user>.<id>` of dme's services). An answer goes out with the
/// answering service's rights, so a request naming, say, `$JS.API.STREAM.PURGE.<stream>` as its
/// reply subject must not be answered.
pub fn answerable(reply: Option<&str>) -> bool {
    reply.is_some_and(|r| {
        let first = r.split('.').next().unwrap_or("");
        (first == "_INBOX" || first.starts_with("_INBOX_")) && r.len() > first.len() + 1
    })
}

/// The header naming the file of an inline upload on `dme.api.music.upload` (its extension is
/// the decoder's hint, its stem the song's name when the file has no title tag).
pub const FILE_NAME_HEADER: &str = "Dme-File-Name";

/// The header naming the model (by name or fingerprint, see `dme.api.model.list`) an upload on
/// `dme.api.music.upload` is separated with, as `POST /music?model=` does; without it, the
/// default model.
pub const MODEL_HEADER: &str = "Dme-Model";

/// `$SRV.PING`: NATS micro-service discovery; every micro service answers with its name, id,
/// version and metadata (`nats micro ping`).
pub const SERVICE_PING: &str = "$SRV.PING";
/// `$SRV.INFO`: every micro service answers with its description and endpoints (`nats micro
/// info`).
pub const SERVICE_INFO: &str = "$SRV.INFO";
/// `$SRV.STATS`: every micro service answers with its endpoints' request counts and each
/// endpoint's `data` (`nats micro stats`).
pub const SERVICE_STATS: &str = "$SRV.STATS";
/// `dme-splitter`: the splitter's micro-service name.
pub const SERVICE_SPLITTER: &str = "dme-splitter";
/// `dme-mixer`: the mixer's micro-service name.
pub const SERVICE_MIXER: &str = "dme-mixer";
/// `dme-separator`: every separator's micro-service name (one instance per process).
pub const SERVICE_SEPARATOR: &str = "dme-separator";
/// `dme.status`: the group of each worker's `status` endpoint, `dme.status.<service>.<id>`
/// (`nats req dme.status.dme-separator.<id> ''` answers that instance's live status as JSON).
pub const STATUS_GROUP: &str = "dme.status";

/// The subject of the `status` endpoint of micro-service instance `id` of `service`.
pub fn status(service: &str, id: &str) -> String {
    format!("{STATUS_GROUP}.{service}.{id}")
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
    fn only_inboxes_are_answered() {
        assert!(answerable(Some("_INBOX.abc.1")));
        assert!(answerable(Some("_INBOX_gateway.xyz")));
        for not in [
            None,
            Some("$JS.API.STREAM.PURGE.OBJ_dme-files"),
            Some("$KV.dme-music.1"),
            Some("_INBOX"),
            Some("_INBOXX"),
            Some("dme.work.uploaded.1"),
        ] {
            assert!(!answerable(not), "{not:?}");
        }
    }

    #[test]
    fn a_songs_work_is_matched_by_its_kinds_filter_and_its_songs_subject() {
        let subject = work(WORK_UPLOADED, MusicId(42));
        assert_eq!(subject, "dme.work.uploaded.42");
        assert_eq!(work_filter(WORK_UPLOADED), "dme.work.uploaded.*");
        let segment = work(&work_segment("0123abcd"), MusicId(42));
        assert_eq!(segment, "dme.work.segment.0123abcd.42");
        assert_eq!(
            work_filter(&work_segment("0123abcd")),
            "dme.work.segment.0123abcd.*"
        );
        assert_eq!(
            song_work(MusicId(42)),
            ["dme.work.*.42".to_string(), "dme.work.*.*.42".to_string()]
        );
        for s in [subject, segment] {
            assert!(s.starts_with("dme.work."), "inside {WORK_ALL}");
        }
    }
}

//! Stream, consumer and bucket definitions. Every service declares what it uses at start-up with
//! `get_or_create_*`, so the order in which services start does not matter.
//!
//! Every stream and bucket is declared with a number of replicas (`DME_REPLICAS`: 1 on one
//! nats-server, 3 on a 3-node JetStream cluster). Durable consumers leave `num_replicas` at 0,
//! which JetStream reads as "as many as the stream", so they follow their stream.

use std::time::Duration;

use async_nats::jetstream::{consumer, kv, object_store, stream};

use crate::subjects;

/// The work-queue stream: uploads to split, segments to separate, separated segments to
/// assemble, mixes to make. Each message is removed once its one consumer acks it.
pub const WORK_STREAM: &str = "DME_WORK";
/// Progress events, kept for a while so a late subscriber (a web page) can catch up.
pub const EVENT_STREAM: &str = "DME_EVENTS";
/// JetStream's max-deliveries advisories of the work consumers, kept until the mixer has failed
/// the work they name: a plain advisory published while no mixer listens would be lost, and the
/// crash-looping item would stay in the queue for good.
pub const ADVISORY_STREAM: &str = "DME_ADVISORIES";

/// Durable consumer of [`subjects::WORK_UPLOADED`].
pub const SPLITTER_CONSUMER: &str = "splitter";
/// Prefix of the separators' durable consumers: one per model ([`separator_consumer`]).
pub const SEPARATOR_CONSUMER_PREFIX: &str = "separator-";

/// The durable consumer of the segments cut for the model whose fingerprint is `model`
/// (`separator-<fingerprint>`, filtering [`subjects::work_segment`]), shared by every separator
/// running that model: a model's pool. (A work-queue stream forbids consumers whose filters
/// overlap, so no consumer takes every model's segments.)
pub fn separator_consumer(model: &str) -> String {
    format!("{SEPARATOR_CONSUMER_PREFIX}{model}")
}

/// The model whose pool consumer `consumer` is, if it is one ([`separator_consumer`]).
pub fn separator_consumer_model(consumer: &str) -> Option<&str> {
    consumer
        .strip_prefix(SEPARATOR_CONSUMER_PREFIX)
        .filter(|m| !m.is_empty())
}
/// Durable consumer of [`subjects::WORK_SEPARATED`].
pub const MIXER_ASSEMBLE_CONSUMER: &str = "mixer-assemble";
/// Durable consumer of [`subjects::WORK_MIX`].
pub const MIXER_MIX_CONSUMER: &str = "mixer-mix";
/// Durable consumer of [`ADVISORY_STREAM`] (the mixer fails the work each advisory names).
pub const MIXER_ADVISORY_CONSUMER: &str = "mixer-advisories";

/// KV bucket of music records, keyed by music id.
pub const MUSIC_BUCKET: &str = "dme-music";
/// KV bucket of job (segment) records, keyed by job id.
pub const JOB_BUCKET: &str = "dme-jobs";
/// KV bucket of system-wide facts, such as the registered models ([`model_key`]).
pub const SYSTEM_BUCKET: &str = "dme-system";
/// Prefix of the keys of registered models in [`SYSTEM_BUCKET`].
pub const MODEL_KEY_PREFIX: &str = "model.";

/// The key of the [`crate::records::ModelInfo`] of the model whose fingerprint is `model` in
/// [`SYSTEM_BUCKET`]: `model.<fingerprint>`.
pub fn model_key(model: &str) -> String {
    format!("{MODEL_KEY_PREFIX}{model}")
}

/// The subject JetStream keeps `key` of KV bucket `bucket` on (`$KV.<bucket>.<key>`; `>` as the
/// key matches every key below a prefix).
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}
/// Object store of originals, segments, stems, tracks and mixes.
pub const FILE_BUCKET: &str = "dme-files";

/// How long JetStream remembers a message id to drop a duplicate publish: long enough to cover
/// a worker that re-publishes after a redelivery (ack wait × max deliveries).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How long progress events are kept.
pub const EVENT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Progress events kept per song: a page that connects late needs only the latest, and 64 covers
/// a burst of segment completions without letting a long song fill the stream.
pub const EVENTS_PER_SONG: i64 = 64;

/// Values kept per KV key: records are changed by compare-and-swap on the latest revision, and
/// nobody reads history.
pub const KV_HISTORY: i64 = 1;

/// Separator messages handed out and not yet acked, over all workers. Workers pull one message
/// per free slot, so the real bound is the number of separators; this only has to stay above any
/// cluster's size (it is not a throttle).
pub const SEPARATOR_MAX_ACK_PENDING: i64 = 10_000;
/// Like [`SEPARATOR_MAX_ACK_PENDING`] for the splitter and mixer, which run in a few copies of a
/// few slots each.
pub const PIPELINE_MAX_ACK_PENDING: i64 = 1_000;

/// The work stream, kept on `replicas` servers.
pub fn work_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: WORK_STREAM.to_string(),
        description: Some("dme work queue: uploads, segments, separated segments, mixes".into()),
        subjects: vec![subjects::WORK_ALL.to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The event stream, kept on `replicas` servers.
pub fn event_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: EVENT_STREAM.to_string(),
        description: Some("dme progress events, one subject per song".into()),
        subjects: vec![subjects::EVENT_ALL.to_string()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: EVENT_MAX_AGE,
        max_messages_per_subject: EVENTS_PER_SONG,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The advisory stream: every max-deliveries advisory of a [`WORK_STREAM`] consumer, removed
/// once the mixer acks it; kept on `replicas` servers.
pub fn advisory_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: ADVISORY_STREAM.to_string(),
        description: Some("dme: max-deliveries advisories of the work consumers".into()),
        subjects: vec![subjects::max_deliveries_advisory(WORK_STREAM, "*")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Redelivery settings of a work consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redelivery {
    /// How long a delivered message may stay unacked before JetStream gives it to another
    /// worker. Workers send in-progress acks well within it while they work.
    pub ack_wait: Duration,
    /// Deliveries before a message is given up (a poison message).
    pub max_deliver: i64,
    /// Messages delivered and not yet acked, over all workers of the consumer.
    pub max_ack_pending: i64,
}

impl Redelivery {
    /// Separators: a short ack wait so a killed worker's segment is redone quickly (in-progress
    /// acks every third of it keep a slow but alive worker's segment); five deliveries, since a
    /// segment that kills five workers is poison.
    pub const SEPARATOR: Redelivery = Redelivery {
        ack_wait: Duration::from_secs(10),
        max_deliver: 5,
        max_ack_pending: SEPARATOR_MAX_ACK_PENDING,
    };
    /// Splitter, assembler and mixer: decoding or assembling a long song takes a while, and
    /// they also send in-progress acks; ten deliveries ride out a NATS restart or two before a
    /// step is given up.
    pub const PIPELINE: Redelivery = Redelivery {
        ack_wait: Duration::from_secs(30),
        max_deliver: 10,
        max_ack_pending: PIPELINE_MAX_ACK_PENDING,
    };
}

/// A durable pull consumer named `name` of the messages on `subject` (of the work stream, or
/// of the advisory stream for [`MIXER_ADVISORY_CONSUMER`]).
pub fn work_consumer(name: &str, subject: &str, r: Redelivery) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("dme {name}: {subject}")),
        filter_subject: subject.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: r.ack_wait,
        max_deliver: r.max_deliver,
        max_ack_pending: r.max_ack_pending,
        ..Default::default()
    }
}

/// The stream behind KV bucket `bucket` (JetStream's naming).
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The object store users drop files into for `dme.api.music.upload` (`nats object put
/// dme-uploads song.mp3`); the gateway creates it and deletes each file once it is a song.
pub const UPLOAD_BUCKET: &str = "dme-uploads";

/// Most the uploads bucket holds: twenty of the largest uploads (200 MB) waiting at once.
pub const UPLOAD_BUCKET_MAX_BYTES: i64 = 4_000_000_000;

/// How long a file left in the uploads bucket is kept: a day, then JetStream removes it.
pub const UPLOAD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The uploads bucket, kept on `replicas` servers.
pub fn upload_bucket(replicas: usize) -> object_store::Config {
    object_store::Config {
        bucket: UPLOAD_BUCKET.to_string(),
        description: Some("files put here are uploaded by dme.api.music.upload".into()),
        storage: stream::StorageType::File,
        max_bytes: UPLOAD_BUCKET_MAX_BYTES,
        max_age: UPLOAD_MAX_AGE,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The durable consumer, shared by every gateway, that copies progress events to their JSON
/// subjects ([`crate::subjects::api_event`]): one event in flight at a time, so the copies keep
/// the events' order and each is published once whichever gateway takes it.
pub const API_EVENT_CONSUMER: &str = "api-events";

/// [`API_EVENT_CONSUMER`]'s settings: new events only, one at a time.
pub fn api_event_consumer() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(API_EVENT_CONSUMER.to_string()),
        filter_subject: crate::subjects::EVENT_ALL.to_string(),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(10),
        max_ack_pending: 1,
        ..Default::default()
    }
}

/// Every stream every service declares at start-up, KV buckets' and the object store's included
/// (the uploads bucket is the gateway's alone).
pub fn declared_streams() -> [String; 7] {
    [
        WORK_STREAM.to_string(),
        EVENT_STREAM.to_string(),
        ADVISORY_STREAM.to_string(),
        kv_stream(MUSIC_BUCKET),
        kv_stream(JOB_BUCKET),
        kv_stream(SYSTEM_BUCKET),
        object_stream(FILE_BUCKET),
    ]
}

/// The stream behind object store `bucket` (JetStream's naming).
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// A KV bucket keeping only the latest value of each key, on `replicas` servers.
pub fn kv_bucket(name: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        history: KV_HISTORY,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The object store, holding at most `max_bytes` (its stream's `max_bytes`: an object store's
/// stream discards new messages, so a put beyond it fails and nothing stored is lost), on
/// `replicas` servers (each holds all of it: `max_bytes` counts once per server).
pub fn file_bucket(max_bytes: u64, replicas: usize) -> object_store::Config {
    object_store::Config {
        bucket: FILE_BUCKET.to_string(),
        description: Some("dme files: originals, segments, stems, tracks, mixes".into()),
        storage: stream::StorageType::File,
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        num_replicas: replicas,
        ..Default::default()
    }
}

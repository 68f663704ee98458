//! The wire protocol of dme: every subject, stream, consumer, bucket and message type, defined
//! once. No other crate spells out a subject or a bucket name.
//!
//! # Layout
//! - [`ids`]: the stable integer ids users see (`music_id`, `track_id`, `job_id`), all below 2^53
//!   so browsers read them exactly, all derived from content so every gateway agrees on them;
//!   and a song record's [`Incarnation`], which tells a song uploaded after a reset from work
//!   left over from before it.
//! - [`subjects`]: subject names and builders.
//! - [`streams`]: stream, consumer and bucket configurations (declared idempotently at start-up).
//! - [`messages`]: the events and work items that travel on those subjects.
//! - [`records`]: what the KV buckets hold (music, jobs, the registered model).
//! - [`objects`]: names of the objects in the file store.
//! - [`permissions`]: one NATS user per role and what each may publish and subscribe to.
//!
//! Messages and records are CBOR ([`encode`], [`decode`]); audio in the object store is raw
//! little-endian f32 (see [`objects`]).

pub mod ids;
pub mod messages;
pub mod objects;
pub mod permissions;
pub mod records;
pub mod streams;
pub mod subjects;

pub use dme_segment::{Segment, SegmentPlan};
pub use ids::{Incarnation, JobId, MusicId, TrackId};

/// A message or record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct DecodeError {
    /// The Rust type that was expected.
    pub what: &'static str,
    /// What ciborium said.
    pub reason: String,
}

/// Encodes a message or record as CBOR.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

/// Decodes a CBOR message or record.
///
/// # Errors
/// [`DecodeError`] when the bytes are not CBOR of type `T`.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    ciborium::from_reader(bytes).map_err(|e| DecodeError {
        what: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Milliseconds since the Unix epoch, for timestamps in records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! Access to everything dme keeps: all state lives in NATS JetStream (no other database).
//!
//! Consumes: a NATS URL ([`NatsArgs`]). Produces: a [`Store`] through which services read and
//! write music and job records (KV), the registered model (KV), files (Object Store), publish
//! work and progress events, and take work from durable consumers ([`work::consume`]).
//! Guarantees: every stream, consumer and bucket is declared idempotently on [`Store::connect`],
//! so services can start in any order; record updates are compare-and-swap loops, so concurrent
//! writers (two gateways, a splitter, many mixers) never lose each other's changes; the client
//! reconnects by itself for as long as the process runs.
//!
//! # Layout
//! - `args`: [`NatsArgs`] and [`SpoolArgs`], the settings every service shares.
//! - `spool`: [`Spool`], a process's locked folder for temporary files; what killed processes
//!   left is swept at start-up.
//! - `connect`: connecting and declaring every stream and bucket ([`Store::connect`]).
//! - `kv`: typed get / create / compare-and-swap update of records (private).
//! - `music`, `jobs`, `model`: music records, job records, the registered model.
//! - `objects`: files in the object store, streamed ([`ObjectReader`]).
//! - `capacity`: the object store's maximum (`DME_STORE_MAX_BYTES`) and use ([`StoreUsage`]).
//! - `events`: progress events: publishing each with what changed, and following them
//!   ([`ProgressFeed`]).
//! - [`work`]: publishing work, work consumers, and the one consume loop with its verdicts.
//! - `reset`: deleting everything.
//! - [`song`]: song-level changes several services make (failing a song).
//! - [`presence`]: each worker as a NATS micro service (`$SRV.*` discovery, a `status`
//!   endpoint), and discovering them ([`presence::discover`]).
//! - `census`: work queued per kind and songs per state, for gauges.
//! - `tls`: TLS to NATS (`DME_NATS_CA`, `DME_NATS_CERT`, `DME_NATS_KEY`), checked at start-up.

mod args;
mod capacity;
mod census;
pub mod compressed;
mod connect;
mod events;
mod fleet;
mod jobs;
mod kv;
mod model;
mod music;
mod objects;
pub mod presence;
mod reset;
pub mod song;
mod spool;
pub mod tls;
mod uploads;
pub mod work;

use async_nats::jetstream::{self, kv::Store as KvStore, object_store::ObjectStore};
use dme_protocol::DecodeError;

pub use args::{Credentials, CredentialsError, NatsArgs, SpoolArgs, DEFAULT_STORE_MAX_BYTES};
pub use capacity::StoreUsage;
pub use events::{EventBounds, ProgressFeed, StoredProgress};
pub use fleet::PoolLoad;
pub use objects::{ChunkedObjectReader, ObjectReader, Unpacked, OBJECT_READ_IDLE};
pub use spool::{Spool, SpoolDir, Swept, PROCESS_LOCK};
pub use uploads::UploadBucket;

/// Something went wrong talking to NATS or reading what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS was not reachable before the start-up deadline.
    #[error("nats at {url} not reachable within {waited:?}")]
    Unreachable {
        /// The server's URL.
        url: String,
        /// How long the connection was tried.
        waited: std::time::Duration,
    },
    /// NATS refused or failed an operation; `op` names it.
    #[error("nats {op}: {source}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// NATS' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record or object could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Reading an object failed midway.
    #[error("reading object {name}: {source}")]
    Read {
        /// Object name.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A local file to be stored could not be opened.
    #[error("opening {}: {source}", path.display())]
    OpenFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// NATS refused a write because the store is full: the object store reached its maximum
    /// (`DME_STORE_MAX_BYTES`) or the server its `max_file_store`. Another attempt can succeed
    /// once songs are finished and their intermediate files deleted.
    #[error("the store is full ({op}): {detail}")]
    Full {
        /// What was being written.
        op: &'static str,
        /// NATS' words.
        detail: String,
    },
    /// A compare-and-swap update lost every race it ran (see `kv::CAS_ATTEMPTS`).
    #[error("too much contention updating {0}")]
    Contention(String),
    /// A value that cannot be stored as asked (a model whose fingerprint is not hex).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Wraps a NATS error as [`StoreError::Nats`] for `op`, or as [`StoreError::Full`] when NATS
/// refused it for want of space.
fn nats<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| {
        let detail = error_chain(&e);
        if is_full(&detail) {
            return StoreError::Full { op, detail };
        }
        StoreError::Nats {
            op,
            source: Box::new(e),
        }
    }
}

/// Whether a NATS error's text says the write was refused for want of space: a stream at its
/// `max_bytes` (JetStream error 10077) or a server at its storage limit (10023).
fn is_full(detail: &str) -> bool {
    ["maximum bytes exceeded", "insufficient resources"]
        .iter()
        .any(|words| detail.contains(words))
}

/// Result of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handles on every stream and bucket of dme. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: async_nats::Client,
    js: jetstream::Context,
    music: KvStore,
    jobs: KvStore,
    system: KvStore,
    files: ObjectStore,
    /// Replicas of what this store creates later (the uploads bucket): `DME_REPLICAS`.
    replicas: usize,
}

impl Store {
    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

/// Whether `error` says another write of the same subject came first, for a write conditioned on
/// the subject's last sequence (a KV update, a progress event): "wrong last sequence: N"
/// (10071), or, on a replicated stream while another write of the subject is still being
/// applied, "wrong last sequence" (10164), which async-nats 0.46 reports as an unknown error.
pub(crate) fn wrote_first(error: &dyn std::error::Error) -> bool {
    error_chain(error).contains("wrong last sequence")
}

/// Half of `pause` plus a random share of the other half: writers that lost a race to one
/// another try again apart.
pub(crate) fn jittered(pause: std::time::Duration) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = pause / 2;
    half + half.mul_f64((random % 1024) as f64 / 1024.0)
}

/// The text of an error and of every cause under it, `outer: inner: innermost`, for a reason
/// recorded on a song or job (where no log reader sees the chain). A cause whose text the outer
/// messages already include is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_read_outer_to_inner_without_repeats() {
        let io = std::io::Error::other("disk full");
        let read = StoreError::Read {
            name: "seg/1/0".into(),
            source: io,
        };
        // Read's message already names its cause: it is not repeated.
        assert_eq!(error_chain(&read), "reading object seg/1/0: disk full");
        #[derive(Debug, thiserror::Error)]
        #[error("cutting the song")]
        struct Outer(#[source] StoreError);
        assert_eq!(
            error_chain(&Outer(read)),
            "cutting the song: reading object seg/1/0: disk full"
        );
    }
}

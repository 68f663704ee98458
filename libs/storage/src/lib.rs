//! Access to everything dme keeps: all state lives in NATS JetStream (no other database).
//!
//! Consumes: a NATS URL. Produces: a [`Store`] through which services read and write music and
//! job records (KV), the registered model (KV), files (Object Store), publish work and events,
//! and open work consumers. Guarantees: every stream, consumer and bucket is declared
//! idempotently on [`Store::connect`], so services can start in any order; record updates are
//! compare-and-swap loops, so concurrent writers (two gateways, a splitter, many mixers) never
//! lose each other's changes; the client reconnects by itself for as long as the process runs.

pub mod work;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, kv, object_store::ObjectStore};
use bytes::Bytes;
use dme_protocol::messages::ProgressEvent;
use dme_protocol::records::{JobRecord, ModelInfo, MusicRecord, MusicState};
use dme_protocol::streams::{self, Redelivery};
use dme_protocol::{subjects, DecodeError, JobId, MusicId};
use futures::{StreamExt, TryStreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How often a compare-and-swap update is retried against concurrent writers before giving up.
const CAS_ATTEMPTS: usize = 64;

/// Something went wrong talking to NATS or reading what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS refused or could not be reached; the message names the operation.
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
    /// A compare-and-swap update lost [`CAS_ATTEMPTS`] races in a row.
    #[error("too much contention updating {0}")]
    Contention(String),
}

fn nats<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Nats {
        op,
        source: Box::new(e),
    }
}

/// Result of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handles on every stream and bucket of dme.
#[derive(Clone)]
pub struct Store {
    client: async_nats::Client,
    js: jetstream::Context,
    music: kv::Store,
    jobs: kv::Store,
    system: kv::Store,
    files: ObjectStore,
}

/// Longest wait for the next chunk of an object being read. An object deleted while it is read
/// (a reset) never delivers its remaining chunks: without this, its reader would wait forever.
/// A chunk is 128 KiB, so 30 s without one is never a slow network.
pub const OBJECT_READ_IDLE: Duration = Duration::from_secs(30);

/// A streaming reader of one object that fails with `TimedOut` after [`OBJECT_READ_IDLE`]
/// without data, instead of hanging.
pub struct ObjectReader {
    inner: async_nats::jetstream::object_store::Object,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl ObjectReader {
    fn new(inner: async_nats::jetstream::object_store::Object) -> Self {
        ObjectReader {
            inner,
            idle: Box::pin(tokio::time::sleep(OBJECT_READ_IDLE)),
        }
    }

    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        self.inner.info.size as u64
    }
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let next = tokio::time::Instant::now() + OBJECT_READ_IDLE;
                this.idle.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending => match std::future::Future::poll(this.idle.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no data for {OBJECT_READ_IDLE:?}: the object was deleted or NATS is gone"
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// How long to wait between attempts while NATS is not reachable yet.
const CONNECT_RETRY: Duration = Duration::from_millis(250);

impl Store {
    /// Connects to NATS at `url` as `name` (shown in the server's connection list), retrying
    /// until `deadline` passes, and declares every stream and bucket.
    ///
    /// # Errors
    /// When NATS cannot be reached before the deadline or refuses a declaration.
    pub async fn connect(url: &str, name: &str, deadline: Duration) -> Result<Store> {
        let started = tokio::time::Instant::now();
        let client = loop {
            let attempt = async_nats::ConnectOptions::new()
                .name(name)
                .max_reconnects(None)
                .connection_timeout(Duration::from_secs(5))
                // Requests (KV, object store, acks) wait out a server restart instead of failing
                // at the first reconnect.
                .request_timeout(Some(Duration::from_secs(10)))
                .connect(url)
                .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if started.elapsed() < deadline => {
                    tracing::debug!(error = %e, url, "nats not reachable yet");
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err(e) => return Err(nats("connect")(e)),
            }
        };
        Self::open(client).await
    }

    /// Declares every stream and bucket on an existing connection.
    ///
    /// # Errors
    /// When JetStream refuses a declaration (for example, JetStream is disabled).
    pub async fn open(client: async_nats::Client) -> Result<Store> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(streams::work_stream())
            .await
            .map_err(nats("declare work stream"))?;
        js.get_or_create_stream(streams::event_stream())
            .await
            .map_err(nats("declare event stream"))?;
        let music = kv_bucket(&js, streams::MUSIC_BUCKET).await?;
        let jobs = kv_bucket(&js, streams::JOB_BUCKET).await?;
        let system = kv_bucket(&js, streams::SYSTEM_BUCKET).await?;
        let files = match js.get_object_store(streams::FILE_BUCKET).await {
            Ok(f) => f,
            Err(_) => js
                .create_object_store(streams::file_bucket())
                .await
                .map_err(nats("declare file bucket"))?,
        };
        Ok(Store {
            client,
            js,
            music,
            jobs,
            system,
            files,
        })
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    // ---- music records -------------------------------------------------------------------

    /// The record of `id`, if it exists.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn music(&self, id: MusicId) -> Result<Option<MusicRecord>> {
        get_record(&self.music, &id.to_string()).await
    }

    /// Writes a new record; false (and nothing written) when `id` already exists.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn create_music(&self, record: &MusicRecord) -> Result<bool> {
        create_record(&self.music, &record.music_id.to_string(), record).await
    }

    /// Applies `change` to the record of `id` atomically (retrying on concurrent writes) and
    /// returns the new record, or `None` when there is no such record. `change` returns false
    /// when it changed nothing, and then nothing is written.
    ///
    /// # Errors
    /// On NATS failure, an undecodable record or endless contention.
    pub async fn update_music<F>(&self, id: MusicId, change: F) -> Result<Option<MusicRecord>>
    where
        F: FnMut(&mut MusicRecord) -> bool,
    {
        update_record(&self.music, &id.to_string(), change).await
    }

    /// Every music record, in no particular order.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn list_music(&self) -> Result<Vec<MusicRecord>> {
        list_records(&self.music).await
    }

    // ---- job records ---------------------------------------------------------------------

    /// The job record of `id`, if it exists.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        get_record(&self.jobs, &id.to_string()).await
    }

    /// Writes a job record unless one exists (a re-cut song keeps its jobs' history).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn create_job(&self, record: &JobRecord) -> Result<bool> {
        create_record(&self.jobs, &record.job_id.to_string(), record).await
    }

    /// Like [`Store::update_music`], for a job record.
    ///
    /// # Errors
    /// As [`Store::update_music`].
    pub async fn update_job<F>(&self, id: JobId, change: F) -> Result<Option<JobRecord>>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        update_record(&self.jobs, &id.to_string(), change).await
    }

    /// Deletes a job record; deleting a missing one is not an error.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_job(&self, id: JobId) -> Result<()> {
        self.jobs
            .delete(id.to_string())
            .await
            .map_err(nats("delete job"))?;
        Ok(())
    }

    /// Every job id.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn job_ids(&self) -> Result<Vec<JobId>> {
        let keys = self.jobs.keys().await.map_err(nats("list jobs"))?;
        let keys: Vec<String> = keys.try_collect().await.map_err(nats("list jobs"))?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Every job record.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        list_records(&self.jobs).await
    }

    // ---- the registered model ------------------------------------------------------------

    /// The model the separators run, once one has registered.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn model(&self) -> Result<Option<ModelInfo>> {
        get_record(&self.system, streams::MODEL_KEY).await
    }

    /// Registers the model this separator runs (the last one to start wins).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn register_model(&self, model: &ModelInfo) -> Result<()> {
        self.system
            .put(streams::MODEL_KEY, dme_protocol::encode(model).into())
            .await
            .map_err(nats("register model"))?;
        Ok(())
    }

    // ---- files ---------------------------------------------------------------------------

    /// Stores `bytes` as object `name`, replacing any object of that name.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn put_object(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut reader = bytes;
        self.put_object_from(name, &mut reader).await
    }

    /// Stores what `reader` yields as object `name`, streaming (bounded memory).
    ///
    /// # Errors
    /// On NATS failure or a read error.
    pub async fn put_object_from<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        reader: &mut R,
    ) -> Result<()> {
        self.files
            .put(name, reader)
            .await
            .map_err(nats("put object"))?;
        Ok(())
    }

    /// The whole object `name`, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure or a broken object.
    pub async fn get_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut object) = self.object_reader(name).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        object
            .read_to_end(&mut out)
            .await
            .map_err(|source| StoreError::Read {
                name: name.to_string(),
                source,
            })?;
        Ok(Some(out))
    }

    /// A streaming reader of object `name` and its size, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn object_reader(&self, name: &str) -> Result<Option<ObjectReader>> {
        use async_nats::jetstream::object_store::GetErrorKind;
        match self.files.get(name).await {
            Ok(o) => Ok(Some(ObjectReader::new(o))),
            Err(e) if e.kind() == GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats("get object")(e)),
        }
    }

    /// Size in bytes of object `name`, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn object_size(&self, name: &str) -> Result<Option<u64>> {
        use async_nats::jetstream::object_store::InfoErrorKind;
        match self.files.info(name).await {
            Ok(info) if !info.deleted => Ok(Some(info.size as u64)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats("object info")(e)),
        }
    }

    /// Deletes object `name`; deleting a missing object is not an error.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_object(&self, name: &str) -> Result<()> {
        use async_nats::jetstream::object_store::DeleteErrorKind;
        match self.files.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(nats("delete object")(e)),
        }
    }

    /// Names of every object whose name starts with `prefix`.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn object_names(&self, prefix: &str) -> Result<Vec<String>> {
        let list = self.files.list().await.map_err(nats("list objects"))?;
        let infos: Vec<_> = list.try_collect().await.map_err(nats("list objects"))?;
        Ok(infos
            .into_iter()
            .filter(|i| !i.deleted && i.name.starts_with(prefix))
            .map(|i| i.name)
            .collect())
    }

    // ---- work and events -----------------------------------------------------------------

    /// Publishes a work message and waits for JetStream to store it. With `msg_id`, a second
    /// publish of the same id within [`streams::DUPLICATE_WINDOW`] is dropped by the server.
    ///
    /// # Errors
    /// On NATS failure (the message may or may not be stored; publishing again is safe with a
    /// `msg_id`).
    pub async fn publish<T: Serialize>(
        &self,
        subject: &'static str,
        message: &T,
        msg_id: Option<&str>,
    ) -> Result<()> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(dme_protocol::encode(message)));
        if let Some(id) = msg_id {
            publish = publish.message_id(id);
        }
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(nats("publish"))?
            .await
            .map_err(nats("publish ack"))?;
        Ok(())
    }

    /// Publishes a progress event derived from `record`. Events are a convenience for live
    /// views (records are the truth), so a failure is logged, not returned.
    pub async fn announce(&self, record: &MusicRecord) {
        let event = ProgressEvent {
            music_id: record.music_id,
            state: record.state,
            progress: record.progress(),
            segments_done: record.segments_done(),
            segments: record.separated.len() as u32,
            error: record.error.clone(),
        };
        let subject = subjects::event(record.music_id);
        let payload = Bytes::from(dme_protocol::encode(&event));
        if let Err(e) = self.js.publish(subject, payload).await {
            tracing::warn!(error = %e, music_id = %record.music_id, "progress event not published");
        }
    }

    /// Marks a song failed with `reason` (unless it already is) and announces it. A song that
    /// no longer exists is left alone.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn fail_music(&self, music: MusicId, reason: &str) -> Result<()> {
        tracing::error!(%music, reason, "song failed");
        let mut changed = false;
        let record = self
            .update_music(music, |m| {
                changed = m.state != MusicState::Failed;
                if changed {
                    m.state = MusicState::Failed;
                    m.error = Some(reason.to_string());
                    m.updated_ms = dme_protocol::now_ms();
                }
                changed
            })
            .await?;
        if let (Some(record), true) = (record, changed) {
            self.announce(&record).await;
        }
        Ok(())
    }

    /// The durable work consumer `name` on `subject`, created if missing.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn work_consumer(
        &self,
        name: &str,
        subject: &str,
        redelivery: Redelivery,
    ) -> Result<PullConsumer> {
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        stream
            .get_or_create_consumer(name, streams::work_consumer(name, subject, redelivery))
            .await
            .map_err(nats("declare consumer"))
    }

    /// Deletes every record, file, event and pending work item. Workers drop work in hand for
    /// songs that no longer exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn reset(&self) -> Result<()> {
        for stream in [
            streams::WORK_STREAM.to_string(),
            streams::EVENT_STREAM.to_string(),
            format!("KV_{}", streams::MUSIC_BUCKET),
            format!("KV_{}", streams::JOB_BUCKET),
            format!("OBJ_{}", streams::FILE_BUCKET),
        ] {
            let s = self
                .js
                .get_stream(&stream)
                .await
                .map_err(nats("get stream"))?;
            s.purge().await.map_err(nats("purge stream"))?;
        }
        Ok(())
    }

    /// Deletes every object of one song.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_song_objects(&self, music: MusicId) -> Result<()> {
        let prefixes = dme_protocol::objects::prefixes(music);
        let list = self.files.list().await.map_err(nats("list objects"))?;
        let names: Vec<String> = list
            .filter_map(|i| async move { i.ok() })
            .filter(|i| {
                futures::future::ready(
                    !i.deleted && prefixes.iter().any(|p| i.name.starts_with(p.as_str())),
                )
            })
            .map(|i| i.name)
            .collect()
            .await;
        for name in names {
            self.delete_object(&name).await?;
        }
        Ok(())
    }
}

async fn kv_bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store> {
    match js.get_key_value(name).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_key_value(streams::kv_bucket(name))
            .await
            .map_err(nats("declare kv bucket")),
    }
}

async fn get_record<T: DeserializeOwned>(bucket: &kv::Store, key: &str) -> Result<Option<T>> {
    let value = bucket.get(key).await.map_err(nats("kv get"))?;
    match value {
        Some(bytes) => Ok(Some(dme_protocol::decode(&bytes)?)),
        None => Ok(None),
    }
}

async fn create_record<T: Serialize>(bucket: &kv::Store, key: &str, record: &T) -> Result<bool> {
    match bucket
        .create(key, dme_protocol::encode(record).into())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(nats("kv create")(e)),
    }
}

async fn update_record<T, F>(bucket: &kv::Store, key: &str, mut change: F) -> Result<Option<T>>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(&mut T) -> bool,
{
    for _ in 0..CAS_ATTEMPTS {
        let Some(entry) = bucket.entry(key).await.map_err(nats("kv entry"))? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let mut record: T = dme_protocol::decode(&entry.value)?;
        if !change(&mut record) {
            return Ok(Some(record));
        }
        match bucket
            .update(key, dme_protocol::encode(&record).into(), entry.revision)
            .await
        {
            Ok(_) => return Ok(Some(record)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(nats("kv update")(e)),
        }
    }
    Err(StoreError::Contention(key.to_string()))
}

async fn list_records<T: DeserializeOwned>(bucket: &kv::Store) -> Result<Vec<T>> {
    let keys = bucket.keys().await.map_err(nats("kv keys"))?;
    let keys: Vec<String> = keys.try_collect().await.map_err(nats("kv keys"))?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(r) = get_record(bucket, &key).await? {
            out.push(r);
        }
    }
    Ok(out)
}

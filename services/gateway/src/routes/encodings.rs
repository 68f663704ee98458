//! The cache of encoded downloads: a track or mix (stored as a zstd-compressed float WAV) is
//! encoded to another format on its first request, as a stream, into the object store beside its
//! source ([`dme_protocol::objects::encoded`]), and served from there ever after. The float WAV
//! itself is served by decompressing the source on the fly, so it is never stored whole.
//!
//! Memory stays bounded however long the track: the source is read through a
//! [`SyncIoBridge`] by [`dme_audio::encode_wav_stream`] in a blocking thread, and its output goes
//! through a channel of [`PIPE_CHUNKS`] chunks into [`Store::put_object_from`]. An object in the
//! store becomes visible only once it is whole, so a reader never sees a partial encoding; an
//! encoding that fails makes the put fail, so nothing is cached.
//!
//! Concurrent first requests for one file encode it once in this process: each waits on a lock
//! of its own object name and looks in the store again once it holds it. Two gateways racing on
//! the same first request may both encode; both write the same bytes, and the last put wins.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::web::{Bytes, BytesMut};
use dme_audio::{AudioError, Format};
use dme_storage::{ChunkedObjectReader, Store, StoreError, Unpacked};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Encodings running at once in this gateway: each keeps one core busy for as long as the track
/// is long (minutes for a 3-hour FLAC), so more would only slow them all and the rest of the
/// gateway on a small machine. Requests beyond it wait their turn.
pub const MAX_CONCURRENT_ENCODES: usize = 2;

/// Bytes per chunk handed from the encoder to the object store: the store's largest chunk
/// (512 KiB), so each becomes one stored chunk.
const PIPE_CHUNK_BYTES: usize = 512 * 1024;

/// Chunks in flight between the encoder and the object store: 2 MiB in all, enough to keep
/// both busy.
const PIPE_CHUNKS: usize = 4;

/// Why an encoding could not be made or cached.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The object store failed (reading the source, or writing or checking the encoding).
    #[error("object store")]
    Store(#[from] StoreError),
    /// The encoder failed on the source.
    #[error("encoding {object} to {format}")]
    Encode {
        /// The source object.
        object: String,
        /// The format asked for.
        format: Format,
        /// Why.
        #[source]
        source: AudioError,
    },
    /// The encoding thread panicked or was cancelled.
    #[error("encoding {object} to {format}: the task died")]
    Task {
        /// The source object.
        object: String,
        /// The format asked for.
        format: Format,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A file to download: its size, its content digest as NATS stores it (`SHA-256=<base64url>`, of
/// the stored bytes, which determine the file's bytes), and a reader of it from its first byte.
pub struct Download {
    /// Bytes the reader yields.
    pub size: u64,
    /// See [`ChunkedObjectReader::digest`].
    pub digest: Option<String>,
    /// The file, read from the store a chunk at a time.
    pub body: Box<dyn AsyncRead + Unpin>,
}

impl Download {
    /// A stored object served as it is.
    fn stored(reader: ChunkedObjectReader) -> Download {
        Download {
            size: reader.size(),
            digest: reader.digest().map(str::to_string),
            body: Box::new(reader),
        }
    }

    /// A compressed WAV served decompressed: its size is the RIFF header's (the first 8 bytes,
    /// read here and put back in front of the rest).
    async fn unpacked_wav(
        object: &str,
        mut reader: Unpacked<ChunkedObjectReader>,
    ) -> Result<Download, EncodeError> {
        let mut head = [0u8; 8];
        let read = reader.read_exact(&mut head).await;
        let riff = read.and_then(|_| {
            let (tag, size) = head.split_at(4);
            let size = u32::from_le_bytes(size.try_into().expect("4 bytes"));
            if tag == b"RIFF" {
                Ok(u64::from(size) + 8)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the stored track is not a compressed WAV",
                ))
            }
        });
        let size = riff.map_err(|source| StoreError::Read {
            name: object.to_string(),
            source,
        })?;
        Ok(Download {
            size,
            digest: reader.get_ref().digest().map(str::to_string),
            body: Box::new(io::Cursor::new(head).chain(reader)),
        })
    }
}

/// The encodings this gateway is making: one lock per cached object's name, and a bound on
/// how many run at once.
pub struct Encodings {
    running: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    slots: Arc<Semaphore>,
}

impl Default for Encodings {
    fn default() -> Self {
        Encodings {
            running: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_ENCODES)),
        }
    }
}

impl Encodings {
    /// `source` (a compressed float WAV object) in `format`: the source decompressed for
    /// [`Format::Wav32f`], else its cached encoding, made and stored first if there is none.
    /// `None` when `source` does not exist.
    ///
    /// The encoding runs in a task of its own that holds the object's lock and an encoding slot
    /// until it ends: a client that leaves (its request future dropped) neither frees a slot
    /// while its encoder still runs nor leaves its lock behind, and the encoding it started is
    /// finished and cached for the next request.
    ///
    /// # Errors
    /// On object store failure, or when the source cannot be encoded.
    pub async fn reader(
        &self,
        store: &Store,
        source: &str,
        format: Format,
    ) -> Result<Option<Download>, EncodeError> {
        if format == Format::Wav32f {
            return match store.unpacked_chunked_reader(source).await? {
                Some(reader) => Ok(Some(Download::unpacked_wav(source, reader).await?)),
                None => Ok(None),
            };
        }
        let cached = dme_protocol::objects::encoded(source, format.as_str());
        if let Some(reader) = store.chunked_object_reader(&cached).await? {
            return Ok(Some(Download::stored(reader)));
        }
        let lock = lock_of(&self.running, &cached);
        let (running, slots) = (self.running.clone(), self.slots.clone());
        let (store_, source_, cached_) = (store.clone(), source.to_string(), cached.clone());
        let made = tokio::spawn(async move {
            let made: Result<bool, EncodeError> = async {
                let _turn = lock.lock().await;
                // Whoever held the lock before may have made it.
                if store_.object_size(&cached_).await?.is_some() {
                    return Ok(true);
                }
                if store_.object_size(&source_).await?.is_none() {
                    return Ok(false);
                }
                // Never closed: the semaphore lives as long as the gateway.
                let _slot = slots.acquire_owned().await;
                encode_into_store(&store_, &source_, &cached_, format).await?;
                Ok(true)
            }
            .await;
            release(&running, &cached_, lock);
            made
        })
        .await
        .map_err(|source_error| EncodeError::Task {
            object: source.to_string(),
            format,
            source: source_error,
        })??;
        if !made {
            return Ok(None);
        }
        let reader = store.chunked_object_reader(&cached).await?;
        Ok(reader.map(Download::stored))
    }
}

/// The lock of `name`, made if nobody holds one.
fn lock_of(
    running: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    name: &str,
) -> Arc<tokio::sync::Mutex<()>> {
    let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
    running.entry(name.to_string()).or_default().clone()
}

/// Gives back `lock`, forgetting it when nobody else holds it (every clone is made under the
/// map's mutex, so the count cannot grow meanwhile).
fn release(
    running: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    name: &str,
    lock: Arc<tokio::sync::Mutex<()>>,
) {
    let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
    if Arc::strong_count(&lock) == 2 {
        running.remove(name);
    }
}

/// Encodes object `source` to `format` and stores the result as object `target`, streaming:
/// the encoder runs in a blocking thread, reading the source (decompressed as it comes) through a
/// [`SyncIoBridge`] (twice
/// for FLAC and MP3) and writing into a bounded channel that the put reads.
///
/// # Errors
/// When the source cannot be read or encoded, or the store refuses the put. Nothing is stored
/// then (a failed put leaves the chunks it wrote unreferenced in the bucket).
async fn encode_into_store(
    store: &Store,
    source: &str,
    target: &str,
    format: Format,
) -> Result<(), EncodeError> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PIPE_CHUNKS);
    let runtime = tokio::runtime::Handle::current();
    let (reading, object) = (store.clone(), source.to_string());
    let encoder = tokio::task::spawn_blocking(move || {
        let open = || {
            let reader = runtime
                .block_on(reading.unpacked_chunked_reader(&object))
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the source is gone"))?;
            Ok(SyncIoBridge::new_with_handle(reader, runtime.clone()))
        };
        let mut sink = ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(PIPE_CHUNK_BYTES),
        };
        let encoded = dme_audio::encode_wav_stream(open, format, &mut sink);
        if let Err(e) = &encoded {
            // The put must fail rather than store a truncated file.
            let _ = sink
                .tx
                .blocking_send(Err(io::Error::other(format!("the encoder failed: {e}"))));
        }
        encoded
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut pipe = StreamReader::new(Box::pin(chunks));
    let stored = store.put_object_from(target, &mut pipe).await;
    // A failed put drops the channel, so the encoder stops at its next write.
    drop(pipe);
    match encoder.await {
        Ok(Ok(bytes)) => {
            stored?;
            tracing::info!(object = target, bytes, "encoded and cached");
            Ok(())
        }
        // The put stopped reading: its error is the cause.
        Ok(Err(AudioError::Io(e))) if e.kind() == io::ErrorKind::BrokenPipe && stored.is_err() => {
            Err(stored.expect_err("checked").into())
        }
        Ok(Err(cause)) => Err(EncodeError::Encode {
            object: source.to_string(),
            format,
            source: cause,
        }),
        Err(cause) => Err(EncodeError::Task {
            object: source.to_string(),
            format,
            source: cause,
        }),
    }
}

/// The encoder's [`Write`] end of the channel to the object store: bytes are gathered into
/// chunks of [`PIPE_CHUNK_BYTES`] and sent, blocking while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(PIPE_CHUNK_BYTES);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the object store stopped taking the encoding",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(PIPE_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == PIPE_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

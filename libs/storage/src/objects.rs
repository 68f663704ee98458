//! Files in the object store ([`dme_protocol::streams::FILE_BUCKET`]; names in
//! [`dme_protocol::objects`]), written and read as streams so memory stays bounded.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::object_store::{DeleteErrorKind, InfoErrorKind, ObjectStore};
use dme_protocol::MusicId;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::compressed::ZstdStream;
use crate::{nats, Result, Store, StoreError};

/// A reader of a compressed object that yields its bytes as they were before compression (see
/// [`Store::put_compressed_from`]).
pub type Unpacked<R> = ZstdStream<R, zstd::stream::raw::Decoder<'static>>;

/// Longest wait for the next chunk of an object being read. An object deleted while it is read
/// (a reset) never delivers its remaining chunks: without this, its reader would wait forever.
/// A chunk is at most 512 KiB, so 30 s without one is never a slow network.
pub const OBJECT_READ_IDLE: Duration = Duration::from_secs(30);

/// A streaming reader of one object that fails with `TimedOut` after [`OBJECT_READ_IDLE`]
/// without data, instead of hanging. Its chunks are pushed by the server through an ordered
/// consumer made when the reader is opened, so a refused or timed-out consumer is an error of
/// [`Store::object_reader`] (async-nats' own `Object` reader makes that consumer on the first
/// read and panics when it fails, as it did on a loaded CI machine).
pub struct ObjectReader {
    inner: tokio_util::io::StreamReader<ChunkStream, bytes::Bytes>,
    size: u64,
    digest: Option<String>,
    idle: Pin<Box<tokio::time::Sleep>>,
}

/// An object's chunks in order, ending after the last one.
type ChunkStream =
    Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static>>;

impl ObjectReader {
    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's content digest as NATS stores it (`SHA-256=<base64url>`), computed when it
    /// was written: the same bytes always have the same digest. `None` for an object written by
    /// a client that records none.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let next = tokio::time::Instant::now() + OBJECT_READ_IDLE;
                this.idle.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
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

/// A reader of one object that fetches each stored chunk (at most 512 KiB) only when the one
/// before is used up (a JetStream direct get per chunk), so it holds at most one chunk however
/// slowly it is read. [`ObjectReader`] is pushed its chunks by the server, which may run up to the
/// connection's pending limit (64 MiB) ahead of a slow reader: right for a worker that reads
/// at once, wrong for an HTTP download paced by its client.
///
/// A chunk that cannot be fetched (NATS gone, the object deleted meanwhile) fails the read at
/// once with the cause.
pub struct ChunkedObjectReader {
    stream: async_nats::jetstream::stream::Stream<()>,
    subject: String,
    size: u64,
    digest: Option<String>,
    chunks: usize,
    chunks_read: usize,
    bytes_read: u64,
    next_sequence: u64,
    chunk: bytes::Bytes,
    fetching: Option<ChunkFetch>,
}

type ChunkFetch = Pin<
    Box<
        dyn Future<
                Output = std::result::Result<
                    async_nats::jetstream::message::StreamMessage,
                    async_nats::jetstream::stream::DirectGetError,
                >,
            > + Send,
    >,
>;

impl ChunkedObjectReader {
    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's content digest as NATS stores it (`SHA-256=<base64url>`), as
    /// [`ObjectReader::digest`].
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl AsyncRead for ChunkedObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.chunk.is_empty() {
                let n = buf.remaining().min(this.chunk.len());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.chunks_read == this.chunks {
                if this.bytes_read != this.size {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the object's chunks hold {} bytes, its size is {}",
                            this.bytes_read, this.size
                        ),
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            let fetch = this.fetching.get_or_insert_with(|| {
                let (stream, subject) = (this.stream.clone(), this.subject.clone());
                let from = this.next_sequence;
                Box::pin(async move {
                    stream
                        .direct_get_next_for_subject(subject, Some(from))
                        .await
                })
            });
            let message = match fetch.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(message) => message,
            };
            this.fetching = None;
            let message = message.map_err(|e| {
                std::io::Error::other(format!("fetching chunk {}: {e}", this.chunks_read))
            })?;
            this.next_sequence = message.sequence + 1;
            this.chunks_read += 1;
            this.bytes_read += message.payload.len() as u64;
            this.chunk = message.payload;
        }
    }
}

/// The info of object `name` of `bucket`, `None` when it does not exist or was deleted.
///
/// # Errors
/// On NATS failure, or when the object is a link to another (this project writes none, and
/// neither reader follows one).
async fn live_info(
    bucket: &ObjectStore,
    name: &str,
) -> Result<Option<async_nats::jetstream::object_store::ObjectInfo>> {
    let info = match bucket.info(name).await {
        Ok(info) if !info.deleted => info,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == InfoErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(nats("object info")(e)),
    };
    if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
        return Err(StoreError::Read {
            name: name.to_string(),
            source: std::io::Error::other("the object is a link, which dme does not follow"),
        });
    }
    Ok(Some(info))
}

/// A reader of object `name` of `bucket`, or `None` if it does not exist (see [`ObjectReader`]).
///
/// # Errors
/// On NATS failure, or when the object is a link to another (this project writes none).
pub(crate) async fn open_object(
    js: &async_nats::jetstream::Context,
    bucket: &ObjectStore,
    name: &str,
) -> Result<Option<ObjectReader>> {
    let Some(info) = live_info(bucket, name).await? else {
        return Ok(None);
    };
    let size = info.size as u64;
    let chunks: ChunkStream = if info.chunks == 0 {
        if size != 0 {
            return Err(StoreError::Read {
                name: name.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the object has no chunks, its size is {size}"),
                ),
            });
        }
        Box::pin(futures::stream::empty())
    } else {
        let stream = js
            .get_stream_no_info(format!("OBJ_{}", info.bucket))
            .await
            .map_err(nats("object stream"))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: js.client().new_inbox(),
                filter_subject: format!("$O.{}.C.{}", info.bucket, info.nuid),
                ..Default::default()
            })
            .await
            .map_err(nats("object consumer"))?;
        let messages = consumer.messages().await.map_err(nats("object messages"))?;
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = read.clone();
        let chunks = messages.take(info.chunks).map(move |message| {
            let payload = message
                .map_err(|e| std::io::Error::other(format!("object chunk: {e}")))?
                .message
                .payload;
            let total =
                counted.fetch_add(payload.len() as u64, Ordering::Relaxed) + payload.len() as u64;
            if total > size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the object's chunks hold more than its size, {size} bytes"),
                ));
            }
            Ok(payload)
        });
        // The last chunk read, the bytes must be the object's size.
        let end = futures::stream::once(async move {
            let total = read.load(Ordering::Relaxed);
            if total == size {
                Ok(bytes::Bytes::new())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the object's chunks hold {total} bytes, its size is {size}"),
                ))
            }
        });
        Box::pin(chunks.chain(end))
    };
    Ok(Some(ObjectReader {
        inner: tokio_util::io::StreamReader::new(chunks),
        size,
        digest: info.digest,
        idle: Box::pin(tokio::time::sleep(OBJECT_READ_IDLE)),
    }))
}

fn unpacked<R>(name: &str, reader: R) -> Result<Unpacked<R>> {
    ZstdStream::decompress(reader).map_err(|source| StoreError::Read {
        name: name.to_string(),
        source,
    })
}

/// A reader whose every read is [`PUT_CHUNK_BYTES`] (the last shorter) whatever its inner
/// reader's reads: async-nats stores each read as a chunk and, after a short one, offers the
/// next read only what is left of its buffer, so a file or a compressed stream (short reads,
/// each ended by a pending read) would be stored in chunks of half the size on average.
struct WholeChunks<'a, R> {
    inner: &'a mut R,
    buf: Box<[u8]>,
    /// Bytes gathered in `buf`, and how many of them were handed over.
    len: usize,
    given: usize,
    ended: bool,
}

impl<'a, R> WholeChunks<'a, R> {
    fn new(inner: &'a mut R) -> Self {
        WholeChunks {
            inner,
            buf: vec![0; PUT_CHUNK_BYTES].into_boxed_slice(),
            len: 0,
            given: 0,
            ended: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for WholeChunks<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        // Gather a whole chunk (or the rest of the stream) before handing any of it over.
        while this.len < this.buf.len() && !this.ended && this.given == 0 {
            let mut free = tokio::io::ReadBuf::new(&mut this.buf[this.len..]);
            std::task::ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut free))?;
            let n = free.filled().len();
            this.ended = n == 0;
            this.len += n;
        }
        let n = out.remaining().min(this.len - this.given);
        out.put_slice(&this.buf[this.given..this.given + n]);
        this.given += n;
        if this.given == this.len {
            (this.len, this.given) = (0, 0);
        }
        Poll::Ready(Ok(()))
    }
}

/// Chunk size of stored objects (the last chunk of each is shorter): a quarter of the
/// messages, acknowledged one after another, of async-nats' default 128 KiB, and well under a
/// server's smallest usual `max_payload` (1 MiB, its default).
const PUT_CHUNK_BYTES: usize = 512 * 1024;

impl Store {
    /// Stores `bytes` as object `name`, replacing any object of that name.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn put_object(&self, name: &str, mut bytes: &[u8]) -> Result<()> {
        // A slice fills every read: no need to gather.
        self.put_chunks(name, &mut bytes).await
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
        self.put_chunks(name, &mut WholeChunks::new(reader)).await
    }

    /// Stores `reader`'s bytes as object `name`, each of its reads as a chunk of at most
    /// [`PUT_CHUNK_BYTES`] (async-nats' put).
    async fn put_chunks<R: AsyncRead + Unpin>(&self, name: &str, reader: &mut R) -> Result<()> {
        let meta = async_nats::jetstream::object_store::ObjectMetadata {
            name: name.to_string(),
            chunk_size: Some(PUT_CHUNK_BYTES),
            ..Default::default()
        };
        self.files
            .put(meta, reader)
            .await
            .map_err(nats("put object"))?;
        Ok(())
    }

    /// Stores the local file at `path` as object `name`, streaming.
    ///
    /// # Errors
    /// When the file cannot be opened, on a read error or on NATS failure.
    pub async fn put_object_file(&self, name: &str, path: &Path) -> Result<()> {
        let mut file =
            tokio::fs::File::open(path)
                .await
                .map_err(|source| StoreError::OpenFile {
                    path: path.to_path_buf(),
                    source,
                })?;
        self.put_object_from(name, &mut file).await
    }

    /// Stores what `reader` yields as object `name`, zstd-compressed on the way
    /// ([`crate::compressed`]; read it back with [`Store::unpacked_object_reader`] or
    /// [`Store::unpacked_chunked_reader`]), streaming.
    ///
    /// # Errors
    /// On NATS failure or a read error.
    pub async fn put_compressed_from<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        reader: R,
    ) -> Result<()> {
        let mut packed = ZstdStream::compress(reader).map_err(|source| StoreError::Read {
            name: name.to_string(),
            source,
        })?;
        self.put_object_from(name, &mut packed).await
    }

    /// Stores the local file at `path` as object `name`, zstd-compressed, streaming.
    ///
    /// # Errors
    /// When the file cannot be opened, on a read error or on NATS failure.
    pub async fn put_compressed_file(&self, name: &str, path: &Path) -> Result<()> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| StoreError::OpenFile {
                path: path.to_path_buf(),
                source,
            })?;
        self.put_compressed_from(name, file).await
    }

    /// A reader of the compressed object `name` that decompresses as it goes, or `None` if the
    /// object does not exist. For workers that read a whole long object at once (the mixer's
    /// tracks): its chunks are pushed (see [`ObjectReader`]), not fetched one round trip each.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn unpacked_object_reader(
        &self,
        name: &str,
    ) -> Result<Option<Unpacked<ObjectReader>>> {
        let Some(reader) = self.object_reader(name).await? else {
            return Ok(None);
        };
        Ok(Some(unpacked(name, reader)?))
    }

    /// A reader of the compressed object `name` that fetches a chunk at a time and decompresses
    /// as it goes, or `None` if the object does not exist. For downloads paced by their clients
    /// (see [`ChunkedObjectReader`]).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn unpacked_chunked_reader(
        &self,
        name: &str,
    ) -> Result<Option<Unpacked<ChunkedObjectReader>>> {
        let Some(reader) = self.chunked_object_reader(name).await? else {
            return Ok(None);
        };
        Ok(Some(unpacked(name, reader)?))
    }

    /// The whole object `name`, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure or a broken object.
    pub async fn get_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        // Direct gets, chunk after chunk: a worker reading a segment's input costs the server
        // no consumer to make and later drop.
        let Some(mut object) = self.chunked_object_reader(name).await? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(usize::try_from(object.size()).unwrap_or(0));
        object
            .read_to_end(&mut out)
            .await
            .map_err(|source| StoreError::Read {
                name: name.to_string(),
                source,
            })?;
        Ok(Some(out))
    }

    /// A streaming reader of object `name`, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn object_reader(&self, name: &str) -> Result<Option<ObjectReader>> {
        open_object(&self.js, &self.files, name).await
    }

    /// A [`ChunkedObjectReader`] of object `name`, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn chunked_object_reader(&self, name: &str) -> Result<Option<ChunkedObjectReader>> {
        let Some(info) = live_info(&self.files, name).await? else {
            return Ok(None);
        };
        let stream = self
            .js
            .get_stream_no_info(format!("OBJ_{}", info.bucket))
            .await
            .map_err(nats("object stream"))?;
        Ok(Some(ChunkedObjectReader {
            stream,
            subject: format!("$O.{}.C.{}", info.bucket, info.nuid),
            size: info.size as u64,
            digest: info.digest,
            chunks: info.chunks,
            chunks_read: 0,
            bytes_read: 0,
            next_sequence: 1,
            chunk: bytes::Bytes::new(),
            fetching: None,
        }))
    }

    /// Size in bytes of object `name`, or `None` if it does not exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn object_size(&self, name: &str) -> Result<Option<u64>> {
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

    /// Deletes every object of one song, of all its incarnations (see
    /// [`dme_protocol::objects::of_song`]). Objects that cannot be listed are skipped.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_song_objects(&self, music: MusicId) -> Result<()> {
        let list = self.files.list().await.map_err(nats("list objects"))?;
        let names: Vec<String> = list
            .filter_map(|i| async move { i.ok() })
            .filter(|i| {
                futures::future::ready(!i.deleted && dme_protocol::objects::of_song(music, &i.name))
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

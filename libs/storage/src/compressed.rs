//! Lossless compression of the audio kept in the object store: zstd, applied and undone as a
//! stream ([`ZstdStream`]), so an hour-long track is compressed on its way into the store and
//! decompressed on its way out without ever being whole in memory.
//!
//! Why zstd at level 1: intermediate audio is little-endian f32. Silence (and digital zeros at
//! the edges of songs) compresses to almost nothing at any level, which is what bounds the cost
//! of a hostile hour of silence; on music, f32 samples compress a little (the exponent bytes
//! repeat), and higher levels buy a few per cent more for several times the CPU of the workers
//! that write every segment. Decompression is fast at any level.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// The zstd level of every compressed object (see the module docs).
pub const LEVEL: i32 = 1;

/// Bytes compressed from the inner reader at a time: a stored chunk's size (see
/// `objects::PUT_CHUNK_BYTES`), so that a put of the stream rarely waits for its input.
const COMPRESS_INPUT_BYTES: usize = 512 * 1024;

/// Bytes read from the inner reader at a time when decompressing: many downloads hold one
/// each, and zstd's blocks are 128 KiB.
const DECOMPRESS_INPUT_BYTES: usize = 128 * 1024;

/// An [`AsyncRead`] that compresses ([`ZstdStream::compress`]) or decompresses
/// ([`ZstdStream::decompress`]) what its inner reader yields, holding one input buffer and
/// zstd's state (a few MiB at most) whatever the length.
///
/// Decompressing, a stream that ends before its zstd frame does fails with `UnexpectedEof`, and
/// bytes that are not zstd fail with `InvalidData`.
pub struct ZstdStream<R, O> {
    inner: R,
    op: O,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    inner_done: bool,
    /// The decoder's last hint was 0: a frame ended and all of it was written out.
    frame_done: bool,
    finished: bool,
    /// An error met after bytes were written in the same read: returned by the next read.
    error: Option<io::Error>,
}

impl<R> ZstdStream<R, Encoder<'static>> {
    /// Compresses `inner` at [`LEVEL`].
    ///
    /// # Errors
    /// When zstd cannot allocate its context.
    pub fn compress(inner: R) -> io::Result<Self> {
        Ok(Self::new(inner, Encoder::new(LEVEL)?, COMPRESS_INPUT_BYTES))
    }
}

impl<R> ZstdStream<R, Decoder<'static>> {
    /// Decompresses `inner`.
    ///
    /// # Errors
    /// When zstd cannot allocate its context.
    pub fn decompress(inner: R) -> io::Result<Self> {
        Ok(Self::new(inner, Decoder::new()?, DECOMPRESS_INPUT_BYTES))
    }
}

impl<R, O> ZstdStream<R, O> {
    /// The reader underneath.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    fn new(inner: R, op: O, input: usize) -> Self {
        ZstdStream {
            inner,
            op,
            input: vec![0; input].into_boxed_slice(),
            start: 0,
            end: 0,
            inner_done: false,
            frame_done: false,
            finished: false,
            error: None,
        }
    }
}

/// What zstd does once the input has ended: an encoder closes its frame, a decoder writes out
/// what it still holds.
pub trait Finish: Operation {
    /// Writes what is left into `out`; returns whether nothing is left afterwards.
    ///
    /// # Errors
    /// A decoder whose frame is not complete (`UnexpectedEof`).
    fn finish_into(&mut self, out: &mut OutBuffer<'_, [u8]>, frame_done: bool) -> io::Result<bool>;

    /// Whether this undoes compression (its `run` hints say where frames end).
    const DECODES: bool;
}

impl Finish for Encoder<'static> {
    fn finish_into(&mut self, out: &mut OutBuffer<'_, [u8]>, _: bool) -> io::Result<bool> {
        Ok(self.finish(out, true)? == 0)
    }
    const DECODES: bool = false;
}

impl Finish for Decoder<'static> {
    fn finish_into(&mut self, out: &mut OutBuffer<'_, [u8]>, frame_done: bool) -> io::Result<bool> {
        let before = out.pos();
        let hint = self.run(&mut InBuffer::around(&[]), out)?;
        if out.pos() > before {
            return Ok(false);
        }
        if hint != 0 && !frame_done {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the compressed object ends before its zstd frame",
            ));
        }
        Ok(true)
    }
    const DECODES: bool = true;
}

impl<R: AsyncRead + Unpin, O: Finish + Unpin> ZstdStream<R, O> {
    /// Reads more input when the last is used up, and runs zstd once over what is at hand
    /// into `buf`; returns the bytes it wrote there.
    fn step(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        if self.start == self.end && !self.inner_done {
            let mut input = ReadBuf::new(&mut self.input);
            match Pin::new(&mut self.inner).poll_read(cx, &mut input) {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|()| 0),
            }
            let n = input.filled().len();
            (self.start, self.end) = (0, n);
            self.inner_done = n == 0;
        }
        let out = buf.initialize_unfilled();
        let mut out = OutBuffer::around(out);
        if self.start < self.end {
            let mut input = InBuffer::around(&self.input[self.start..self.end]);
            let hint = self.op.run(&mut input, &mut out).map_err(invalid)?;
            self.start += input.pos();
            if O::DECODES {
                self.frame_done = hint == 0;
            }
        } else {
            self.finished = self.op.finish_into(&mut out, self.frame_done)?;
        }
        let n = out.pos();
        buf.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl<R: AsyncRead + Unpin, O: Finish + Unpin> AsyncRead for ZstdStream<R, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        // Fills `buf` as far as the input at hand allows, not one zstd block (128 KiB) a read.
        let mut produced = false;
        loop {
            if this.finished || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.step(cx, buf) {
                Poll::Ready(Ok(n)) => produced |= n > 0,
                // What is already in `buf` goes now; the input is asked again next time.
                Poll::Pending if produced => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                // A read that fails returns no bytes (tokio's contract): the bytes go first,
                // the error with the next read.
                Poll::Ready(Err(e)) if produced => {
                    this.error = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// zstd's errors on input it cannot read are data errors, not failed I/O.
fn invalid(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::Other {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn round_trip(data: &[u8]) -> (usize, Vec<u8>) {
        let mut packed = Vec::new();
        ZstdStream::compress(data)
            .unwrap()
            .read_to_end(&mut packed)
            .await
            .unwrap();
        let mut back = Vec::new();
        ZstdStream::decompress(packed.as_slice())
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        (packed.len(), back)
    }

    #[tokio::test]
    async fn streams_round_trip_and_silence_costs_nothing() {
        let silence = vec![0u8; 8 << 20];
        let (packed, back) = round_trip(&silence).await;
        assert!(back == silence);
        assert!(packed < 4096, "8 MiB of zeros took {packed} bytes");
        let noise = noise(3_000_000);
        assert!(round_trip(&noise).await.1 == noise);
        assert!(round_trip(&[]).await.1.is_empty());
    }

    #[tokio::test]
    async fn truncated_or_foreign_input_is_an_error() {
        let mut packed = Vec::new();
        let data: Vec<u8> = (0u32..100_000).flat_map(|i| i.to_le_bytes()).collect();
        ZstdStream::compress(data.as_slice())
            .unwrap()
            .read_to_end(&mut packed)
            .await
            .unwrap();
        let cut = &packed[..packed.len() / 2];
        let err = ZstdStream::decompress(cut)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        let err = ZstdStream::decompress(&b"RIFF not zstd"[..])
            .unwrap()
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// Random-looking bytes zstd cannot shrink much: music-like f32 samples.
    fn noise(samples: u32) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) as f32).to_le_bytes())
            .collect()
    }

    /// Yields its data `step` bytes a read, answering `Pending` (and waking at once) before
    /// each: a socket or a file read by tokio.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            buf.put_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// A read fills the caller's buffer with what the input at hand gives, not stopping at
    /// zstd's first 128 KiB block, and hands over what it has when its input is not ready
    /// rather than wait.
    #[tokio::test]
    async fn a_read_gives_what_the_input_at_hand_makes_and_never_waits_holding_bytes() {
        let data = noise(1 << 20);
        let chunk = 512 * 1024;
        let mut reads = Vec::new();
        let mut packed = ZstdStream::compress(data.as_slice()).unwrap();
        loop {
            let mut buf = Vec::with_capacity(chunk);
            if packed.read_buf(&mut buf).await.unwrap() == 0 {
                break;
            }
            reads.push(buf);
        }
        let first = reads.first().map_or(0, Vec::len);
        assert!(first > 256 * 1024, "the first read gave {first} bytes");
        let (mut whole, mut back) = (reads.concat(), Vec::new());
        ZstdStream::decompress(whole.as_slice())
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert!(back == data);

        // Input that trickles in: every read still returns, and the bytes round trip.
        let trickle = Trickle {
            data: data.clone(),
            at: 0,
            step: 100_000,
            ready: false,
        };
        whole.clear();
        ZstdStream::compress(trickle)
            .unwrap()
            .read_to_end(&mut whole)
            .await
            .unwrap();
        back.clear();
        let trickle = Trickle {
            data: whole,
            at: 0,
            step: 7_000,
            ready: false,
        };
        ZstdStream::decompress(trickle)
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert!(back == data);
    }
}

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
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// The zstd level of every compressed object (see the module docs).
pub const LEVEL: i32 = 1;

/// Bytes read from the inner reader at a time: an object-store chunk.
const INPUT_BYTES: usize = 128 * 1024;

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
}

impl<R> ZstdStream<R, Encoder<'static>> {
    /// Compresses `inner` at [`LEVEL`].
    ///
    /// # Errors
    /// When zstd cannot allocate its context.
    pub fn compress(inner: R) -> io::Result<Self> {
        Ok(Self::new(inner, Encoder::new(LEVEL)?))
    }
}

impl<R> ZstdStream<R, Decoder<'static>> {
    /// Decompresses `inner`.
    ///
    /// # Errors
    /// When zstd cannot allocate its context.
    pub fn decompress(inner: R) -> io::Result<Self> {
        Ok(Self::new(inner, Decoder::new()?))
    }
}

impl<R, O> ZstdStream<R, O> {
    /// The reader underneath.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    fn new(inner: R, op: O) -> Self {
        ZstdStream {
            inner,
            op,
            input: vec![0; INPUT_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            inner_done: false,
            frame_done: false,
            finished: false,
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

impl<R: AsyncRead + Unpin, O: Finish + Unpin> AsyncRead for ZstdStream<R, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.finished {
                return Poll::Ready(Ok(()));
            }
            if this.start == this.end && !this.inner_done {
                let mut input = ReadBuf::new(&mut this.input);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut input))?;
                let n = input.filled().len();
                (this.start, this.end) = (0, n);
                this.inner_done = n == 0;
            }
            let out = buf.initialize_unfilled();
            let mut out = OutBuffer::around(out);
            if this.start < this.end {
                let mut input = InBuffer::around(&this.input[this.start..this.end]);
                let hint = this.op.run(&mut input, &mut out).map_err(invalid)?;
                this.start += input.pos();
                if O::DECODES {
                    this.frame_done = hint == 0;
                }
            } else {
                this.finished = this.op.finish_into(&mut out, this.frame_done)?;
            }
            let n = out.pos();
            if n > 0 {
                buf.advance(n);
                return Poll::Ready(Ok(()));
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
        let noise: Vec<u8> = (0u32..3_000_000)
            .flat_map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) as f32).to_le_bytes())
            .collect();
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
}

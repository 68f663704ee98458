//! A song decoded to 44.1 kHz stereo on disk: one file of little-endian f32 per channel, so
//! memory stays bounded whatever the song's length.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use dme_audio::{StereoDecoder, MODEL_SAMPLE_RATE};
use dme_protocol::Segment;

use crate::SplitError;

/// A decoded song on disk.
pub(crate) struct DecodedSong {
    left: File,
    right: File,
    frames: u64,
}

impl DecodedSong {
    /// Decodes the file at `path` (`hint`: its extension) into two files in `dir`.
    ///
    /// # Errors
    /// [`SplitError::Decode`] or [`SplitError::NoSamples`] for a file that is not usable audio,
    /// [`SplitError::Spool`] when `dir` cannot be written.
    pub(crate) fn decode(path: &Path, hint: Option<&str>, dir: &Path) -> Result<Self, SplitError> {
        let mut decoder =
            StereoDecoder::open(path, hint, MODEL_SAMPLE_RATE).map_err(SplitError::Decode)?;
        let paths = [dir.join("left.f32"), dir.join("right.f32")];
        let create = |p: &Path| {
            File::create(p)
                .map(BufWriter::new)
                .map_err(SplitError::Spool)
        };
        let mut writers = [create(&paths[0])?, create(&paths[1])?];
        let mut frames = 0u64;
        while let Some(block) = decoder.next_block().map_err(SplitError::Decode)? {
            for (w, ch) in writers.iter_mut().zip([&block.left, &block.right]) {
                for v in ch.iter() {
                    w.write_all(&v.to_le_bytes()).map_err(SplitError::Spool)?;
                }
            }
            frames += block.left.len() as u64;
        }
        if frames == 0 {
            return Err(SplitError::NoSamples);
        }
        for w in writers {
            w.into_inner()
                .map_err(|e| SplitError::Spool(e.into_error()))?;
        }
        let open = |p: &Path| File::open(p).map_err(SplitError::Spool);
        Ok(DecodedSong {
            left: open(&paths[0])?,
            right: open(&paths[1])?,
            frames,
        })
    }

    /// Frames (samples per channel) in the song.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// The model input window of `seg`, as planar f32 bytes, zero outside the song.
    pub(crate) fn window(&self, seg: &Segment) -> std::io::Result<Vec<u8>> {
        let n = seg.window_len as usize;
        let mut out = vec![0u8; 2 * n * 4];
        let start = seg.window_start.max(0) as u64;
        let end = ((seg.window_start + n as i64).max(0) as u64).min(self.frames);
        if end > start {
            let skip = (start as i64 - seg.window_start) as usize;
            let count = (end - start) as usize;
            for (c, file) in [&self.left, &self.right].into_iter().enumerate() {
                let at = (c * n + skip) * 4;
                file.read_exact_at(&mut out[at..at + count * 4], start * 4)?;
            }
        }
        Ok(out)
    }
}

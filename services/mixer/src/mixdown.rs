//! Mixing: sums the tracks a user selected into one float WAV, streaming through spooled files
//! so memory stays bounded whatever the song's length. The tracks are read from the mixer's
//! [`TrackCache`] (downloaded into it when they are not there), so a re-mix downloads nothing.

use std::fs::File;
use std::io::{BufReader, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dme_protocol::messages::{MixRequest, ProgressEvent};
use dme_protocol::records::{MixRecord, MusicRecord, MusicState};
use dme_protocol::{now_ms, objects};
use dme_storage::work::{Delivery, Handler};
use dme_storage::Store;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use crate::track_cache::TrackCache;
use crate::turns::Turns;
use crate::{wav_header, MixError};

/// The handler of [`dme_protocol::subjects::WORK_MIX`]; the assembler also uses it for the
/// selections made before the tracks were ready.
#[derive(Clone)]
pub(crate) struct Mixdown {
    pub(crate) store: Store,
    /// The tracks of recent songs, kept for their re-mixes.
    pub(crate) tracks: Arc<TrackCache>,
}

impl Handler for Mixdown {
    type Message = MixRequest;
    type Error = MixError;
    /// Transient failures are NATS hiccups: soon is fine.
    const RETRY_DELAY: Duration = Duration::from_secs(1);

    async fn handle(&self, request: &MixRequest, _: Delivery) -> Result<(), MixError> {
        match self.store.music(request.music_id).await? {
            // A request from before a reset is for a song that is gone.
            Some(record) if record.incarnation != request.incarnation => Ok(()),
            Some(record) if record.tracks_ready => self.make_pending(&record).await,
            // Not assembled yet: the assembler mixes pending selections when it is done.
            _ => Ok(()),
        }
    }
}

impl Mixdown {
    /// Mixes every selection of the song that has no mix yet, marking each ready.
    ///
    /// One song's selections are mixed one request at a time, each reading the record afresh
    /// when its turn comes: two requests at once (clients posting the same selection, a request
    /// beside the assembler) would otherwise both find a selection unmixed and render it twice.
    pub(crate) async fn make_pending(&self, record: &MusicRecord) -> Result<(), MixError> {
        let _turn = MIXING.wait(record.music_id).await;
        let current = self.store.music(record.music_id).await?;
        let Some(record) = current.filter(|r| r.incarnation == record.incarnation) else {
            return Ok(()); // deleted, or reset and uploaded again, meanwhile
        };
        let record = &record;
        for mix in record.mixes.iter().filter(|m| !m.ready) {
            let object = self.render(record, mix).await?;
            let updated = self.mark_ready(record, &mix.key).await?;
            let Some(r) = updated.filter(|r| r.incarnation == record.incarnation) else {
                // Deleted, or reset and uploaded again, meanwhile: the mix is nobody's. Its
                // name carries this life's incarnation, so only it goes.
                let _ = self.store.delete_object(&object).await;
                return Ok(());
            };
            tracing::info!(music = %record.music_id, key = %mix.key, "mix ready");
            self.store.publish_progress(&ProgressEvent::of(&r)).await;
        }
        Ok(())
    }

    /// Sums the selection's tracks into its mix object; returns the object's name.
    ///
    /// The tracks come from the [`TrackCache`] when they are there; those that are not are
    /// downloaded at once (side by side) into it. A re-mix of a song therefore reads local
    /// files only, and its time is the sum and the upload of the mix.
    async fn render(&self, record: &MusicRecord, mix: &MixRecord) -> Result<String, MixError> {
        let started = Instant::now();
        let stems: Vec<(String, f32)> = mix
            .tracks
            .iter()
            .enumerate()
            .filter_map(|(n, t)| {
                let stem = record.tracks.get(record.stem_index(*t)?)?;
                let name = objects::track(record.music_id, record.incarnation, &stem.name);
                Some((name, mix.gain(n).linear()))
            })
            .collect();
        let files =
            futures::future::try_join_all(stems.iter().map(|(name, _)| self.track(name))).await?;
        let inputs: Vec<(File, f32)> = files.into_iter().zip(stems.iter().map(|s| s.1)).collect();
        let fetched = started.elapsed();
        let object = objects::mix(record.music_id, record.incarnation, &mix.key);
        let scale = self.sum_into_store(inputs, &object).await?;
        if scale != 1.0 {
            tracing::info!(music = %record.music_id, key = %mix.key, scale, "mix scaled down so it does not clip");
        }
        tracing::info!(
            music = %record.music_id,
            key = %mix.key,
            tracks_ms = fetched.as_millis() as u64,
            sum_and_store_ms = (started.elapsed() - fetched).as_millis() as u64,
            "mix rendered"
        );
        Ok(object)
    }

    /// Sums `inputs` ([`sum_wavs`]) into object `name`, compressed: the sum is compressed as
    /// it is made, on a blocking thread, and stored as it comes, so summing, compressing and
    /// storing overlap and the mix never touches the disk. Returns the scale of the sum.
    async fn sum_into_store(&self, inputs: Vec<(File, f32)>, name: &str) -> Result<f32, MixError> {
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE_CHUNKS);
        let summing = tokio::task::spawn_blocking(move || {
            let mut sink = ChannelWriter {
                tx,
                buf: BytesMut::with_capacity(PIPE_CHUNK_BYTES),
            };
            let summed = (|| {
                let mut packed =
                    zstd::stream::write::Encoder::new(&mut sink, dme_storage::compressed::LEVEL)?;
                let scale = sum_wavs(inputs, &mut packed)?;
                packed.finish()?;
                sink.flush()?;
                Ok::<f32, hound::Error>(scale)
            })();
            if let Err(e) = &summed {
                // The put must fail rather than store a truncated mix.
                let _ = sink
                    .tx
                    .blocking_send(Err(std::io::Error::other(format!("summing failed: {e}"))));
            }
            summed
        });
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let mut pipe = StreamReader::new(Box::pin(chunks));
        let stored = self.store.put_object_from(name, &mut pipe).await;
        // A failed put drops the channel, so the sum stops at its next write.
        drop(pipe);
        let summed = summing.await.map_err(MixError::Task)?;
        match (summed, stored) {
            (Ok(scale), Ok(())) => Ok(scale),
            // The put stopped reading: its error is the cause.
            (Err(_), Err(e)) => Err(e.into()),
            (Err(e), Ok(())) => Err(MixError::Wav(e)),
            (Ok(_), Err(e)) => Err(e.into()),
        }
    }

    /// Track object `name` (decompressed) as an open local file: the cached copy, or else
    /// the object downloaded into the cache first.
    async fn track(&self, name: &str) -> Result<File, MixError> {
        if let Some(file) = self.tracks.open(name) {
            return Ok(file);
        }
        let part = tempfile_in(self.tracks.dir()).map_err(MixError::Spool)?;
        self.download(name, &part).await?;
        // Opened before it is handed over: the cache may evict it at once (a track larger
        // than the whole cache), and an open file stays readable.
        let file = File::open(&part).map_err(MixError::Spool)?;
        let (cache, name, path) = (self.tracks.clone(), name.to_string(), part);
        tokio::task::spawn_blocking(move || cache.insert(&name, &path))
            .await
            .map_err(MixError::Task)?
            .map_err(MixError::Spool)?;
        Ok(file)
    }

    /// Copies object `name` (a track) to the local file `path`, decompressed; the file is
    /// removed when the copy fails.
    async fn download(&self, name: &str, path: &Path) -> Result<(), MixError> {
        let copied = async {
            let mut reader = self
                .store
                .unpacked_object_reader(name)
                .await?
                .ok_or_else(|| MixError::TrackMissing(name.to_string()))?;
            let file = tokio::fs::File::create(path)
                .await
                .map_err(MixError::Spool)?;
            let mut file = tokio::io::BufWriter::with_capacity(IO_BLOCK_BYTES, file);
            tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(|source| MixError::ReadTrack {
                    name: name.to_string(),
                    source,
                })?;
            file.flush().await.map_err(MixError::Spool)
        }
        .await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        copied
    }

    /// Marks the mix `key` ready; the song is done once its tracks and every mix are.
    async fn mark_ready(
        &self,
        record: &MusicRecord,
        key: &str,
    ) -> Result<Option<MusicRecord>, MixError> {
        let updated = self
            .store
            .update_music(record.music_id, |m| {
                if m.incarnation != record.incarnation {
                    return false;
                }
                let Some(x) = m.mixes.iter_mut().find(|x| x.key == key) else {
                    return false;
                };
                if x.ready {
                    return false;
                }
                x.ready = true;
                if m.state != MusicState::Failed
                    && m.tracks_ready
                    && m.mixes.iter().all(|x| x.ready)
                {
                    m.state = MusicState::Done;
                }
                m.updated_ms = now_ms();
                true
            })
            .await?;
        Ok(updated)
    }
}

/// Songs whose selections this process is mixing: one [`Mixdown::make_pending`] per song at
/// a time.
static MIXING: Turns = Turns::new();

/// Peak a mix is scaled down to when its sum would clip: −0.09 dBFS, a little headroom below
/// full scale so that converting it to 16-bit WAV or FLAC never clips either.
pub(crate) const MIX_PEAK_CEILING: f32 = 0.99;

/// Bytes read or written at a time by [`sum_wavs`]: large enough that the sum runs at memory
/// speed (vectorised over 64 Ki samples), small enough to stay in cache beside its inputs.
const IO_BLOCK_BYTES: usize = 256 * 1024;

/// Bytes per chunk handed from the sum to the object store: the store's largest chunk, so
/// each becomes one stored chunk.
const PIPE_CHUNK_BYTES: usize = 512 * 1024;

/// Chunks in flight between the sum and the object store: 4 MiB, enough that the sum never
/// waits for an ack and the store never waits for the sum.
const PIPE_CHUNKS: usize = 8;

/// The sum's [`Write`] end of the channel to the object store: bytes are gathered into chunks
/// of [`PIPE_CHUNK_BYTES`] and sent, blocking while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(PIPE_CHUNK_BYTES);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the object store stopped taking the mix",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(PIPE_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == PIPE_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A new, empty file in `dir` with a name nobody else uses (the spool's temporary files).
fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("part-{}-{n}", std::process::id()));
    File::create(&path)?;
    Ok(path)
}

/// Writes the sample-by-sample sum of float WAV files `inputs` (equal lengths), each multiplied
/// by its linear gain, as a float WAV to `out`; returns the factor the whole sum was scaled by.
///
/// The mix never clips: a first pass over the inputs finds the sum's peak (the largest absolute
/// sample); when it exceeds full scale (1.0), every sample of the mix is multiplied by one
/// factor that brings the peak to [`MIX_PEAK_CEILING`] (peak normalisation: the balance
/// between the stems and the dynamics stay as chosen, only the level drops). A sum within full
/// scale is written as it is, factor 1. Both passes read the inputs [`IO_BLOCK_BYTES`] at a
/// time, so memory stays bounded whatever the song's length. Each sample is
/// `((0 + a·ga) + b·gb) + …` in f32, in the order of `inputs`, times the factor, a shorter
/// input counting as silence past its end: the same arithmetic, so the same bits, as summing
/// one sample at a time; the file is what [`hound::WavWriter`] writes.
fn sum_wavs(inputs: Vec<(File, f32)>, out: &mut impl Write) -> Result<f32, hound::Error> {
    let mut tracks = Vec::with_capacity(inputs.len());
    for (file, gain) in inputs {
        let reader = hound::WavReader::new(BufReader::new(file))?;
        let spec = reader.spec();
        if spec.sample_format != hound::SampleFormat::Float || spec.bits_per_sample != 32 {
            return Err(hound::Error::FormatError("a track is not 32-bit float"));
        }
        let samples = u64::from(reader.len());
        let mut rest = reader.into_inner();
        let data = rest.stream_position()?;
        tracks.push(Track {
            file: rest.into_inner(),
            gain,
            data,
            samples,
        });
    }
    let samples = tracks.iter().map(|t| t.samples).max().unwrap_or(0);
    let mut sum = vec![0.0f32; IO_BLOCK_BYTES / 4];
    let mut bytes = vec![0u8; IO_BLOCK_BYTES];
    let mut peak = 0.0f32;
    for_each_block(&tracks, samples, &mut sum, &mut bytes, |block| {
        for s in block {
            peak = peak.max(s.abs());
        }
        Ok(())
    })?;
    let scale = if peak > 1.0 {
        MIX_PEAK_CEILING / peak
    } else {
        1.0
    };
    out.write_all(&wav_header(samples)?)?;
    let mut encoded = vec![0u8; IO_BLOCK_BYTES];
    for_each_block(&tracks, samples, &mut sum, &mut bytes, |block| {
        for (s, b) in block.iter().zip(encoded.chunks_exact_mut(4)) {
            b.copy_from_slice(&(s * scale).to_le_bytes());
        }
        out.write_all(&encoded[..4 * block.len()])
    })?;
    Ok(scale)
}

/// One input of [`sum_wavs`]: its file, gain, where its samples start and how many it has.
struct Track {
    file: File,
    gain: f32,
    data: u64,
    samples: u64,
}

/// Calls `each` with the weighted sum of `tracks`, a block of up to `sum.len()` samples at a
/// time, in order, for `samples` samples; `bytes` (4 bytes a sample) is the read buffer.
fn for_each_block(
    tracks: &[Track],
    samples: u64,
    sum: &mut [f32],
    bytes: &mut [u8],
    mut each: impl FnMut(&[f32]) -> std::io::Result<()>,
) -> Result<(), hound::Error> {
    let mut done = 0u64;
    while done < samples {
        let n = sum.len().min((samples - done) as usize);
        let block = &mut sum[..n];
        block.fill(0.0);
        for t in tracks {
            let k = n.min(t.samples.saturating_sub(done) as usize);
            if k == 0 {
                continue;
            }
            let raw = &mut bytes[..4 * k];
            t.file.read_exact_at(raw, t.data + 4 * done)?;
            for (s, b) in block.iter_mut().zip(raw.chunks_exact(4)) {
                *s += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * t.gain;
            }
        }
        each(block)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float_wav_spec;

    /// A folder of its own for one test, removed when dropped (the mixer has no tempfile).
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(test: &str) -> TestDir {
            let dir =
                std::env::temp_dir().join(format!("dme-mixdown-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn wav(dir: &Path, name: &str, samples: &[f32]) -> PathBuf {
        let path = dir.join(name);
        let mut w = hound::WavWriter::create(&path, float_wav_spec()).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        path
    }

    fn open(path: &Path) -> File {
        File::open(path).unwrap()
    }

    fn sum_to(inputs: Vec<(File, f32)>, out: &Path) -> f32 {
        let mut file = std::io::BufWriter::new(File::create(out).unwrap());
        let scale = sum_wavs(inputs, &mut file).unwrap();
        file.flush().unwrap();
        scale
    }

    /// The sum as the mixer first made it, a sample at a time through hound: the reference
    /// every mix must match bit for bit.
    fn sum_one_by_one(inputs: &[(PathBuf, f32)], out: &Path) -> f32 {
        let sums = || {
            let mut readers: Vec<_> = inputs
                .iter()
                .map(|(p, g)| (hound::WavReader::open(p).unwrap(), *g))
                .collect();
            let mut samples: Vec<_> = readers
                .iter_mut()
                .map(|(r, g)| (r.samples::<f32>(), *g))
                .collect();
            let mut all = Vec::new();
            loop {
                let (mut sum, mut ended) = (0.0f32, 0);
                for (s, g) in samples.iter_mut() {
                    match s.next() {
                        Some(v) => sum += v.unwrap() * *g,
                        None => ended += 1,
                    }
                }
                if ended == samples.len() {
                    return all;
                }
                all.push(sum);
            }
        };
        let peak = sums().iter().fold(0.0f32, |p, s| p.max(s.abs()));
        let scale = if peak > 1.0 {
            MIX_PEAK_CEILING / peak
        } else {
            1.0
        };
        let mut w = hound::WavWriter::create(out, float_wav_spec()).unwrap();
        for s in sums() {
            w.write_sample(s * scale).unwrap();
        }
        w.finalize().unwrap();
        scale
    }

    #[test]
    fn mixes_are_bit_for_bit_the_sample_by_sample_sum() {
        let dir = TestDir::new("bits");
        // Longer than a block, lengths that differ, signed zeros, sums that clip or not.
        let n = 3 * IO_BLOCK_BYTES / 4 + 18;
        let noise = |seed: u32, len: usize| -> Vec<f32> {
            (0..len as u32)
                .map(|i| {
                    let x = (i ^ seed).wrapping_mul(2_654_435_761) >> 8;
                    (x as f32 / (1u32 << 24) as f32) * 1.6 - 0.8
                })
                .collect()
        };
        let a = wav(dir.path(), "a.wav", &noise(1, n));
        let b = wav(dir.path(), "b.wav", &noise(2, n - 1000));
        let mut zeros = vec![-0.0f32; n + 6];
        zeros[5] = 0.0;
        let c = wav(dir.path(), "c.wav", &zeros);
        for gains in [[1.0f32, 1.0, 1.0], [0.3, 0.25, 2.0], [3.0, 1.5, 0.0]] {
            let inputs = vec![
                (a.clone(), gains[0]),
                (b.clone(), gains[1]),
                (c.clone(), gains[2]),
            ];
            let (want, got) = (dir.path().join("want.wav"), dir.path().join("got.wav"));
            let want_scale = sum_one_by_one(&inputs, &want);
            let files = inputs.iter().map(|(p, g)| (open(p), *g)).collect();
            let got_scale = sum_to(files, &got);
            assert_eq!(want_scale.to_bits(), got_scale.to_bits(), "{gains:?}");
            assert!(
                std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
                "the mix of {gains:?} differs from the sample-by-sample sum"
            );
        }
    }

    fn read(path: &Path) -> Vec<f32> {
        hound::WavReader::open(path)
            .unwrap()
            .samples::<f32>()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_sum_within_full_scale_is_written_as_it_is() {
        let dir = TestDir::new("within");
        let a = wav(dir.path(), "a.wav", &[0.5, -0.25, 0.1, 0.3]);
        let b = wav(dir.path(), "b.wav", &[0.5, -0.75, 0.2, -0.3]);
        let out = dir.path().join("mix.wav");
        let scale = sum_to(vec![(open(&a), 1.0), (open(&b), 1.0)], &out);
        assert_eq!(scale, 1.0);
        // Exactly 1.0 is full scale, not a clip.
        assert_eq!(read(&out), [1.0, -1.0, 0.1 + 0.2, 0.0]);
        let half = sum_to(vec![(open(&a), 0.5), (open(&b), 1.0)], &out);
        assert_eq!(half, 1.0);
        assert_eq!(read(&out), [0.75, -0.875, 0.05 + 0.2, 0.15 - 0.3]);
    }

    #[test]
    fn a_sum_that_would_clip_is_scaled_to_the_ceiling_as_a_whole() {
        let dir = TestDir::new("clip");
        let a = wav(dir.path(), "a.wav", &[0.5, -0.9, 0.1, 0.3]);
        let b = wav(dir.path(), "b.wav", &[0.5, -0.6, 0.2, -0.3]);
        let out = dir.path().join("mix.wav");
        let gain = 2.0f32;
        let scale = sum_to(vec![(open(&a), gain), (open(&b), gain)], &out);
        let sum = [2.0f32, -3.0, 0.6, 0.0];
        assert!((scale - MIX_PEAK_CEILING / 3.0).abs() < 1e-7, "{scale}");
        let mix = read(&out);
        let peak = mix.iter().fold(0.0f32, |p, s| p.max(s.abs()));
        assert!((peak - MIX_PEAK_CEILING).abs() < 1e-6, "{peak}");
        for (m, s) in mix.iter().zip(sum) {
            assert!((m - s * scale).abs() < 1e-6, "{m} vs {s}");
        }
    }
}

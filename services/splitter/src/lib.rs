//! The splitter: turns an uploaded song into segments for the separators.
//!
//! Consumes: [`subjects::WORK_UPLOADED`] through the durable consumer
//! [`streams::SPLITTER_CONSUMER`], the original from the object store, and the registered model
//! (its segment length and stems).
//! Produces: each segment's model input window in the object store (see
//! [`dme_protocol::objects::segment_input`]), one job record per segment, the song's
//! [`SegmentPlan`] on its record, and the first `segment_window` work items on
//! [`subjects::WORK_SEGMENT`] (separators release the rest as they finish).
//! Guarantees: decoding streams to temporary files, so memory stays bounded whatever the song's
//! length; the geometry is exactly demucs' `apply_model` ([`dme_segment`]); a redelivered upload
//! is cut again idempotently (objects overwritten, jobs created once, work items deduplicated by
//! message id); a file that cannot be decoded fails its song with the decoder's reason.

mod config;
mod error;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use config::{SplitterConfig, DEFAULT_SEGMENT_WINDOW};
use dme_audio::{StereoDecoder, MODEL_SAMPLE_RATE};
use dme_protocol::messages::{MusicUploaded, SegmentWork};
use dme_protocol::records::{JobRecord, JobState, MusicRecord, MusicState, TrackRecord};
use dme_protocol::{now_ms, objects, streams, subjects, JobId, MusicId, SegmentPlan};
use dme_storage::work::{consume, Delivery, Verdict};
use dme_storage::Store;
pub use error::SplitterError;
use tokio_util::sync::CancellationToken;

/// Delay before an upload is looked at again when no separator has registered a model yet.
const NO_MODEL_RETRY: Duration = Duration::from_secs(3);

/// How often a song being cut shows it is alive (well under the gateway's stall threshold).
const HEARTBEAT: Duration = Duration::from_secs(20);

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Splitter {
    store: Store,
    config: SplitterConfig,
    max_deliver: u32,
}

/// Splits uploaded songs until `shutdown`.
///
/// # Errors
/// When NATS cannot be reached at start-up.
pub async fn run(config: SplitterConfig, shutdown: CancellationToken) -> Result<(), SplitterError> {
    // Shutdown also applies while NATS is still unreachable at start-up.
    let store = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        store = Store::connect(
        &config.nats_url,
        "dme-splitter",
        Duration::from_secs(config.connect_timeout_s),
    ) => store?,
    };
    let redelivery = streams::Redelivery::PIPELINE;
    let consumer = store
        .work_consumer(
            streams::SPLITTER_CONSUMER,
            subjects::WORK_UPLOADED,
            redelivery,
        )
        .await?;
    let splitter = Arc::new(Splitter {
        store,
        config,
        max_deliver: redelivery.max_deliver as u32,
    });
    tracing::info!("splitter ready");
    consume(consumer, redelivery.ack_wait, 1, shutdown, move |d| {
        let s = splitter.clone();
        async move { s.handle(d).await }
    })
    .await;
    tracing::info!("splitter stopped");
    Ok(())
}

enum Failure {
    Transient(String),
    Permanent(String),
}

impl From<dme_storage::StoreError> for Failure {
    fn from(e: dme_storage::StoreError) -> Self {
        Failure::Transient(e.to_string())
    }
}

impl Splitter {
    async fn handle(&self, d: Delivery) -> Verdict {
        let msg: MusicUploaded = match dme_protocol::decode(&d.message.payload) {
            Ok(m) => m,
            Err(e) => return Verdict::Term(e.to_string()),
        };
        match self.split(msg.music_id).await {
            Ok(()) => Verdict::Ack,
            Err(Failure::Transient(reason)) if d.attempt < self.max_deliver => {
                tracing::warn!(music = %msg.music_id, attempt = d.attempt, reason, "split will be retried");
                Verdict::Retry(NO_MODEL_RETRY)
            }
            Err(Failure::Transient(reason)) | Err(Failure::Permanent(reason)) => {
                if let Err(e) = self.store.fail_music(msg.music_id, &reason).await {
                    tracing::warn!(error = %e, "could not record the failure");
                }
                Verdict::Term(reason)
            }
        }
    }

    async fn split(&self, music: MusicId) -> Result<(), Failure> {
        let store = &self.store;
        let Some(record) = store.music(music).await? else {
            tracing::info!(%music, "song deleted before it was split");
            return Ok(());
        };
        if record.state == MusicState::Failed {
            return Ok(());
        }
        if let Some(plan) = record.plan {
            // Cut before (this is a redelivery): only make sure the first window is queued.
            return self.release_first_window(&record, plan).await;
        }
        let model = store
            .model()
            .await?
            .ok_or_else(|| Failure::Transient("no separator has registered a model yet".into()))?;
        // Cutting a long song takes minutes: show that it is alive, so it is never reported
        // stalled while it works.
        let heartbeat = {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    let _ = store
                        .update_music(music, |m| {
                            m.updated_ms = now_ms();
                            true
                        })
                        .await;
                }
            })
        };
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        let spool = match &self.config.spool_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .map_err(|e| Failure::Transient(format!("spool folder: {e}")))?;
        let original = spool.path().join("original");
        {
            let mut reader = store
                .object_reader(&objects::original(music))
                .await?
                .ok_or_else(|| {
                    Failure::Permanent("the uploaded file is missing from storage".into())
                })?;
            let mut file = tokio::fs::File::create(&original)
                .await
                .map_err(|e| Failure::Transient(format!("spool: {e}")))?;
            tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(|e| Failure::Transient(format!("reading the original: {e}")))?;
        }
        let hint = Path::new(&record.file_name)
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase());
        let dir = spool.path().to_path_buf();
        let decoded =
            tokio::task::spawn_blocking(move || decode_to_files(&original, hint.as_deref(), &dir))
                .await
                .map_err(|e| Failure::Transient(format!("decoder task: {e}")))??;
        let plan = SegmentPlan::new(decoded.frames, model.segment, model.fixed);
        tracing::info!(%music, frames = decoded.frames, segments = plan.count(), "decoded; cutting");
        let decoded = Arc::new(decoded);
        let tracks = TrackRecord::for_sources(music, &model.sources);
        let track_ids: Vec<_> = tracks.iter().map(|t| t.track_id).collect();
        for seg in plan.segments() {
            let d = decoded.clone();
            let window = tokio::task::spawn_blocking(move || d.window(&seg))
                .await
                .map_err(|e| Failure::Transient(format!("window task: {e}")))?
                .map_err(|e| Failure::Transient(format!("reading decoded audio: {e}")))?;
            store
                .put_object(&objects::segment_input(music, seg.index), &window)
                .await?;
            let job = JobRecord {
                job_id: JobId::of(music, seg.index),
                music_id: music,
                index: seg.index,
                offset: seg.offset,
                len: seg.len,
                size: window.len() as u64,
                state: JobState::Queued,
                worker: None,
                attempts: 0,
                time_ms: 0,
                tracks: track_ids.clone(),
                error: None,
                created_ms: now_ms(),
                updated_ms: now_ms(),
            };
            store.create_job(&job).await?;
        }
        let updated = store
            .update_music(music, |m| {
                if m.plan.is_some() || m.state == MusicState::Failed {
                    return false;
                }
                m.plan = Some(plan);
                m.separated = vec![false; plan.count() as usize];
                m.state = MusicState::Separating;
                m.model = model.fingerprint.clone();
                m.tracks = tracks.clone();
                m.updated_ms = now_ms();
                true
            })
            .await?;
        match updated {
            Some(record) => {
                store.announce(&record).await;
                let plan = record.plan.unwrap_or(plan);
                self.release_first_window(&record, plan).await
            }
            None => {
                // Deleted (a reset) while it was being cut: remove what this cut wrote.
                for seg in plan.segments() {
                    let _ = store
                        .delete_object(&objects::segment_input(music, seg.index))
                        .await;
                    let _ = store.delete_job(JobId::of(music, seg.index)).await;
                }
                Ok(())
            }
        }
    }

    async fn release_first_window(
        &self,
        record: &MusicRecord,
        plan: SegmentPlan,
    ) -> Result<(), Failure> {
        let window = self.config.segment_window.max(1);
        for index in 0..window.min(plan.count()) {
            let work = SegmentWork {
                music_id: record.music_id,
                job_id: JobId::of(record.music_id, index),
                index,
                plan,
                window,
                model: record.model.clone(),
            };
            self.store
                .publish(subjects::WORK_SEGMENT, &work, Some(&work.msg_id()))
                .await?;
        }
        Ok(())
    }
}

/// A decoded song on disk: one file of little-endian f32 per channel.
struct DecodedSong {
    left: File,
    right: File,
    frames: u64,
}

impl DecodedSong {
    /// The model input window of `seg`, as planar f32 bytes, zero outside the song.
    fn window(&self, seg: &dme_protocol::Segment) -> std::io::Result<Vec<u8>> {
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

fn decode_to_files(path: &Path, hint: Option<&str>, dir: &Path) -> Result<DecodedSong, Failure> {
    let mut decoder = StereoDecoder::open(path, hint, MODEL_SAMPLE_RATE)
        .map_err(|e| Failure::Permanent(format!("cannot decode the file: {e}")))?;
    let paths: [PathBuf; 2] = [dir.join("left.f32"), dir.join("right.f32")];
    let io = |e: std::io::Error| Failure::Transient(format!("spool: {e}"));
    let mut writers = [
        BufWriter::new(File::create(&paths[0]).map_err(io)?),
        BufWriter::new(File::create(&paths[1]).map_err(io)?),
    ];
    let mut frames = 0u64;
    while let Some(block) = decoder
        .next_block()
        .map_err(|e| Failure::Permanent(format!("cannot decode the file: {e}")))?
    {
        for (w, ch) in writers.iter_mut().zip([&block.left, &block.right]) {
            for v in ch.iter() {
                w.write_all(&v.to_le_bytes()).map_err(io)?;
            }
        }
        frames += block.left.len() as u64;
    }
    if frames == 0 {
        return Err(Failure::Permanent("the file holds no audio samples".into()));
    }
    let [l, r] = writers;
    l.into_inner().map_err(|e| io(e.into_error()))?;
    r.into_inner().map_err(|e| io(e.into_error()))?;
    Ok(DecodedSong {
        left: File::open(&paths[0]).map_err(io)?,
        right: File::open(&paths[1]).map_err(io)?,
        frames,
    })
}

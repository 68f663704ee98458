//! The splitter: turns an uploaded song into segments for the separators.
//!
//! Consumes: [`subjects::WORK_UPLOADED`] through the durable consumer
//! [`streams::SPLITTER_CONSUMER`], the original from the object store, and the registered model
//! (its segment length and stems).
//! Produces: each segment's model input window in the object store (see
//! [`dme_protocol::objects::segment_input`]), one job record per segment, the song's
//! [`SegmentPlan`] on its record, and the first window of work items on
//! [`subjects::WORK_SEGMENT`] (at least `segment_window`, else the song's share of its model's
//! live separators; separators release the rest as they finish).
//! Guarantees: decoding streams to temporary files, so memory stays bounded whatever the song's
//! length; the geometry is exactly demucs' `apply_model` ([`dme_segment`]); a redelivered upload
//! is cut again idempotently (objects overwritten, jobs created once, work items deduplicated by
//! message id); a file that cannot be decoded fails its song with the decoder's reason.
//!
//! # Layout
//! - `config`: [`SplitterConfig`]. `error`: [`SplitterError`] (start-up), [`SplitError`] (a song).
//! - this file: the [`Splitter`] service and the handler that cuts one song.
//! - `decoded`: a song decoded to spooled files, read back one window at a time.
//!
//! # Observability
//! The splitter is an instance of the NATS micro service [`subjects::SERVICE_SPLITTER`]
//! (messages handled, failures, in hand); with `DME_METRICS_ADDR` it serves `/metrics`,
//! `/healthz` and `/readyz` (NATS connected).

mod config;
mod decoded;
mod error;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use config::{SplitterConfig, DEFAULT_SEGMENT_WINDOW};
use decoded::DecodedSong;
use dme_protocol::messages::{segment_window, MusicUploaded, ProgressEvent, SegmentWork};
use dme_protocol::records::{JobRecord, JobState, ModelInfo, MusicRecord, MusicState, TrackRecord};
use dme_protocol::{
    now_ms, objects, streams, subjects, Incarnation, JobId, MusicId, Segment, SegmentPlan,
};
use dme_storage::presence::{self, Presence, Tallied, Tally};
use dme_storage::work::{self, Delivery, Handler};
use dme_storage::{Spool, Store};
use dme_telemetry::metrics::{MetricsServer, Readiness};
use dme_telemetry::Service;
pub use error::{SplitError, SplitterError};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Shortest model segment a plan can be made for (the stride, three quarters of it, must not be
/// 0); the registered model is read from NATS, so it is checked rather than trusted.
const MIN_MODEL_SEGMENT: u32 = 4;

/// Segments a cut packs and stores at once (see `Cutter::store_segments`): each holds one
/// window's packed bytes, a few MB for the models here.
const SEGMENTS_IN_FLIGHT: usize = 4;

/// The splitter service: one upload at a time (decoding is the heavy part and runs off the
/// executor; run more splitters for more at once).
pub struct Splitter {
    consumer: async_nats::jetstream::consumer::PullConsumer,
    cutter: Arc<Tallied<Cutter>>,
    presence: Presence,
    /// Serves `/metrics`, `/healthz`, `/readyz` while the splitter lives (when configured).
    _metrics: Option<MetricsServer>,
}

impl Service for Splitter {
    type Config = SplitterConfig;
    type Error = SplitterError;
    const NAME: &'static str = "splitter";

    async fn build(config: SplitterConfig) -> Result<Splitter, SplitterError> {
        let readiness = Readiness::pending(&["nats"]);
        let addr = config.metrics_addr.as_deref();
        let metrics = MetricsServer::start_if_set(addr, Self::NAME, readiness.clone())
            .await
            .map_err(|source| SplitterError::Metrics {
                addr: addr.unwrap_or_default().to_string(),
                source,
            })?;
        let store = Store::connect_with(&config.nats, "dme-splitter").await?;
        readiness.set("nats", presence::connected(store.client()));
        let consumer = store
            .work_consumer(
                streams::SPLITTER_CONSUMER,
                subjects::WORK_UPLOADED,
                streams::Redelivery::PIPELINE,
            )
            .await?;
        let spool = config
            .spool
            .open(Self::NAME)
            .await
            .map_err(SplitterError::Spool)?;
        let tally = Arc::new(Tally::default());
        let presence = Presence::start(
            store.client(),
            subjects::SERVICE_SPLITTER,
            "decodes uploaded songs and cuts them into segments",
            presence::metadata(metrics.as_ref().map(MetricsServer::addr), &[]),
            presence::tally_status(tally.clone()),
        )
        .await?;
        let cutter = Arc::new(Cutter {
            store,
            config,
            spool,
        });
        Ok(Splitter {
            consumer,
            cutter: Arc::new(Tallied::new(cutter, tally)),
            presence,
            _metrics: metrics,
        })
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), SplitterError> {
        tracing::info!("splitter ready");
        let redelivery = streams::Redelivery::PIPELINE;
        work::consume(self.consumer, redelivery, 1, shutdown, self.cutter).await;
        self.presence.stop().await;
        tracing::info!("splitter stopped");
        Ok(())
    }
}

/// Cuts uploaded songs into segments: the handler of [`subjects::WORK_UPLOADED`].
struct Cutter {
    store: Store,
    config: SplitterConfig,
    /// This process's spool folder: each cut decodes into a folder of its own in it.
    spool: Spool,
}

impl Handler for Cutter {
    type Message = MusicUploaded;
    type Error = SplitError;
    /// The usual transient failure is that no separator has registered a model yet.
    const RETRY_DELAY: Duration = Duration::from_secs(3);

    async fn handle(&self, uploaded: &MusicUploaded, _: Delivery) -> Result<(), SplitError> {
        self.split(uploaded).await
    }

    async fn give_up(&self, uploaded: &MusicUploaded, delivery: Delivery, reason: &str) {
        let reason = format!(
            "cutting the song failed after {} attempt(s): {reason}",
            delivery.attempt
        );
        let (music, incarnation) = (uploaded.music_id, uploaded.incarnation);
        if let Err(e) = dme_storage::song::fail(&self.store, music, incarnation, &reason).await {
            tracing::warn!(error = %e, "could not record the failure");
        }
    }
}

impl Cutter {
    /// Decodes the uploaded song, stores its segments and jobs, records its plan and queues its
    /// first segments.
    async fn split(&self, uploaded: &MusicUploaded) -> Result<(), SplitError> {
        let music = uploaded.music_id;
        let Some(record) = self.store.music(music).await? else {
            tracing::info!(%music, "song deleted before it was split");
            return Ok(());
        };
        if record.incarnation != uploaded.incarnation {
            tracing::info!(%music, "upload from before a reset; dropped");
            return Ok(());
        }
        if record.state == MusicState::Failed {
            return Ok(());
        }
        if let Some(plan) = record.plan {
            // Cut before (this is a redelivery): only make sure the first window is queued.
            return self.release_first_window(&record, plan).await;
        }
        // The model the song was uploaded for (its pool separates it), not whichever runs.
        let model = self
            .store
            .model(&record.model)
            .await?
            .ok_or(SplitError::NoModel)?;
        if model.segment < MIN_MODEL_SEGMENT {
            return Err(SplitError::ModelSegment(model.segment));
        }
        let _heartbeat = self.heartbeat(music, record.incarnation);
        let spool = self.spool.tempdir().map_err(SplitError::Spool)?;
        let decoded = self.decode(&record, spool.path()).await?;
        let plan = SegmentPlan::new(decoded.frames(), model.segment, model.fixed);
        tracing::info!(%music, frames = decoded.frames(), segments = plan.count(), "decoded; cutting");
        let tracks = TrackRecord::for_sources(music, &model.sources);
        let cut = Cut {
            music,
            incarnation: record.incarnation,
            plan,
        };
        self.store_segments(&cut, decoded, &tracks).await?;
        self.store_plan(&cut, &model, tracks).await
    }

    /// Touches the song's record every `DME_CUT_HEARTBEAT_S` until the returned handle is dropped:
    /// cutting a long song takes minutes, and it must never be reported stalled meanwhile.
    fn heartbeat(&self, music: MusicId, incarnation: Incarnation) -> AbortOnDropHandle<()> {
        let store = self.store.clone();
        let every = Duration::from_secs(self.config.cut_heartbeat_s.max(1));
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = store
                    .update_music(music, |m| {
                        m.updated_ms = now_ms();
                        m.incarnation == incarnation
                    })
                    .await;
            }
        }))
    }

    /// Copies the song's original into `dir` and decodes it there, off the executor.
    async fn decode(&self, record: &MusicRecord, dir: &Path) -> Result<DecodedSong, SplitError> {
        let original = dir.join("original");
        let mut reader = self
            .store
            .object_reader(&objects::original(record.music_id))
            .await?
            .ok_or(SplitError::OriginalMissing)?;
        let mut file = tokio::fs::File::create(&original)
            .await
            .map_err(SplitError::Spool)?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(SplitError::ReadOriginal)?;
        drop(file);
        let hint = Path::new(&record.file_name)
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase());
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || DecodedSong::decode(&original, hint.as_deref(), &dir))
            .await
            .map_err(|e| SplitError::Task("decoder", e))?
    }

    /// Stores each segment's model input window and creates its job record, a few segments
    /// side by side ([`SEGMENTS_IN_FLIGHT`]): a put waits for the server's acknowledgement of
    /// each chunk before it sends the next, so several at once overlap those round trips and
    /// the packing. After a failure no more are started, and those in flight end before this
    /// returns (a put cut short would leave its chunks behind).
    async fn store_segments(
        &self,
        cut: &Cut,
        decoded: DecodedSong,
        tracks: &[TrackRecord],
    ) -> Result<(), SplitError> {
        let music = cut.music;
        let decoded = Arc::new(decoded);
        let track_ids: Vec<_> = tracks.iter().map(|t| t.track_id).collect();
        let failed = AtomicBool::new(false);
        let stores = cut.plan.segments().map(|seg| {
            let (song, track_ids, failed) = (decoded.clone(), track_ids.clone(), &failed);
            async move {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                // Read and packed (zstd) off the executor; the job records the unpacked size.
                let (size, packed) = tokio::task::spawn_blocking(move || {
                    song.window(&seg)
                        .map(|w| (w.len() as u64, objects::pack(&w)))
                })
                .await
                .map_err(|e| SplitError::Task("window", e))?
                .map_err(SplitError::ReadDecoded)?;
                self.store
                    .put_object(
                        &objects::segment_input(music, cut.incarnation, seg.index),
                        &packed,
                    )
                    .await?;
                let job = queued_job(cut, &seg, size, track_ids);
                self.store.create_job(&job).await?;
                Ok(())
            }
        });
        let mut stored = futures::stream::iter(stores).buffer_unordered(SEGMENTS_IN_FLIGHT);
        let mut first_error = None;
        while let Some(result) = stored.next().await {
            if let Err(e) = result {
                failed.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Records the plan on the song (now `separating`), announces it and queues the first
    /// window. A song deleted meanwhile (a reset), or reset and uploaded again (another
    /// incarnation), gets the segment inputs this cut wrote removed instead: their names carry
    /// this cut's incarnation, so nothing of the new song is touched.
    async fn store_plan(
        &self,
        cut: &Cut,
        model: &ModelInfo,
        tracks: Vec<TrackRecord>,
    ) -> Result<(), SplitError> {
        let (music, plan) = (cut.music, cut.plan);
        let updated = self
            .store
            .update_music(music, |m| {
                if m.incarnation != cut.incarnation
                    || m.plan.is_some()
                    || m.state == MusicState::Failed
                {
                    return false;
                }
                m.plan = Some(plan);
                m.separated = vec![false; plan.count() as usize];
                m.parts = 0;
                m.state = MusicState::Separating;
                m.model = model.fingerprint.clone();
                m.tracks = tracks.clone();
                m.updated_ms = now_ms();
                true
            })
            .await?;
        let Some(record) = updated else {
            self.delete_inputs(cut).await;
            for seg in plan.segments() {
                let _ = self.store.delete_job(JobId::of(music, seg.index)).await;
            }
            return Ok(());
        };
        if record.incarnation != cut.incarnation {
            tracing::info!(%music, "song reset and uploaded again while it was cut; cut dropped");
            self.delete_inputs(cut).await;
            return Ok(());
        }
        self.store
            .publish_progress(&ProgressEvent::of(&record))
            .await;
        let plan = record.plan.unwrap_or(plan);
        self.release_first_window(&record, plan).await
    }

    /// Deletes the segment inputs of an abandoned cut (only its own: their names carry its
    /// incarnation).
    async fn delete_inputs(&self, cut: &Cut) {
        for seg in cut.plan.segments() {
            let name = objects::segment_input(cut.music, cut.incarnation, seg.index);
            let _ = self.store.delete_object(&name).await;
        }
    }

    /// Queues the song's first window of segments, in order (deduplicated by message id): at
    /// least `segment_window`, else the song's share of its model's pool
    /// ([`dme_protocol::messages::segment_window`]; the pool's load not read costs only the
    /// adaptation, never the release).
    async fn release_first_window(
        &self,
        record: &MusicRecord,
        plan: SegmentPlan,
    ) -> Result<(), SplitError> {
        let floor = self.config.segment_window.max(1);
        let window = match self.store.pool_load(&record.model).await {
            // This song has nothing queued yet (or is counted already: then it gets a little less).
            Ok(load) => segment_window(floor, load.workers, load.songs.saturating_add(1)),
            Err(e) => {
                tracing::debug!(error = %e, "pool load not read; window at its floor");
                floor
            }
        };
        for index in 0..window.min(plan.count()) {
            let work = SegmentWork {
                music_id: record.music_id,
                job_id: JobId::of(record.music_id, index),
                index,
                plan,
                window,
                model: record.model.clone(),
                incarnation: record.incarnation,
            };
            self.store
                .publish(
                    &subjects::work_segment(&work.model),
                    &work,
                    Some(&work.msg_id()),
                )
                .await?;
        }
        Ok(())
    }
}

/// One cut of a song: which song, which life of its record, and where its segments lie.
struct Cut {
    music: MusicId,
    incarnation: Incarnation,
    plan: SegmentPlan,
}

/// The job record of segment `seg` of a cut, queued, whose input is `size` bytes.
fn queued_job(
    cut: &Cut,
    seg: &Segment,
    size: u64,
    tracks: Vec<dme_protocol::TrackId>,
) -> JobRecord {
    let music = cut.music;
    JobRecord {
        job_id: JobId::of(music, seg.index),
        music_id: music,
        index: seg.index,
        offset: seg.offset,
        len: seg.len,
        size,
        state: JobState::Queued,
        worker: None,
        attempts: 0,
        time_ms: 0,
        tracks,
        error: None,
        created_ms: now_ms(),
        updated_ms: now_ms(),
        incarnation: cut.incarnation,
    }
}

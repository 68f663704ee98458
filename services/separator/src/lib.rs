//! The separator worker: runs the separation model on one segment at a time.
//!
//! Consumes: the segments cut for its model ([`subjects::work_segment`]) through its model's
//! durable consumer ([`streams::separator_consumer`]), shared by every separator of that model on
//! every machine (a pool: scaling = starting more of them; separators of other models form
//! other pools and never see these segments), and each segment's input window from the object
//! store.
//! Produces: the segment's stems (cut back to the segment) in the object store, the job record,
//! [`subjects::WORK_SEPARATED`], and the song's segments ahead of the finished one in its
//! fairness window ([`SegmentWork::released_on_finish`]). The window adapts to the pool: at least
//! `DME_SEGMENT_WINDOW`, else the song's share of the pool's live workers
//! ([`dme_protocol::messages::segment_window`], the pool's load read at a release at most
//! every [`WINDOW_REFRESH`]), so one song alone keeps every worker busy and several share them.
//! Guarantees: a message is acked only after its stems and its done event are stored, so a worker
//! killed at any point loses nothing (JetStream redelivers after the ack wait); in-progress acks
//! keep a slow but alive worker's segment; a segment that cannot succeed (corrupt input, a model
//! that keeps failing on it) is terminated after a bounded number of deliveries and its song
//! marked failed with the reason. The model is warmed up and registered in the system bucket
//! before any work is pulled. With `DME_FAKE_INFER_MS` (a test and benchmark aid) the model is
//! not run: each segment waits that long and gets stems of the right shape ([`fake_stems`]).
//!
//! # Layout
//! - `config`: [`SeparatorConfig`]. `error`: [`SeparatorError`] (start-up), [`SeparateError`]
//!   (a segment).
//! - `model_thread`: [`ModelThread`], the one thread the model is loaded, warmed up and run on.
//! - this file: the [`Separator`] service and the [`Worker`] that separates one segment.
//!
//! # Observability
//! Each separator is an instance of the NATS micro service [`subjects::SERVICE_SEPARATOR`]
//! (its model, segments done, failures and mean inference time in its status and stats), and,
//! with `DME_METRICS_ADDR`, serves `/metrics` (`dme_segments_separated_total`,
//! `dme_inference_seconds`, the consume loop's redeliveries and failures), `/healthz` and
//! `/readyz` (NATS connected, model loaded).

mod config;
mod error;
mod model_thread;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
pub use config::SeparatorConfig;
use dme_model::{Model, ModelOptions, ModelSource};
use dme_protocol::messages::{segment_window, SegmentWork};
use dme_protocol::records::{JobRecord, ModelInfo, MusicState};
use dme_protocol::streams::Redelivery;
use dme_protocol::{objects, streams, subjects, Segment};
use dme_storage::presence::{self, Presence, Tally};
use dme_storage::work::{self, Delivery, Handler};
use dme_storage::Store;
use dme_telemetry::metrics::{MetricsServer, Readiness, INFERENCE_SECONDS, SEGMENTS_SEPARATED};
use dme_telemetry::Service;
pub use error::{SeparateError, SeparatorError};
use model_thread::ModelThread;
use tokio_util::sync::CancellationToken;

/// How old a separator's reading of its pool's load (live workers, songs queued) may be when it
/// releases segments: a reading is two JetStream API requests, so a window follows workers
/// joining and songs arriving within about a second, a fraction of a segment's time on any
/// real model, and a large pool does not flood the server with them.
pub const WINDOW_REFRESH: Duration = Duration::from_secs(1);

/// A separator process: one model, one segment at a time (the model uses the cores it is given).
pub struct Separator {
    consumer: PullConsumer,
    redelivery: Redelivery,
    worker: Arc<Worker>,
    presence: Presence,
    /// Serves `/metrics`, `/healthz`, `/readyz` while the separator lives (when configured).
    _metrics: Option<MetricsServer>,
}

impl Service for Separator {
    type Config = SeparatorConfig;
    type Error = SeparatorError;
    const NAME: &'static str = "separator";

    /// Loads and warms up the model, connects, registers the model and declares the consumer.
    async fn build(config: SeparatorConfig) -> Result<Separator, SeparatorError> {
        // Before the model's threads start: they inherit it.
        lower_priority(config.nice);
        let worker_id = config.worker_id();
        // Healthy (answering) while the model loads; ready once it is loaded and NATS is there.
        let readiness = Readiness::pending(&["model", "nats"]);
        let addr = config.metrics_addr.as_deref();
        let metrics = MetricsServer::start_if_set(addr, Self::NAME, readiness.clone())
            .await
            .map_err(|source| SeparatorError::Metrics {
                addr: addr.unwrap_or_default().to_string(),
                source,
            })?;
        let (model, loaded) = load_warm_model(&config).await?;
        readiness.set("model", || true);
        // A simulated separator is a pool of its own: its stems are not the model's.
        let info = match config.fake_inference() {
            Some(_) => loaded.simulated(),
            None => loaded,
        };
        let store = Store::connect_with(&config.nats, &worker_id).await?;
        readiness.set("nats", presence::connected(store.client()));
        store.register_model(&info).await?;
        let redelivery = config.redelivery();
        // This model's pool: segments cut for another model never reach this worker.
        let consumer = store
            .work_consumer(
                &streams::separator_consumer(&info.fingerprint),
                &subjects::work_segment(&info.fingerprint),
                redelivery,
            )
            .await?;
        let window = Arc::new(SongWindow::new(
            store.clone(),
            info.fingerprint.clone(),
            config.segment_window,
        ));
        let tally = Arc::new(Tally::default());
        let metadata = presence::metadata(
            metrics.as_ref().map(MetricsServer::addr),
            &[
                ("worker", &worker_id),
                ("model", &info.name),
                ("fingerprint", &info.fingerprint),
            ],
        );
        let presence = Presence::start(
            store.client(),
            subjects::SERVICE_SEPARATOR,
            "separates song segments into stems with its model",
            metadata,
            status_fn(&worker_id, &info, tally.clone()),
        )
        .await?;
        let worker = Arc::new(Worker {
            store,
            model,
            info,
            worker_id,
            tally,
            window,
            fake: config.fake_inference(),
        });
        Ok(Separator {
            consumer,
            redelivery,
            worker,
            presence,
            _metrics: metrics,
        })
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), SeparatorError> {
        let worker_id = self.worker.worker_id.clone();
        tracing::info!(worker = %worker_id, "separator ready");
        work::consume(self.consumer, self.redelivery, 1, shutdown, self.worker).await;
        self.presence.stop().await;
        tracing::info!(worker = %worker_id, "separator stopped");
        Ok(())
    }
}

/// A separator's live status, as its micro service's `status` endpoint and stats answer it:
/// its worker id, its model, segments whose stems it stored, failed attempts, segments in hand,
/// and the mean time of its model runs.
fn status_fn(worker_id: &str, info: &ModelInfo, tally: Arc<Tally>) -> presence::StatusFn {
    let worker = worker_id.to_string();
    let model = serde_json::json!({ "name": info.name, "fingerprint": info.fingerprint });
    Arc::new(move || {
        let counts = tally.counts();
        serde_json::json!({
            "worker": worker,
            "model": model,
            "segments_done": counts.done,
            "failures": counts.failures,
            "in_hand": counts.in_hand,
            "mean_inference_ms": counts.mean_ms,
        })
    })
}

/// Loads the model named by `config` (or the embedded default).
///
/// # Errors
/// When ONNX Runtime or the model cannot be loaded, or the model breaks the contract.
pub fn load_model(config: &SeparatorConfig) -> Result<Model, SeparatorError> {
    let source = match &config.model {
        Some(path) => ModelSource::File(path.clone()),
        None => ModelSource::Embedded,
    };
    let mut options = ModelOptions {
        intra_threads: config.intra_threads,
        memory_arena: config.memory_arena,
        ..ModelOptions::default()
    };
    if let Some(dir) = &config.cache_dir {
        options.cache_dir = dir.clone();
    }
    Ok(Model::load(&source, &options)?)
}

/// What the model's thread holds: the model, and the last window it ran the model on with what
/// the model made of it.
struct Loaded {
    model: Model,
    last: Option<Separated>,
}

/// Loads the model on its own thread ([`ModelThread`]) and runs it once there (so the first
/// segment does not pay for the set-up); returns the thread and the model's info.
async fn load_warm_model(
    config: &SeparatorConfig,
) -> Result<(ModelThread<Loaded>, ModelInfo), SeparatorError> {
    let started = Instant::now();
    let cfg = config.clone();
    let load = move || {
        let mut model = load_model(&cfg)?;
        // A simulated worker never runs it: warming it up would only cost memory.
        if cfg.fake_infer_ms.is_none() {
            model.warm_up()?;
        }
        Ok::<_, SeparatorError>(Loaded { model, last: None })
    };
    let (thread, info) = ModelThread::start(load, |l| l.model.info().clone()).await?;
    tracing::info!(
        model = %info.name, fingerprint = %info.fingerprint, sources = ?info.sources,
        segment = info.segment, fixed = info.fixed, threads = config.intra_threads,
        memory_arena = config.memory_arena, ready_ms = started.elapsed().as_millis() as u64,
        "model loaded and warmed up"
    );
    Ok((thread, info))
}

/// Where a segment stands before a worker separates it.
enum Status {
    /// Its song was deleted or failed: nothing to do.
    Dropped,
    /// Separated before (a redelivery after a lost ack).
    AlreadyDone,
    /// Every segment is separated and the tracks are assembled: the segments' stems are gone.
    Assembled,
    /// To separate.
    ToDo,
}

/// Separates segments: the handler of [`subjects::WORK_SEGMENT`].
struct Worker {
    store: Store,
    model: ModelThread<Loaded>,
    info: ModelInfo,
    worker_id: String,
    /// Segments separated, failed attempts and inference times, for the status.
    tally: Arc<Tally>,
    /// The songs' window as the pool's load says it is now.
    window: Arc<SongWindow>,
    /// `DME_FAKE_INFER_MS`: a simulated model run of this length instead of the model.
    fake: Option<Duration>,
}

/// The window of the songs of one pool, read from the pool's load when a release needs it and
/// the last read is older than [`WINDOW_REFRESH`] (one read at a time per process). An idle
/// worker asks nothing, and a pool of N workers releasing every T seconds asks about N / T
/// times a second, not N. Until the first read the window is the floor (`DME_SEGMENT_WINDOW`);
/// a read that fails keeps the last one: releases go on.
struct SongWindow {
    store: Store,
    model: String,
    floor: u32,
    /// The window and when it was read (`None`: never).
    last: tokio::sync::Mutex<Option<(u32, Instant)>>,
}

impl SongWindow {
    /// The window of the pool of `model`, with `floor` as the smallest.
    fn new(store: Store, model: String, floor: u32) -> SongWindow {
        SongWindow {
            store,
            model,
            floor: floor.max(1),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The window now: the last one read, or a fresh read when that is older than
    /// [`WINDOW_REFRESH`].
    async fn get(&self) -> u32 {
        let mut last = self.last.lock().await;
        if let Some((window, at)) = *last {
            if at.elapsed() < WINDOW_REFRESH {
                return window;
            }
        }
        let window = match self.store.pool_load(&self.model).await {
            Ok(load) => segment_window(self.floor, load.workers, load.songs),
            Err(e) => {
                // The last reading stands (the floor before any): a failed read says nothing
                // about the pool, and a window swinging to the floor and back makes long walks.
                tracing::debug!(error = %e, "pool load not read; window unchanged");
                last.map_or(self.floor, |(window, _)| window)
            }
        };
        *last = Some((window, Instant::now()));
        window
    }
}

/// A model input window, by its hash, and the model's output for it. The model is a pure
/// function of its input, so a window equal to the last one (digital silence: the start and end
/// of most recordings, gaps between pieces, an hour of it as a hostile upload) is not run again;
/// the stems are the same bits.
struct Separated {
    input: blake3::Hash,
    output: Arc<Vec<f32>>,
}

impl Handler for Worker {
    type Message = SegmentWork;
    type Error = SeparateError;
    /// Transient failures are NATS hiccups or a model fluke: soon is fine.
    const RETRY_DELAY: Duration = Duration::from_secs(1);

    async fn handle(&self, work: &SegmentWork, delivery: Delivery) -> Result<(), SeparateError> {
        let _in_hand = self.tally.begin();
        let result = self.separate(work, delivery.attempt).await;
        if result.is_err() {
            self.tally.failed();
        }
        result
    }

    async fn give_up(&self, work: &SegmentWork, delivery: Delivery, reason: &str) {
        let reason = format!(
            "segment {} failed after {} attempt(s): {reason}",
            work.index, delivery.attempt
        );
        tracing::error!(music = %work.music_id, index = work.index, reason, "segment failed");
        self.update_job(work, |job| job.fail(&reason)).await;
        let (music, incarnation) = (work.music_id, work.incarnation);
        if let Err(e) = dme_storage::song::fail(&self.store, music, incarnation, &reason).await {
            tracing::warn!(error = %e, "could not record the failure");
        }
    }
}

impl Worker {
    /// Separates one segment: runs the model on its window, stores its stems, marks its job done,
    /// reports it and releases the song's next segment.
    async fn separate(&self, work: &SegmentWork, attempt: u32) -> Result<(), SeparateError> {
        match self.status(work).await? {
            Status::Dropped | Status::Assembled => return Ok(()),
            // Already done by a worker whose ack was lost (or that died while it released the
            // segments ahead): make sure the window moves on. Only a redelivery walks the whole
            // window: a first delivery found done is a copy someone published again, and
            // walking the window for each copy could multiply copies once their message ids
            // left JetStream's duplicate window.
            Status::AlreadyDone => return self.release_ahead(work, attempt > 1).await,
            Status::ToDo => {}
        }
        self.check_model(work)?;
        let seg = work
            .plan
            .segment(work.index)
            .ok_or(SeparateError::OutsidePlan(work.index))?;
        // The job record (a view for people) is marked started while the input is read: two
        // round trips fewer before the model runs.
        let (_, input) = tokio::join!(
            self.update_job(work, |job| job.start(&self.worker_id, attempt)),
            self.load_input(work, &seg)
        );
        let input = input?;
        let started = Instant::now();
        let output = self.run_model(input).await?;
        let took = started.elapsed();
        metrics::histogram!(INFERENCE_SECONDS).record(took.as_secs_f64());
        self.tally.timed(took);
        let time_ms = took.as_millis() as u64;
        // Packing (zstd) an hour's worth of segments is CPU work: off the executor too.
        let stems = tokio::task::spawn_blocking(move || crop_to_segment(&output, &seg))
            .await
            .map_err(SeparateError::Task)??;
        if !matches!(self.status(work).await?, Status::ToDo) {
            return Ok(()); // reset, failed or done by another worker while we worked
        }
        let name = objects::segment_stems(work.music_id, work.incarnation, work.index);
        self.store.put_object(&name, &stems).await?;
        if matches!(
            self.status(work).await?,
            Status::Dropped | Status::Assembled
        ) {
            // Reset, deleted or failed while the stems were stored, or another worker's stems
            // of this segment were assembled meanwhile (and deleted): nobody will read these.
            // The name carries this work's incarnation, so only what it wrote goes.
            let _ = self.store.delete_object(&name).await;
            return Ok(());
        }
        self.update_job(work, |job| job.finish(&self.worker_id, attempt, time_ms))
            .await;
        self.publish_done(work).await?;
        self.tally.done();
        metrics::counter!(SEGMENTS_SEPARATED).increment(1);
        tracing::info!(
            music = %work.music_id, index = work.index, attempt, ms = time_ms,
            samples = seg.len, "segment separated"
        );
        self.release_ahead(work, false).await
    }

    /// Whether the segment still needs separating.
    async fn status(&self, work: &SegmentWork) -> Result<Status, SeparateError> {
        let Some(record) = self.store.music(work.music_id).await? else {
            tracing::info!(music = %work.music_id, "song deleted; segment dropped");
            return Ok(Status::Dropped);
        };
        if record.incarnation != work.incarnation {
            tracing::info!(music = %work.music_id, "segment from before a reset; dropped");
            return Ok(Status::Dropped);
        }
        if record.state == MusicState::Failed {
            return Ok(Status::Dropped);
        }
        if record.tracks_ready {
            return Ok(Status::Assembled);
        }
        if record.separated.get(work.index as usize) == Some(&true) {
            return Ok(Status::AlreadyDone);
        }
        Ok(Status::ToDo)
    }

    /// Applies `change` to the segment's job record (not to a job of another incarnation of the
    /// song). Job records are a view for people: failing to update one never fails the segment.
    async fn update_job(&self, work: &SegmentWork, mut change: impl FnMut(&mut JobRecord)) {
        let updated = self
            .store
            .update_job(work.job_id, |job| {
                if job.incarnation != work.incarnation {
                    return false;
                }
                change(job);
                true
            })
            .await;
        if let Err(e) = updated {
            tracing::debug!(error = %e, job = %work.job_id, "job record not updated");
        }
    }

    /// Tells the mixer the segment's stems are stored.
    async fn publish_done(&self, work: &SegmentWork) -> Result<(), SeparateError> {
        let done = work.done();
        self.store
            .publish(subjects::WORK_SEPARATED, &done, Some(&done.msg_id()))
            .await?;
        Ok(())
    }

    /// Refuses a segment cut for another model than this worker runs.
    fn check_model(&self, work: &SegmentWork) -> Result<(), SeparateError> {
        if work.model == self.info.fingerprint {
            return Ok(());
        }
        Err(SeparateError::ModelMismatch {
            cut_for: work.model.clone(),
            runs: self.info.fingerprint.clone(),
            name: self.info.name.clone(),
        })
    }

    /// The segment's model input window, unpacked (off the executor) and checked against the
    /// window's length: `[2, window]` samples.
    async fn load_input(
        &self,
        work: &SegmentWork,
        seg: &Segment,
    ) -> Result<Vec<f32>, SeparateError> {
        let name = objects::segment_input(work.music_id, work.incarnation, work.index);
        let packed = self.store.get_object(&name).await?;
        let packed = packed.ok_or_else(|| SeparateError::InputMissing(name.clone()))?;
        let bytes = packed.len();
        let input = tokio::task::spawn_blocking(move || objects::unpack_samples(&packed))
            .await
            .map_err(SeparateError::Task)?;
        let window = seg.window_len as usize;
        let expected = window.saturating_mul(2);
        // Stored bytes that are not packed audio never will be: permanent, like a bad size.
        let input = input.unwrap_or_default();
        if input.len() != expected {
            return Err(SeparateError::InputSize {
                name,
                bytes,
                expected: expected * 4,
                window,
            });
        }
        Ok(input)
    }

    /// Runs the model on a planar f32 window, off the executor: `[S, 2, window]` samples. A
    /// window equal to the last one gets the last output (see [`Separated`]).
    async fn run_model(&self, input: Vec<f32>) -> Result<Arc<Vec<f32>>, SeparateError> {
        if let Some(took) = self.fake {
            tokio::time::sleep(took).await;
            let sources = self.info.sources.len();
            return tokio::task::spawn_blocking(move || Arc::new(fake_stems(&input, sources)))
                .await
                .map_err(SeparateError::Task);
        }
        self.model
            .run(move |Loaded { model, last }| {
                let mut hasher = blake3::Hasher::new();
                for v in &input {
                    hasher.update(&v.to_le_bytes());
                }
                let key = hasher.finalize();
                if let Some(same) = last.as_ref().filter(|l| l.input == key) {
                    return Ok(same.output.clone());
                }
                let output = Arc::new(model.separate(&input).map_err(SeparateError::Model)?);
                *last = Some(Separated {
                    input: key,
                    output: output.clone(),
                });
                Ok(output)
            })
            .await?
    }

    /// Releases the song's segments `work.index + 1 ..= work.index + max(w, window)`
    /// ([`SegmentWork::released_on_finish`]), where `w`
    /// is the window `work` was released with and `window` the window as it is now, published
    /// pipelined (about one round trip); message ids drop those released before. Covering
    /// every segment from `work.index + 1` up is what keeps a song from stalling: the lowest
    /// segment nobody released always has its predecessor released, and the predecessor's walk
    /// includes it, however the window changed and in whatever order segments finished. (Walks
    /// that started higher, at `work.index + min(w, window)`, or stopped at the first
    /// duplicate, left segments released by nobody until the mixer's reconciler found the song
    /// idle.) The walk's length is bounded by the windows, so it never relies on JetStream
    /// remembering message ids (15 minutes).
    /// A `thorough` release (a redelivered segment found done already: its first worker may
    /// have died halfway through this walk) skips the segments the song's record shows
    /// separated.
    async fn release_ahead(&self, work: &SegmentWork, thorough: bool) -> Result<(), SeparateError> {
        let window = self.window.get().await;
        let separated = if thorough {
            self.store
                .music(work.music_id)
                .await?
                .map(|r| r.separated)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let next: Vec<SegmentWork> = work
            .released_on_finish(window)
            .filter(|next| separated.get(next.index as usize) != Some(&true))
            .collect();
        let kind = subjects::work_segment(&work.model);
        self.store
            .publish_batch(&kind, &next, SegmentWork::msg_id)
            .await?;
        Ok(())
    }
}

/// A simulated model run's output for a planar stereo window (`DME_FAKE_INFER_MS`): `sources`
/// stems of `[2, window]` samples, the first the input itself and every other silence. The stems
/// still sum to the input, and silence packs to almost nothing, so a simulated fleet moves
/// about as many bytes per segment as its inputs.
pub fn fake_stems(input: &[f32], sources: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(input.len().saturating_mul(sources.max(1)));
    out.extend_from_slice(input);
    out.resize(input.len().saturating_mul(sources.max(1)), 0.0);
    out
}

/// Cuts the model's output for a window back to its segment, as planar f32 bytes: lanes are
/// (stem, channel) pairs of `window_len` samples.
///
/// # Errors
/// [`SeparateError::OutputShape`] when the output is not whole lanes of the window, or the
/// segment does not lie inside its window (a plan that does not fit the model).
fn crop_to_segment(output: &[f32], seg: &Segment) -> Result<Vec<u8>, SeparateError> {
    let window = seg.window_len as usize;
    let shape = || SeparateError::OutputShape {
        samples: output.len(),
        window,
    };
    if window == 0 || !output.len().is_multiple_of(window) {
        return Err(shape());
    }
    let crop = seg.crop_start();
    let keep = crop..crop.saturating_add(seg.len as usize);
    let lanes = output
        .chunks_exact(window)
        .map(|lane| lane.get(keep.clone()))
        .collect::<Option<Vec<&[f32]>>>()
        .ok_or_else(shape)?;
    Ok(objects::pack_planar(&lanes))
}

/// Lowers every thread of this process to scheduling priority `nice` (Linux's nice is per
/// thread; threads started later inherit it from the thread that starts them). A thread
/// already nicer is left as it is; failures are logged, never fatal.
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    let tasks = match std::fs::read_dir("/proc/self/task") {
        Ok(tasks) => tasks,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this process's threads; priority left as it is");
            return;
        }
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // SAFETY: getpriority and setpriority read and change the scheduling priority of one
        // of this process's threads; errno is this thread's.
        let lowered = unsafe {
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            if now == -1 && *libc::__errno_location() != 0 {
                continue; // the thread ended meanwhile
            }
            now >= nice || libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
        };
        if !lowered {
            let e = std::io::Error::last_os_error();
            tracing::warn!(tid, nice, error = %e, "could not lower a thread's priority");
        }
    }
    tracing::info!(nice, "separator priority lowered");
}

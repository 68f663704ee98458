//! The separator worker: runs the separation model on one segment at a time.
//!
//! Consumes: [`subjects::WORK_SEGMENT`] through the durable consumer
//! [`streams::SEPARATOR_CONSUMER`], shared by every separator on every machine (scaling = starting
//! more of them), and each segment's input window from the object store.
//! Produces: the segment's stems (cut back to the segment) in the object store, the job record,
//! [`subjects::WORK_SEPARATED`], and the song's next segment in its fairness window
//! ([`SegmentWork::successor`]).
//! Guarantees: a message is acked only after its stems and its done event are stored, so a worker
//! killed at any point loses nothing (JetStream redelivers after the ack wait); in-progress acks
//! keep a slow but alive worker's segment; a segment that cannot succeed (corrupt input, a model
//! that keeps failing on it) is terminated after a bounded number of deliveries and its song
//! marked failed with the reason. The model is warmed up and registered in the system bucket
//! before any work is pulled.

mod config;
mod error;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use config::SeparatorConfig;
use dme_model::{Model, ModelOptions, ModelSource};
use dme_protocol::messages::{SegmentDone, SegmentWork};
use dme_protocol::records::{JobState, ModelInfo, MusicState};
use dme_protocol::{objects, streams, subjects};
use dme_storage::work::{consume, Delivery, Verdict};
use dme_storage::Store;
pub use error::SeparatorError;
use tokio_util::sync::CancellationToken;

/// Delay before a segment that failed for a passing reason (NATS hiccup) is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Loads the model named by `config` (or the embedded default).
///
/// # Errors
/// When ONNX Runtime or the model cannot be loaded, or the model breaks the contract.
pub fn load_model(config: &SeparatorConfig) -> Result<Model, SeparatorError> {
    let source = match &config.model {
        Some(path) => ModelSource::File(path.clone()),
        None => ModelSource::Embedded,
    };
    let options = ModelOptions {
        intra_threads: config.intra_threads,
        ..ModelOptions::default()
    };
    Ok(Model::load(&source, &options)?)
}

struct Worker {
    store: Store,
    model: Arc<Mutex<Model>>,
    info: ModelInfo,
    worker_id: String,
    max_deliver: u32,
}

/// Loads and warms the model, registers it, then separates segments until `shutdown`.
///
/// # Errors
/// When the model cannot be loaded or NATS cannot be reached at start-up; once running, failures
/// are per segment and never end the worker.
pub async fn run(
    config: SeparatorConfig,
    shutdown: CancellationToken,
) -> Result<(), SeparatorError> {
    let worker_id = config.worker_id();
    let started = Instant::now();
    let cfg = config.clone();
    let mut model = tokio::task::spawn_blocking(move || load_model(&cfg))
        .await
        .map_err(|e| SeparatorError::Task(e.to_string()))??;
    let info = model.info().clone();
    let model = tokio::task::spawn_blocking(move || model.warm_up().map(|_| model))
        .await
        .map_err(|e| SeparatorError::Task(e.to_string()))??;
    tracing::info!(
        model = %info.name, fingerprint = %info.fingerprint, sources = ?info.sources,
        segment = info.segment, fixed = info.fixed, threads = config.intra_threads,
        ready_ms = started.elapsed().as_millis() as u64, "model loaded and warmed up"
    );
    // Shutdown also applies while NATS is still unreachable at start-up.
    let store = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        store = Store::connect(
        &config.nats_url,
        &worker_id,
        Duration::from_secs(config.connect_timeout_s),
    ) => store?,
    };
    store.register_model(&info).await?;
    let redelivery = config.redelivery();
    let consumer = store
        .work_consumer(
            streams::SEPARATOR_CONSUMER,
            subjects::WORK_SEGMENT,
            redelivery,
        )
        .await?;
    let worker = Arc::new(Worker {
        store,
        model: Arc::new(Mutex::new(model)),
        info,
        worker_id: worker_id.clone(),
        max_deliver: redelivery.max_deliver as u32,
    });
    tracing::info!(worker = %worker_id, "separator ready");
    consume(consumer, redelivery.ack_wait, 1, shutdown, move |d| {
        let worker = worker.clone();
        async move { worker.handle(d).await }
    })
    .await;
    tracing::info!(worker = %worker_id, "separator stopped");
    Ok(())
}

/// What went wrong with one segment.
enum Failure {
    /// Worth another delivery.
    Transient(String),
    /// Will never succeed.
    Permanent(String),
}

impl Worker {
    async fn handle(&self, d: Delivery) -> Verdict {
        let work: SegmentWork = match dme_protocol::decode(&d.message.payload) {
            Ok(w) => w,
            Err(e) => return Verdict::Term(e.to_string()),
        };
        match self.separate(&work, d.attempt).await {
            Ok(()) => Verdict::Ack,
            Err(Failure::Transient(reason)) if d.attempt < self.max_deliver => {
                tracing::warn!(music = %work.music_id, index = work.index, attempt = d.attempt, reason, "segment will be retried");
                Verdict::Retry(RETRY_DELAY)
            }
            Err(Failure::Transient(reason)) | Err(Failure::Permanent(reason)) => {
                let reason = format!(
                    "segment {} failed after {} attempt(s): {reason}",
                    work.index, d.attempt
                );
                self.fail(&work, &reason).await;
                Verdict::Term(reason)
            }
        }
    }

    async fn separate(&self, work: &SegmentWork, attempt: u32) -> Result<(), Failure> {
        let store = &self.store;
        let transient = |e: dme_storage::StoreError| Failure::Transient(e.to_string());
        let Some(record) = store.music(work.music_id).await.map_err(transient)? else {
            tracing::info!(music = %work.music_id, "song deleted; segment dropped");
            return Ok(());
        };
        if record.state == MusicState::Failed {
            return Ok(());
        }
        if record
            .separated
            .get(work.index as usize)
            .copied()
            .unwrap_or(false)
        {
            // Already done by a worker whose ack was lost: make sure the window moves on.
            return self.release_successor(work).await;
        }
        if work.model != self.info.fingerprint {
            return Err(Failure::Transient(format!(
                "cut for model {} but this worker runs {} ({})",
                work.model, self.info.fingerprint, self.info.name
            )));
        }
        let seg = work.plan.segment(work.index).ok_or_else(|| {
            Failure::Permanent(format!("index {} is outside the plan", work.index))
        })?;
        let _ = store
            .update_job(work.job_id, |job| {
                job.state = JobState::Running;
                job.worker = Some(self.worker_id.clone());
                job.attempts = attempt;
                job.updated_ms = dme_protocol::now_ms();
                true
            })
            .await;
        let name = objects::segment_input(work.music_id, work.index);
        let bytes = store
            .get_object(&name)
            .await
            .map_err(transient)?
            .ok_or_else(|| Failure::Permanent(format!("input {name} is missing")))?;
        let window = seg.window_len as usize;
        if bytes.len() != 2 * window * 4 {
            return Err(Failure::Permanent(format!(
                "input {name} holds {} bytes, expected {} (2 × {window} f32)",
                bytes.len(),
                2 * window * 4
            )));
        }
        let model = self.model.clone();
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            let input = objects::unpack_planar(&bytes, 1)
                .map_err(|e| e.to_string())?
                .remove(0);
            let mut model = model
                .lock()
                .map_err(|_| "model lock poisoned".to_string())?;
            model.separate(&input).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| Failure::Transient(format!("model task: {e}")))?
        .map_err(Failure::Transient)?;
        let elapsed = started.elapsed();
        // Cut the window back to the segment: lanes are (stem, channel) pairs of `window` samples.
        let crop = seg.crop_start();
        let len = seg.len as usize;
        let lanes: Vec<&[f32]> = output
            .chunks_exact(window)
            .map(|lane| &lane[crop..crop + len])
            .collect();
        let stems = objects::pack_planar(&lanes);
        if store
            .music(work.music_id)
            .await
            .map_err(transient)?
            .is_none()
        {
            return Ok(()); // reset while we worked
        }
        store
            .put_object(&objects::segment_stems(work.music_id, work.index), &stems)
            .await
            .map_err(transient)?;
        let worker_id = self.worker_id.clone();
        let _ = store
            .update_job(work.job_id, |job| {
                job.state = JobState::Done;
                job.worker = Some(worker_id.clone());
                job.attempts = attempt;
                job.time_ms = elapsed.as_millis() as u64;
                job.error = None;
                job.updated_ms = dme_protocol::now_ms();
                true
            })
            .await;
        let done = SegmentDone {
            music_id: work.music_id,
            index: work.index,
            job_id: work.job_id,
        };
        store
            .publish(subjects::WORK_SEPARATED, &done, Some(&done.msg_id()))
            .await
            .map_err(transient)?;
        tracing::info!(
            music = %work.music_id, index = work.index, attempt,
            ms = elapsed.as_millis() as u64, samples = len, "segment separated"
        );
        self.release_successor(work).await
    }

    async fn release_successor(&self, work: &SegmentWork) -> Result<(), Failure> {
        if let Some(next) = work.successor() {
            self.store
                .publish(subjects::WORK_SEGMENT, &next, Some(&next.msg_id()))
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?;
        }
        Ok(())
    }

    async fn fail(&self, work: &SegmentWork, reason: &str) {
        tracing::error!(music = %work.music_id, index = work.index, reason, "segment failed");
        let _ = self
            .store
            .update_job(work.job_id, |job| {
                job.state = JobState::Failed;
                job.error = Some(reason.to_string());
                job.updated_ms = dme_protocol::now_ms();
                true
            })
            .await;
        if let Err(e) = self.store.fail_music(work.music_id, reason).await {
            tracing::warn!(error = %e, "could not record the failure");
        }
    }
}

//! `/job`: one job per segment separation.

use actix_web::{web, HttpResponse};
use dme_protocol::records::{JobRecord, JobState};
use dme_protocol::{JobId, MusicId, TrackId};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::parse_id;
use crate::{ApiError, AppState};

/// `GET /job`: every job id.
#[utoipa::path(
    get,
    path = "/job",
    tag = "system",
    operation_id = "jobs",
    responses(
        (status = 200, description = "Every job's id, in order", body = Vec<u64>,
            example = json!([3133121, 3164892, 3313176])),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ids(&state).await?))
}

/// Every job id, in order.
///
/// # Errors
/// 503 when NATS is away.
pub(crate) async fn ids(state: &AppState) -> Result<Vec<JobId>, ApiError> {
    let mut ids = state.store.job_ids().await?;
    ids.sort();
    Ok(ids)
}

/// `GET /job/{id}`: api.yaml's `Job` (`job_id`, `size`, `time`, `music_id`, `track_id`) plus
/// the worker, attempts, state and where the segment lies.
#[utoipa::path(
    get,
    path = "/job/{job_id}",
    tag = "system",
    operation_id = "job_stats",
    params(("job_id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 400, description = "A malformed id", body = ErrorBody),
        (status = 404, description = "Job not found", body = ErrorBody),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn show(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(job_of(&state, &path).await?))
}

/// The job whose id is `raw`, as `GET /job/{id}` answers it.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one, 503 when NATS is away.
pub(crate) async fn job_of(state: &AppState, raw: &str) -> Result<Job, ApiError> {
    let id: JobId = parse_id(raw, "job id")?;
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))?;
    Ok(Job::from(&job))
}

/// api.yaml's `Job`: one segment's separation.
#[derive(Serialize, ToSchema)]
pub(crate) struct Job {
    /// Its id.
    #[schema(value_type = u64, example = 1334)]
    job_id: JobId,
    /// Bytes of the segment's model input.
    #[schema(example = 1048576)]
    size: u64,
    /// Seconds of inference of the successful attempt, rounded.
    time: u64,
    /// Milliseconds of inference of the successful attempt.
    time_ms: u64,
    /// The song it separates.
    #[schema(value_type = u64)]
    music_id: MusicId,
    /// The tracks it makes stems for (the contract's array form of `track_id`).
    #[schema(value_type = Vec<u64>, example = json!([3133121, 3164892, 3313176]))]
    track_id: Vec<TrackId>,
    /// Where it is.
    #[schema(value_type = super::openapi::JobState)]
    state: JobState,
    /// The worker that ran (or runs) it; null while it is queued.
    #[schema(required = true)]
    worker: Option<String>,
    /// Deliveries so far.
    attempts: u32,
    /// The segment's index in the song.
    segment: u32,
    /// The segment's first sample in the song.
    offset: u64,
    /// Samples in the segment.
    samples: u32,
    /// Why it failed; null unless it did.
    #[schema(required = true)]
    error: Option<String>,
}

impl From<&JobRecord> for Job {
    fn from(job: &JobRecord) -> Self {
        Job {
            job_id: job.job_id,
            size: job.size,
            time: (job.time_ms as f64 / 1000.0).round() as u64,
            time_ms: job.time_ms,
            music_id: job.music_id,
            track_id: job.tracks.clone(),
            state: job.state,
            worker: job.worker.clone(),
            attempts: job.attempts,
            segment: job.index,
            offset: job.offset,
            samples: job.len,
            error: job.error.clone(),
        }
    }
}

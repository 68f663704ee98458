//! `/job`: one job per segment separation.

use actix_web::{web, HttpResponse};
use dme_protocol::JobId;

use super::parse_id;
use crate::{ApiError, AppState};

/// `GET /job`: every job id.
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut ids = state.store.job_ids().await?;
    ids.sort();
    Ok(HttpResponse::Ok().json(ids))
}

/// `GET /job/{id}`: api.yaml's `Job` (`job_id`, `size`, `time`, `music_id`, `track_id`) plus
/// the worker, attempts, state and where the segment lies.
pub async fn show(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id: JobId = parse_id(&path, "job id")?;
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "job_id": job.job_id,
        "size": job.size,
        "time": (job.time_ms as f64 / 1000.0).round() as u64,
        "time_ms": job.time_ms,
        "music_id": job.music_id,
        "track_id": job.tracks,
        "state": job.state,
        "worker": job.worker,
        "attempts": job.attempts,
        "segment": job.index,
        "offset": job.offset,
        "samples": job.len,
        "error": job.error,
    })))
}

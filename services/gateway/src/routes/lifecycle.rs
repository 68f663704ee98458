//! One song's life after its upload: `DELETE /music/{id}` and `POST /music/{id}/retry`.

use actix_web::{web, HttpResponse};
use dme_protocol::MusicId;
use dme_storage::song::{self, RetryRefused};

use super::music::{Music, UploadInFlight};
use super::openapi::{Deleted, ErrorBody};
use super::parse_id;
use crate::{ApiError, AppState};

/// `DELETE /music/{id}`: removes the song (record, jobs, original, stems, mixes); its queued work
/// is dropped by the workers. Other songs are not touched. The same file can be uploaded again.
#[utoipa::path(
    delete,
    path = "/music/{music_id}",
    tag = "music",
    operation_id = "delete",
    params(("music_id" = u64, Path, description = "The song's id")),
    responses(
        (status = 200, description = "The song is gone", body = Deleted),
        (status = 400, description = "A malformed id", body = ErrorBody),
        (status = 404, description = "Music not found", body = ErrorBody),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(remove(&state, &path).await?))
}

/// Deletes the song whose id is `raw`, as `DELETE /music/{id}` does.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one, 503 when NATS is away.
pub(crate) async fn remove(state: &AppState, raw: &str) -> Result<serde_json::Value, ApiError> {
    let music: MusicId = parse_id(raw, "music id")?;
    // Uploads of the same file through this gateway wait until the song is gone, so none of
    // them finds the original about to be deleted.
    let _turn = UploadInFlight::wait_for_turn(music).await;
    if !song::delete(&state.store, music).await? {
        return Err(ApiError::NotFound(format!("no music with id {music}")));
    }
    Ok(serde_json::json!({ "music_id": music, "status": "deleted" }))
}

/// `POST /music/{id}/retry`: restarts a `failed` song from its stored original, keeping its
/// selections. 409 when the song has not failed, or its original is gone.
#[utoipa::path(
    post,
    path = "/music/{music_id}/retry",
    tag = "music",
    operation_id = "retry",
    params(("music_id" = u64, Path, description = "The song's id")),
    responses(
        (status = 200, description = "The song, queued again", body = Music),
        (status = 400, description = "A malformed id", body = ErrorBody),
        (status = 404, description = "Music not found", body = ErrorBody),
        (status = 409, description = "The song has not failed, or its original is gone",
            body = ErrorBody),
        (status = 503, description = "NATS is away", body = ErrorBody),
    ),
)]
pub async fn retry(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(restart(&state, &path).await?))
}

/// Retries the failed song whose id is `raw`, as `POST /music/{id}/retry` does.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one, 409 for a song that has not failed or whose
/// original is gone, 503 when NATS is away.
pub(crate) async fn restart(state: &AppState, raw: &str) -> Result<Music, ApiError> {
    let music: MusicId = parse_id(raw, "music id")?;
    match song::retry(&state.store, music).await? {
        Ok(record) => Ok(Music::from(&record)),
        Err(RetryRefused::NotFound) => Err(ApiError::NotFound(format!("no music with id {music}"))),
        Err(RetryRefused::NotFailed(now)) => Err(ApiError::Conflict(format!(
            "only a failed song can be retried; song {music} is {}",
            now.as_str()
        ))),
        Err(RetryRefused::OriginalGone) => Err(ApiError::Conflict(format!(
            "the stored original of song {music} is gone: delete it and upload the file again"
        ))),
    }
}

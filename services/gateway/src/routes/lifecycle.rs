//! One song's life after its upload: `DELETE /music/{id}` and `POST /music/{id}/retry`.

use actix_web::{web, HttpResponse};
use dme_protocol::MusicId;
use dme_storage::song::{self, RetryRefused};

use super::music::{Music, UploadInFlight};
use super::parse_id;
use crate::{ApiError, AppState};

/// `DELETE /music/{id}`: removes the song (record, jobs, original, stems, mixes); its queued work
/// is dropped by the workers. Other songs are not touched. The same file can be uploaded again.
pub async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let music: MusicId = parse_id(&path, "music id")?;
    // Uploads of the same file through this gateway wait until the song is gone, so none of
    // them finds the original about to be deleted.
    let _turn = UploadInFlight::wait_for_turn(music).await;
    if !song::delete(&state.store, music).await? {
        return Err(ApiError::NotFound(format!("no music with id {music}")));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "music_id": music, "status": "deleted" })))
}

/// `POST /music/{id}/retry`: restarts a `failed` song from its stored original, keeping its
/// selections. 409 when the song has not failed, or its original is gone.
pub async fn retry(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let music: MusicId = parse_id(&path, "music id")?;
    match song::retry(&state.store, music).await? {
        Ok(record) => Ok(HttpResponse::Ok().json(Music::from(&record))),
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

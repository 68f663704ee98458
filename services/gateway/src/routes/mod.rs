//! Routes, one file per resource.

mod files;
mod jobs;
mod music;
mod system;

use actix_web::{web, HttpRequest};

use dme_protocol::records::MusicRecord;
use dme_protocol::MusicId;

use crate::{ApiError, AppState};

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Every path answers a method it does not take with a JSON 405, and an unknown path with a
    // JSON 404.
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    cfg.service(
        resource("/music")
            .route(web::post().to(music::upload))
            .route(web::get().to(music::list)),
    )
    .service(
        resource("/music/{music_id}")
            .route(web::get().to(music::progress))
            .route(web::post().to(music::select)),
    )
    .service(resource("/music/{music_id}/track/{track_id}").route(web::get().to(files::track)))
    .service(resource("/music/{music_id}/mix/{key}").route(web::get().to(files::mix)))
    .service(resource("/job").route(web::get().to(jobs::list)))
    .service(resource("/job/{job_id}").route(web::get().to(jobs::show)))
    .service(resource("/reset").route(web::post().to(system::reset)))
    .service(resource("/healthz").route(web::get().to(system::health)))
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
    }));
}

async fn method_not_allowed(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

/// Digits of the largest id: ids are below 2^53 = 9,007,199,254,740,992 (16 digits).
const MAX_ID_DIGITS: usize = 16;

/// Parses an id from the path: a positive integer below 2^53.
fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    let ok =
        !raw.is_empty() && raw.len() <= MAX_ID_DIGITS && raw.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| raw.parse().ok()).flatten().ok_or_else(|| {
        ApiError::BadRequest(format!("malformed {what}: expected a positive integer"))
    })
}

/// The record of the song whose id is `raw` (from the path).
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one.
async fn load_music(state: &AppState, raw: &str) -> Result<MusicRecord, ApiError> {
    let id: MusicId = parse_id(raw, "music id")?;
    state
        .store
        .music(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no music with id {id}")))
}

/// Base of absolute links: the configured public URL, else the request's scheme and host.
fn base_url(req: &HttpRequest, state: &AppState) -> String {
    match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    }
}

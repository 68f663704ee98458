//! Routes, one file per resource.

mod encodings;
pub(crate) mod events;
mod files;
pub(crate) mod jobs;
pub(crate) mod lifecycle;
pub(crate) mod models;
pub(crate) mod music;
mod openapi;
mod page;
mod peaks;
pub(crate) mod system;
mod workers;

use actix_web::{web, HttpRequest};

use dme_protocol::records::MusicRecord;
use dme_protocol::MusicId;

pub(crate) use encodings::Encodings;

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
            .route(web::post().to(music::select))
            .route(web::delete().to(lifecycle::delete)),
    )
    .service(resource("/music/{music_id}/retry").route(web::post().to(lifecycle::retry)))
    .service(resource("/music/{music_id}/events").route(web::get().to(events::song)))
    .service(resource("/events").route(web::get().to(events::all)))
    .service(
        resource("/music/{music_id}/track/{track_id}")
            .route(web::get().to(files::track))
            .route(web::head().to(files::track)),
    )
    .service(
        resource("/music/{music_id}/track/{track_id}/prefix")
            .route(web::get().to(files::prefix))
            .route(web::head().to(files::prefix)),
    )
    .service(
        resource("/music/{music_id}/track/{track_id}/peaks")
            .route(web::get().to(peaks::track))
            .route(web::head().to(peaks::track)),
    )
    .service(
        resource("/music/{music_id}/mix/{key}")
            .route(web::get().to(files::mix))
            .route(web::head().to(files::mix)),
    )
    .service(resource("/job").route(web::get().to(jobs::list)))
    .service(resource("/job/{job_id}").route(web::get().to(jobs::show)))
    .service(resource("/reset").route(web::post().to(system::reset)))
    .service(resource("/healthz").route(web::get().to(system::health)))
    .service(resource("/readyz").route(web::get().to(system::ready)))
    .service(resource("/metrics").route(web::get().to(system::metrics)))
    .service(resource("/workers").route(web::get().to(workers::list)))
    .service(resource("/models").route(web::get().to(models::list)))
    .service(resource("/").route(web::get().to(page::index)))
    .service(resource("/ui/{file}").route(web::get().to(page::asset)))
    .configure(|cfg| openapi::configure(cfg, resource))
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

/// Base of absolute links: the configured public URL; else the scheme and host a trusted proxy
/// forwarded (`Forwarded`, `X-Forwarded-Proto`, `X-Forwarded-Host`); else the request's own
/// scheme and `Host` header. Forwarded values from any other peer are ignored, and only `http`
/// and `https` links to a well-formed host are ever built.
fn base_url(req: &HttpRequest, state: &AppState) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let own_scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    let own_host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| is_host(h))
        .unwrap_or_else(|| req.app_config().host());
    let trusted = req.peer_addr().is_some_and(|peer| {
        let ip = peer.ip().to_canonical();
        state
            .config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    });
    if trusted {
        let info = req.connection_info();
        let scheme = info.scheme().to_ascii_lowercase();
        let scheme = match scheme.as_str() {
            "http" | "https" => scheme.as_str(),
            _ => own_scheme,
        };
        let host = Some(info.host()).filter(|h| is_host(h)).unwrap_or(own_host);
        return format!("{scheme}://{host}");
    }
    format!("{own_scheme}://{own_host}")
}

/// Longest host (with port) put into a link: a DNS name is at most 253 characters.
const MAX_HOST_CHARS: usize = 260;

/// Whether `host` is a host name or address with an optional port, and nothing else: no path,
/// user info, spaces or quotes can ride into a link.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_CHARS
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::is_host;

    #[test]
    fn hosts_are_names_or_addresses_with_a_port() {
        for good in ["dme.example.com", "127.0.0.1:8080", "[::1]:80", "a-b_c"] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.example/x",
            "a@b",
            "a b",
            "x\"y",
            "javascript:alert(1)//",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
        assert!(!is_host("evil.example/javascript"));
        assert!(!is_host(&"a".repeat(300)));
    }
}

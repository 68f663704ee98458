//! `/reset`, `/healthz`, `/readyz` and `/metrics`.

use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};

use crate::{ApiError, AppState};

/// `POST /reset`: delete every song, job, file and pending work item. Work in flight for deleted
/// songs is dropped by the workers.
#[utoipa::path(
    post,
    path = "/reset",
    tag = "system",
    operation_id = "reset",
    responses(
        (status = 200, description = "Everything is deleted", body = super::openapi::ResetDone),
        (status = 503, description = "NATS is away", body = super::openapi::ErrorBody),
    ),
)]
pub async fn reset(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(reset_all(&state).await?))
}

/// Deletes everything, as `POST /reset` does (the `dme-uploads` bucket of files NATS users put,
/// which are not songs yet, is left as it is).
///
/// # Errors
/// 503 when NATS is away.
pub(crate) async fn reset_all(state: &AppState) -> Result<serde_json::Value, ApiError> {
    state.store.reset().await?;
    tracing::warn!("system reset");
    Ok(serde_json::json!({ "status": "reset" }))
}

/// How long `/healthz` waits for the registered model: the read is one key from a bucket, done
/// in milliseconds while NATS is up; past this the answer goes without the model, so `/healthz`
/// stays prompt whatever NATS does.
const HEALTH_MODEL_WAIT: Duration = Duration::from_secs(2);

/// `GET /healthz`: alive. Always 200 `{"status": "ok", "model": ...}` while the process serves,
/// NATS or not; `model` is the model an upload without a choice gets (see `GET /models`), null
/// until one is registered, while several are and none is the default, or while it cannot be
/// read (NATS away: `/readyz` says so).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    operation_id = "health",
    responses(
        (status = 200, description = "Alive; the registered model when NATS can tell it, else null",
            body = super::openapi::Health),
    ),
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let connected = dme_storage::presence::connected(state.store.client());
    let model = if connected() {
        match tokio::time::timeout(HEALTH_MODEL_WAIT, super::models::choose(&state, None)).await {
            Ok(Ok(model)) => Some(model),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "model not read for /healthz");
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "model": model.map(|m| serde_json::json!({
        "name": m.name, "sources": m.sources, "segment": m.segment, "fixed": m.fixed, "fingerprint": m.fingerprint,
    })) }))
}

/// `GET /readyz`: ready to take songs: connected to NATS, with at least one model registered
/// (by a separator, or `dme models add`: songs wait in the queue until a separator of theirs
/// runs). 200 `{"status": "ready", "checks": {...}}`, else 503 with the failing checks.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    operation_id = "ready",
    responses(
        (status = 200, description = "Ready: every check passes", body = super::openapi::Readiness),
        (status = 503, description = "Not ready: the checks say which fails",
            body = super::openapi::Readiness),
    ),
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let readiness = dme_telemetry::metrics::Readiness::default();
    let nats = dme_storage::presence::connected(state.store.client());
    readiness.set("nats", nats);
    let model = matches!(state.store.models().await, Ok(models) if !models.is_empty());
    readiness.set("model", move || model);
    let (ready, body) = readiness.report();
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// How long one census of the store (every song record and the work stream's per-subject
/// counts, read from NATS) serves `/metrics`: its cost grows with the songs stored, so scrapes
/// closer together than this are answered from the gauges as last set, and a client scraping in
/// a loop cannot multiply the load on NATS. Prometheus scrapes every 15 s or more, so it always
/// sees a fresh census.
const CENSUS_MAX_AGE: Duration = Duration::from_secs(5);

/// When the last census began (whether or not it succeeded: a failing NATS is not asked more
/// often either). Held across a census, so concurrent scrapes wait for the one running instead
/// of starting their own. One per process, as the gauges it refreshes are.
static LAST_CENSUS: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);

/// Whether a census begun at `last` (none yet: `None`) is too old to serve a scrape at `now`.
fn census_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= CENSUS_MAX_AGE)
}

/// `GET /metrics`: every metric of this gateway in the Prometheus text format, with the gauges
/// read from NATS: work queued per kind, songs per state, counted at most once per
/// [`CENSUS_MAX_AGE`] (left as last read when NATS is away, which is logged).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    operation_id = "metrics",
    responses((status = 200, description = "Every metric, in the Prometheus text format 0.0.4",
        content_type = "text/plain", body = String)),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut last = LAST_CENSUS.lock().await;
    let now = Instant::now();
    if census_due(*last, now) {
        *last = Some(now);
        census(&state.store).await;
    }
    drop(last);
    HttpResponse::Ok()
        .content_type(dme_telemetry::metrics::CONTENT_TYPE)
        .body(dme_telemetry::metrics::render())
}

/// Sets the gauges from the store: work queued per kind, songs per state.
async fn census(store: &dme_storage::Store) {
    use dme_telemetry::metrics::{QUEUE_DEPTH, SONGS};
    match store.queued_by_kind().await {
        Ok(depths) => {
            for (kind, depth) in depths {
                metrics::gauge!(QUEUE_DEPTH, "kind" => kind).set(depth as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "queue depth not read for /metrics"),
    }
    match store.songs_by_state().await {
        Ok(songs) => {
            for (song_state, count) in songs {
                metrics::gauge!(SONGS, "state" => song_state).set(count as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "songs by state not read for /metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_census_serves_scrapes_until_it_is_max_age_old() {
        let start = Instant::now();
        assert!(census_due(None, start), "the first scrape counts");
        assert!(!census_due(Some(start), start));
        assert!(!census_due(
            Some(start),
            start + CENSUS_MAX_AGE - Duration::from_millis(1)
        ));
        assert!(census_due(Some(start), start + CENSUS_MAX_AGE));
    }
}

//! `/reset` and `/healthz`.

use actix_web::{web, HttpResponse};

use crate::{ApiError, AppState};

/// `POST /reset`: delete every song, job, file and pending work item. Work in flight for deleted
/// songs is dropped by the workers.
pub async fn reset(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.reset().await?;
    tracing::warn!("system reset");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "reset" })))
}

/// `GET /healthz`: NATS reachable, and which model the separators run.
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let model = state.store.model().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "model": model.map(|m| serde_json::json!({
        "name": m.name, "sources": m.sources, "segment": m.segment, "fixed": m.fixed, "fingerprint": m.fingerprint,
    })) })))
}

//! `/workers`: the fleet as NATS sees it.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use crate::{ApiError, AppState};

/// How long `GET /workers` gathers answers to `$SRV.INFO` and `$SRV.STATS`: services on one
/// NATS cluster answer within milliseconds; a quarter second leaves room for a loaded machine
/// and keeps the request quick. An instance that answers later is missing from that answer.
pub const DISCOVERY_WINDOW: Duration = Duration::from_millis(250);

/// `GET /workers`: every dme micro-service instance on the bus (splitter, mixer, separators,
/// gateways' `dme-api`), as a JSON array sorted by service, then id; each item
/// `{"service", "name", "id", "version", "description", "metadata", "started", "endpoints",
/// "stats"}`, where `stats` is the instance's live status (a separator's model, segments done,
/// failures and mean inference time).
///
/// # Errors
/// 503 when NATS is away.
#[utoipa::path(
    get,
    path = "/workers",
    tag = "system",
    operation_id = "workers",
    responses(
        (status = 200, description = "Every dme micro-service instance on the bus, sorted by \
            service, then id: `service`, `name`, `id`, `version`, `description`, `metadata`, \
            `started`, `endpoints` and `stats` (its live status)", body = Vec<Object>),
        (status = 503, description = "NATS is away", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let client = state.store.client();
    let instances = dme_storage::presence::discover(client, DISCOVERY_WINDOW).await?;
    Ok(HttpResponse::Ok().json(instances))
}

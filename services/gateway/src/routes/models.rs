//! `/models`: the models this deployment offers, and the choice of one for an upload.
//!
//! A model is offered once it is registered (by a separator running it, or by
//! `dme models add FILE` before any does); each model's separators form a pool that takes only
//! the segments cut for it. An upload names its model (`?model=` over HTTP, the model header or
//! field over NATS) by name or fingerprint; without one it gets the gateway's default
//! (`DME_DEFAULT_MODEL`), else the only model offered.

use actix_web::{web, HttpResponse};
use dme_protocol::records::ModelInfo;
use serde::Serialize;
use utoipa::ToSchema;

use super::workers::DISCOVERY_WINDOW;
use crate::{ApiError, AppState};

/// One model offered, as `GET /models` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OfferedModel {
    /// Its short name (an upload may name it by this, when no other model has the same name).
    #[schema(example = "htdemucs")]
    pub name: String,
    /// The first 16 hex digits of the model file's blake3 (an upload may name it by this).
    #[schema(example = "3f2a9c0d11b4e6a7")]
    pub fingerprint: String,
    /// Its stems, in output order: a song of this model gets one track each.
    #[schema(example = json!(["drums", "bass", "other", "vocals"]))]
    pub sources: Vec<String>,
    /// Its segment length in samples.
    pub segment: u32,
    /// Whether it takes exactly `segment` samples.
    pub fixed: bool,
    /// The sample rate it runs at.
    pub sample_rate: u32,
    /// Separators of this model answering on the bus now (its pool); 0 means its songs wait in
    /// the queue until one starts.
    pub separators: usize,
    /// Whether an upload that names no model gets this one.
    pub default: bool,
}

/// `GET /models`: every model offered, sorted by name, with its pool's live separators and
/// which one an upload without `?model=` gets.
///
/// # Errors
/// 503 when NATS is away.
#[utoipa::path(
    get,
    path = "/models",
    tag = "system",
    operation_id = "models",
    responses(
        (status = 200, description = "Every model offered: name, fingerprint, sources, segment, \
            sample rate, live separators, and whether it is the default", body = Vec<OfferedModel>),
        (status = 503, description = "NATS is away", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(offered(&state).await?))
}

/// Every model offered, as `GET /models` answers.
///
/// # Errors
/// 503 when NATS is away.
pub(crate) async fn offered(state: &AppState) -> Result<Vec<OfferedModel>, ApiError> {
    let models = state.store.models().await?;
    let instances = dme_storage::presence::discover(state.store.client(), DISCOVERY_WINDOW).await?;
    let live = live_fingerprints(&instances);
    let default = default_model(state, &models, &live)
        .ok()
        .map(|m| m.fingerprint);
    Ok(models
        .into_iter()
        .map(|m| {
            let separators = instances
                .iter()
                .filter(|i| {
                    i.service == "separator"
                        && i.metadata.get("fingerprint") == Some(&m.fingerprint)
                })
                .count();
            OfferedModel {
                default: default.as_deref() == Some(m.fingerprint.as_str()),
                separators,
                name: m.name,
                fingerprint: m.fingerprint,
                sources: m.sources,
                segment: m.segment,
                fixed: m.fixed,
                sample_rate: m.sample_rate,
            }
        })
        .collect())
}

/// The model an upload asking for `requested` (a name or a fingerprint; `None`: the default)
/// is separated with.
///
/// # Errors
/// 503 when no model is registered at all (or NATS is away); 400 when `requested` names no
/// model offered, or names several (the same name twice: name it by fingerprint), or when it
/// is `None` and several models are offered without a default; the message lists the models.
pub(crate) async fn choose(
    state: &AppState,
    requested: Option<&str>,
) -> Result<ModelInfo, ApiError> {
    let models = state.store.models().await?;
    if models.is_empty() {
        return Err(ApiError::Unavailable(
            "no model is registered yet: start a separator (or run `dme models add FILE`) \
             and retry"
                .into(),
        ));
    }
    match requested.map(str::trim).filter(|r| !r.is_empty()) {
        Some(wanted) => find(&models, wanted).map_err(ApiError::BadRequest),
        None if models.len() > 1 && state.config.default_model.is_none() => {
            let instances =
                dme_storage::presence::discover(state.store.client(), DISCOVERY_WINDOW).await?;
            default_model(state, &models, &live_fingerprints(&instances))
        }
        None => default_model(state, &models, &[]),
    }
}

/// The fingerprints of the models that live separators run (one entry per separator).
fn live_fingerprints(instances: &[dme_storage::presence::Instance]) -> Vec<String> {
    instances
        .iter()
        .filter(|i| i.service == "separator")
        .filter_map(|i| i.metadata.get("fingerprint").cloned())
        .collect()
}

/// The model an upload without a choice gets: `DME_DEFAULT_MODEL`, else the only one offered,
/// else the only one with live separators (`live`: their models' fingerprints), so a plain
/// `POST /music` keeps working after a model was replaced and its old pool stopped.
fn default_model(
    state: &AppState,
    models: &[ModelInfo],
    live: &[String],
) -> Result<ModelInfo, ApiError> {
    if let Some(name) = state.config.default_model.as_deref() {
        return find(models, name).map_err(|e| {
            ApiError::Unavailable(format!("the default model (DME_DEFAULT_MODEL): {e}"))
        });
    }
    let running: Vec<&ModelInfo> = models
        .iter()
        .filter(|m| live.contains(&m.fingerprint))
        .collect();
    if let [only] = models {
        return Ok(only.clone());
    }
    match running.as_slice() {
        [only] => Ok((*only).clone()),
        _ => Err(ApiError::BadRequest(format!(
            "several models are offered; choose one with ?model=<name or fingerprint>: {}",
            listed(models)
        ))),
    }
}

/// The one model of `models` whose fingerprint or name is `wanted`.
fn find(models: &[ModelInfo], wanted: &str) -> Result<ModelInfo, String> {
    if let Some(m) = models.iter().find(|m| m.fingerprint == wanted) {
        return Ok(m.clone());
    }
    let named: Vec<&ModelInfo> = models.iter().filter(|m| m.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no model {wanted:?} is offered; the models are: {}",
            listed(models)
        )),
        _ => Err(format!(
            "several models are named {wanted:?}; name one by its fingerprint: {}",
            listed(models)
        )),
    }
}

/// `models` as a person reads them: `name (fingerprint)`, comma-separated.
fn listed(models: &[ModelInfo]) -> String {
    models
        .iter()
        .map(|m| format!("{} ({})", m.name, m.fingerprint))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, fingerprint: &str) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            fingerprint: fingerprint.into(),
            sources: vec!["a".into()],
            segment: 44_100,
            fixed: false,
            sample_rate: 44_100,
        }
    }

    #[test]
    fn a_model_is_found_by_fingerprint_or_by_a_name_no_other_has() {
        let models = [model("four", "aa"), model("six", "bb"), model("six", "cc")];
        assert_eq!(find(&models, "aa").unwrap().name, "four");
        assert_eq!(find(&models, "four").unwrap().fingerprint, "aa");
        assert_eq!(find(&models, "cc").unwrap().name, "six");
        let twice = find(&models, "six").unwrap_err();
        assert!(
            twice.contains("fingerprint") && twice.contains("six (bb)"),
            "{twice}"
        );
        let unknown = find(&models, "eight").unwrap_err();
        assert!(
            unknown.contains("four (aa), six (bb), six (cc)"),
            "{unknown}"
        );
    }
}

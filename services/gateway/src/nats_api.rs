//! The JSON API over NATS: the `dme-api` micro service, so a NATS user submits and follows
//! songs with `nats req` and `nats sub` and no code of ours.
//!
//! Consumes: requests on `dme.api.<endpoint>` ([`subjects::API_ENDPOINTS`]), served by every
//! gateway in one queue group (each request is answered once); progress events from the
//! `api-events` consumer all gateways share. Produces: answers whose JSON is the HTTP API's,
//! errors as micro-service errors (headers `Nats-Service-Error` with the message and
//! `Nats-Service-Error-Code` with the HTTP status), and each progress event as JSON on
//! `dme.api.event.<music_id>` (the `data` of the HTTP event stream, with its `id`).
//! Guarantees: the same functions as HTTP answer (`routes::music`, `routes::jobs`,
//! `routes::lifecycle`, `routes::system`), so the two APIs cannot drift; a request whose reply
//! subject is not an inbox is dropped (an answer aimed at `$JS.API...` would act with the
//! gateway's rights); a panicking handler answers 500 and the endpoint goes on; requests
//! in hand per endpoint are bounded (the rest answered 503 at once); events are copied in order,
//! at least once.
//!
//! Upload: the body is the audio file (up to the server's `max_payload`), named by the
//! `Dme-File-Name` header; or `{"object": "<name>"}`, a file put in the `dme-uploads` object
//! store (any size up to the upload limit), deleted from it once it is a song. Songs uploaded
//! over NATS share one admission budget (the client key `nats`): NATS messages do not say who
//! sent them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web;
use actix_web::ResponseError;
use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use dme_protocol::messages::ProgressEvent;
use dme_protocol::subjects;
use dme_storage::Store;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use crate::routes::{events, jobs, lifecycle, models, music, system};
use crate::upload::{self, sanitise_file_name};
use crate::{ApiError, AppState, GatewayError};

/// Requests one endpoint serves at once (per gateway): reads of records are cheap; this keeps a
/// flood from running unbounded tasks.
const MAX_CONCURRENT_REQUESTS: usize = 32;

/// Uploads one gateway takes at once over NATS: each spools up to the upload limit to disk and
/// probes it, as an HTTP upload does.
const MAX_CONCURRENT_UPLOADS: usize = 4;

/// Requests an endpoint holds per request it serves at once (running or waiting their turn);
/// beyond that a request is answered 503 at once, so a flood is drained from the subscription
/// instead of piling up in it (up to 8 MB each).
const WAITING_PER_SLOT: usize = 4;

/// How long a stopping gateway lets the requests in hand finish.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Events older than this when a gateway copies them are not copied: after the gateways were
/// all down, a live subscriber wants what happens now, not a burst of the past (the HTTP event
/// stream replays the past to whoever asks for it).
const COPY_MAX_AGE: Duration = Duration::from_secs(60);

/// Pause before the event copier tries again after NATS failed.
const COPY_RETRY: Duration = Duration::from_secs(1);

/// Admission's client key for uploads over NATS.
const NATS_CLIENT: &str = "nats";

/// What each endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Upload,
    List,
    Get,
    Select,
    Delete,
    Retry,
    JobList,
    JobGet,
    ModelList,
    Reset,
}

impl Endpoint {
    /// The endpoint named `name` in [`subjects::API_ENDPOINTS`].
    fn named(name: &str) -> Option<Endpoint> {
        Some(match name {
            "music-upload" => Endpoint::Upload,
            "music-list" => Endpoint::List,
            "music-get" => Endpoint::Get,
            "music-select" => Endpoint::Select,
            "music-delete" => Endpoint::Delete,
            "music-retry" => Endpoint::Retry,
            "job-list" => Endpoint::JobList,
            "job-get" => Endpoint::JobGet,
            "model-list" => Endpoint::ModelList,
            "reset" => Endpoint::Reset,
            _ => return None,
        })
    }
}

/// The running API: the micro service, its endpoints' tasks and the event copier (all stopped
/// when it is dropped).
pub(crate) struct NatsApi {
    service: service::Service,
    endpoints: Vec<AbortOnDropHandle<()>>,
    _copier: AbortOnDropHandle<()>,
}

/// Starts the `dme-api` micro service on the gateway's connection; answers carry links under
/// `base` (the gateway's public URL). The uploads bucket is created for NATS users when the
/// server has room for it; without it, only `{"object": ...}` uploads are refused (503).
///
/// # Errors
/// When NATS refuses the service or an endpoint's subscription.
pub(crate) async fn start(
    state: web::Data<AppState>,
    base: String,
) -> Result<NatsApi, GatewayError> {
    if let Err(e) = state.store.upload_bucket().await {
        tracing::warn!(
            error = %dme_storage::error_chain(&e),
            bucket = dme_protocol::streams::UPLOAD_BUCKET,
            "the uploads bucket cannot be created: uploads over NATS must carry the file inline"
        );
    }
    let client = state.store.client().clone();
    let service = client
        .service_builder()
        .description("dme: upload songs, follow them, choose stems to mix (JSON)")
        .metadata([("http".to_string(), base.clone())].into())
        .start(subjects::API_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(GatewayError::NatsApi)?;
    let group = service.group(subjects::API_PREFIX);
    let mut endpoints = Vec::new();
    for (name, subject) in subjects::API_ENDPOINTS {
        let endpoint = Endpoint::named(name).expect("every API endpoint has a handler");
        let requests = group
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(GatewayError::NatsApi)?;
        let api = Api {
            state: state.clone(),
            base: base.clone(),
        };
        endpoints.push(AbortOnDropHandle::new(tokio::spawn(
            api.serve_endpoint(endpoint, requests),
        )));
    }
    let copier = tokio::spawn(copy_events(state.store.clone(), base));
    tracing::info!(
        service = subjects::API_SERVICE,
        prefix = subjects::API_PREFIX,
        "JSON API serving over NATS"
    );
    Ok(NatsApi {
        service,
        endpoints,
        _copier: AbortOnDropHandle::new(copier),
    })
}

impl NatsApi {
    /// Stops taking requests and lets those in hand finish, for [`STOP_GRACE`] at most.
    pub(crate) async fn stop(self) {
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "the NATS API did not stop cleanly");
        }
        let finished = futures::future::join_all(self.endpoints);
        if tokio::time::timeout(STOP_GRACE, finished).await.is_err() {
            tracing::warn!("NATS API requests still in hand at shutdown were dropped");
        }
    }
}

/// What a request's handler needs.
#[derive(Clone)]
struct Api {
    state: web::Data<AppState>,
    base: String,
}

impl Api {
    /// Serves `endpoint`'s requests until the service stops: a bounded number at once, a bounded
    /// number waiting, and the rest answered 503 at once.
    async fn serve_endpoint(self, endpoint: Endpoint, mut requests: service::endpoint::Endpoint) {
        let running = if endpoint == Endpoint::Upload {
            MAX_CONCURRENT_UPLOADS
        } else {
            MAX_CONCURRENT_REQUESTS
        };
        let run_slots = Arc::new(Semaphore::new(running));
        let hold_slots = Arc::new(Semaphore::new(running * WAITING_PER_SLOT));
        let mut in_hand = JoinSet::new();
        while let Some(request) = requests.next().await {
            while in_hand.try_join_next().is_some() {}
            let Ok(held) = hold_slots.clone().try_acquire_owned() else {
                self.refuse_busy(endpoint, request, running * WAITING_PER_SLOT)
                    .await;
                continue;
            };
            let (api, run_slots) = (self.clone(), run_slots.clone());
            in_hand.spawn(async move {
                let _running = run_slots.acquire_owned().await;
                api.serve(endpoint, request).await;
                drop(held);
            });
        }
        while in_hand.join_next().await.is_some() {}
    }

    /// Answers 503 to a request that found its endpoint full.
    async fn refuse_busy(&self, endpoint: Endpoint, request: service::Request, held: usize) {
        if !subjects::answerable(request.message.reply.as_deref()) {
            return;
        }
        let busy = service::error::Error {
            status: format!(
                "this gateway holds {held} such requests already: retry in a few seconds"
            ),
            code: 503,
        };
        if let Err(e) = request.respond(Err(busy)).await {
            tracing::warn!(error = %e, ?endpoint, "a NATS API answer was not sent");
        }
    }

    /// Answers one request.
    async fn serve(&self, endpoint: Endpoint, request: service::Request) {
        if !subjects::answerable(request.message.reply.as_deref()) {
            tracing::warn!(
                subject = %request.message.subject,
                reply = ?request.message.reply,
                "a request whose reply subject is not an inbox dropped"
            );
            return;
        }
        let answer = AssertUnwindSafe(self.answer(endpoint, &request.message))
            .catch_unwind()
            .await
            .unwrap_or(Err(ApiError::Panicked));
        let response = answer.map_err(|e| {
            let code = e.status_code().as_u16();
            if code >= 500 {
                // The same log line an HTTP answer's 500 gets.
                let _ = e.error_response();
            }
            service::error::Error {
                status: e.to_string(),
                code: usize::from(code),
            }
        });
        if let Err(e) = request.respond(response).await {
            tracing::warn!(error = %e, ?endpoint, "a NATS API answer was not sent");
        }
    }

    /// The JSON answer to `message` at `endpoint`.
    async fn answer(
        &self,
        endpoint: Endpoint,
        message: &async_nats::Message,
    ) -> Result<Bytes, ApiError> {
        let state = &self.state;
        let body = &message.payload;
        match endpoint {
            Endpoint::Upload => json(&self.upload(message).await?),
            Endpoint::List => json(&music::all(state).await?),
            Endpoint::Get => {
                let id = id_field(body, "music_id")?;
                json(&music::progress_of(state, &id, &self.base).await?)
            }
            Endpoint::Select => {
                let (id, selection) = selection(body)?;
                json(&music::choose(state, &id, &selection).await?)
            }
            Endpoint::Delete => {
                json(&lifecycle::remove(state, &id_field(body, "music_id")?).await?)
            }
            Endpoint::Retry => {
                json(&lifecycle::restart(state, &id_field(body, "music_id")?).await?)
            }
            Endpoint::JobList => json(&jobs::ids(state).await?),
            Endpoint::JobGet => json(&jobs::job_of(state, &id_field(body, "job_id")?).await?),
            Endpoint::ModelList => json(&models::offered(state).await?),
            Endpoint::Reset => json(&system::reset_all(state).await?),
        }
    }

    /// `dme.api.music.upload`: the body is the file, or names one in the uploads bucket. The
    /// model is the [`subjects::MODEL_HEADER`] header's (or the bucket form's `model` field),
    /// else the default, as `POST /music?model=` chooses it.
    async fn upload(&self, message: &async_nats::Message) -> Result<music::Music, ApiError> {
        let state = &self.state;
        let body = &message.payload;
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(subjects::MODEL_HEADER))
            .map(|v| v.as_str().to_string());
        if body.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "empty upload: send the audio file as the body (named by the {} header), or \
                 {{\"object\": \"<name>\"}} for a file put in the {} bucket",
                subjects::FILE_NAME_HEADER,
                dme_protocol::streams::UPLOAD_BUCKET
            )));
        }
        // No audio format starts with `{`: such a body names a file in the bucket.
        if body.first() == Some(&b'{') {
            let (name, field) = object_field(body)?;
            let model = models::choose(state, field.or(header).as_deref()).await?;
            let uploads = state.store.upload_bucket().await.map_err(|e| {
                tracing::warn!(error = %dme_storage::error_chain(&e), "the uploads bucket is unavailable");
                ApiError::Unavailable(format!(
                    "the {} bucket is unavailable: send the file inline",
                    dme_protocol::streams::UPLOAD_BUCKET
                ))
            })?;
            let Some(reader) = uploads.open(&name).await? else {
                return Err(ApiError::NotFound(format!(
                    "no file {name:?} in the {0} bucket: put it there first (nats object put {0} FILE)",
                    dme_protocol::streams::UPLOAD_BUCKET
                )));
            };
            let (size, limit) = (reader.size(), state.config.max_upload_bytes);
            if size > limit {
                return Err(ApiError::TooLarge(format!(
                    "{name:?} holds {size} bytes; the upload limit is {limit}"
                )));
            }
            let content = tokio_util::io::ReaderStream::new(reader).map(|chunk| {
                chunk.map_err(|e| {
                    ApiError::Unavailable(format!("reading the uploaded file failed: {e}"))
                })
            });
            let spooled = upload::spool(content, sanitise_file_name(&name), state).await?;
            let song = music::store(state, spooled, NATS_CLIENT.into(), &model).await?;
            uploads.delete(&name).await?;
            return Ok(song);
        }
        let file_name = message
            .headers
            .as_ref()
            .and_then(|h| h.get(subjects::FILE_NAME_HEADER))
            .map(|v| sanitise_file_name(v.as_str()))
            .unwrap_or_default();
        let model = models::choose(state, header.as_deref()).await?;
        let content = futures::stream::iter([Ok::<_, ApiError>(body.clone())]);
        let spooled = upload::spool(content, file_name, state).await?;
        music::store(state, spooled, NATS_CLIENT.into(), &model).await
    }
}

/// `value` as a JSON answer.
fn json(value: &impl Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.into()))
}

/// The JSON object of a request body.
///
/// # Errors
/// 400 when the body is not a JSON object; `form` says what it should be.
fn object(body: &[u8], form: &str) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::BadRequest(format!("the body must be {form}"))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body must be {form}: {e}"
        ))),
    }
}

/// The id in field `field` of a `{"<field>": <id>}` body (a number, or a string of digits), as
/// the text an HTTP path would carry: the HTTP handlers then check it the same way.
///
/// # Errors
/// 400 when the body or the field is missing or malformed, or other fields are there.
fn id_field(body: &[u8], field: &str) -> Result<String, ApiError> {
    let form = format!("{{\"{field}\": <id>}}");
    let fields = object(body, &form)?;
    if let Some(other) = fields.keys().find(|k| *k != field) {
        return Err(ApiError::BadRequest(format!(
            "unknown field `{other}`: the body must be {form}"
        )));
    }
    match fields.get(field) {
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        _ => Err(ApiError::BadRequest(format!("the body must be {form}"))),
    }
}

/// The song and the selection of a `dme.api.music.select` body: `{"music_id": <id>, "tracks":
/// [...]}`, the rest being the HTTP selection's object form.
///
/// # Errors
/// 400 when the body is not such an object.
fn selection(body: &[u8]) -> Result<(String, Vec<u8>), ApiError> {
    let form = r#"{"music_id": <id>, "tracks": [<id or name, or {"track_id": <id or name>, "gain_db": <dB>}>, ...]}"#;
    let mut fields = object(body, form)?;
    let id = match fields.remove("music_id") {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(ApiError::BadRequest(format!("the body must be {form}"))),
    };
    let rest = serde_json::to_vec(&fields).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((id, rest))
}

/// The file name and the model (if any) of a `{"object": "<name>", "model": "<model>"}`
/// upload body.
///
/// # Errors
/// 400 for any other body.
fn object_field(body: &[u8]) -> Result<(String, Option<String>), ApiError> {
    let form = r#"the audio file itself, or {"object": "<name in the uploads bucket>"} (with an optional "model")"#;
    let fields = object(body, form)?;
    let model = match fields.get("model") {
        None => None,
        Some(serde_json::Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::BadRequest(format!("the body must be {form}"))),
    };
    let allowed = 1 + usize::from(model.is_some());
    match (fields.len(), fields.get("object")) {
        (n, Some(serde_json::Value::String(name))) if !name.is_empty() && n == allowed => {
            Ok((name.clone(), model))
        }
        _ => Err(ApiError::BadRequest(format!("the body must be {form}"))),
    }
}

/// Copies every progress event, as JSON, onto its song's `dme.api.event.<music_id>` subject, for
/// as long as the gateway runs.
async fn copy_events(store: Store, base: String) {
    loop {
        match store.progress_to_copy().await {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => copy_event(&store, &base, message).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "the JSON event copier lost NATS");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the JSON event copier cannot start"),
        }
        tokio::time::sleep(COPY_RETRY).await;
    }
}

/// Publishes one event's JSON copy (unless it is stale), then acks it.
async fn copy_event(store: &Store, base: &str, message: async_nats::jetstream::Message) {
    let Ok(info) = message.info() else {
        tracing::warn!("a progress event without its stream position skipped");
        return;
    };
    let seq = info.stream_sequence;
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let age_ns = now_ns - info.published.unix_timestamp_nanos();
    if age_ns <= COPY_MAX_AGE.as_nanos() as i128 {
        match dme_protocol::decode::<ProgressEvent>(&message.payload) {
            Ok(event) => {
                let subject = subjects::api_event(event.music_id);
                let json = events::event_json(seq, event, base);
                if let Err(e) = store.client().publish(subject, json.into()).await {
                    tracing::warn!(error = %e, seq, "a JSON event copy was not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, seq, "an undecodable progress event skipped"),
        }
    }
    if let Err(e) = message.ack().await {
        tracing::warn!(error = %e, seq, "a copied progress event was not acked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_a_handler() {
        for (name, _) in subjects::API_ENDPOINTS {
            assert!(Endpoint::named(name).is_some(), "{name}");
        }
    }

    #[test]
    fn bodies_name_their_song_as_the_http_path_would() {
        assert_eq!(id_field(br#"{"music_id": 42}"#, "music_id").unwrap(), "42");
        assert_eq!(
            id_field(br#"{"music_id": "42"}"#, "music_id").unwrap(),
            "42"
        );
        for bad in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"music_id": 1, "x": 2}"#,
            br#"{"music_id": null}"#,
        ] {
            let e = id_field(bad, "music_id").expect_err("refused");
            assert!(matches!(e, ApiError::BadRequest(_)), "{e}");
        }
        let (id, rest) = selection(br#"{"music_id": 7, "tracks": ["vocals", 3]}"#).unwrap();
        assert_eq!(id, "7");
        assert_eq!(rest, br#"{"tracks":["vocals",3]}"#);
        assert_eq!(
            object_field(br#"{"object": "a.mp3"}"#).unwrap(),
            ("a.mp3".to_string(), None)
        );
        assert_eq!(
            object_field(br#"{"object": "a.mp3", "model": "six"}"#).unwrap(),
            ("a.mp3".to_string(), Some("six".to_string()))
        );
        assert!(object_field(br#"{"object": "a", "model": 1}"#).is_err());
        assert!(object_field(br#"{"object": ""}"#).is_err());
        assert!(object_field(br#"{"object": "a", "b": 1}"#).is_err());
    }
}

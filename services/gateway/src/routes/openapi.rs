//! `GET /openapi.json`: the API described from the code (utoipa: each handler's
//! `#[utoipa::path]` and each answer's `ToSchema`), a superset of the original contract
//! (`docs/api/original-contract.yaml`: every path, method, parameter, status and response field
//! of it kept); `GET /docs`: Swagger UI reading it, its files embedded in the binary (the
//! `vendored` build of `utoipa-swagger-ui`), so it renders with no network, and served under a
//! Content-Security-Policy that lets the browser reach this origin only.
//!
//! The types below are documentation only: the shapes of bodies that the handlers read or write
//! by hand (the selection that [`super::music::parse_selection`] reads, the JSON error of
//! [`crate::ApiError`], the small answers built with `json!`).

#![allow(
    dead_code,
    reason = "documentation-only types: described to OpenAPI, never built, since their \
              handlers read or write these shapes by hand"
)]

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::{events, files, jobs, lifecycle, models, music, page, peaks, system, workers};

/// Where the document is served, and where the docs page reads it.
pub(super) const OPENAPI_PATH: &str = "/openapi.json";

/// Where the docs page is served.
pub(super) const DOCS_PATH: &str = "/docs";

/// Swagger UI's policy: its files, styles and the document from this origin only (its React
/// views set inline styles, and its icons are `data:` SVGs); no script from anywhere else, no
/// request to any other origin (so neither the browser nor the page needs a network beyond the
/// gateway), and nothing may frame it.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
    font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The gateway's API. `info.version` is the crate's version (utoipa's default, from Cargo).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "dme",
        description = "The HTTP API of dme, a distributed music stem separator: the original \
            contract of the Distributed Music Editor (`docs/api/original-contract.yaml`: \
            `/music`, `/music/{music_id}`, `/job`, `/job/{job_id}`, `/reset`, with the same \
            paths, JSON shapes and status codes) and what dme adds beside it: downloads in \
            several formats with ranges and validators, waveform peaks, live events as \
            Server-Sent Events, gains in a selection, deleting and retrying a song, health. \
            Every error is a JSON `{\"error\": \"...\"}` with a status that says whose fault \
            it is. The same JSON bodies are served over NATS by the `dme-api` micro service \
            (see README.md)."
    ),
    paths(
        music::upload,
        music::list,
        music::progress,
        music::select,
        lifecycle::delete,
        lifecycle::retry,
        events::song,
        events::all,
        files::track,
        files::prefix,
        peaks::track,
        files::mix,
        jobs::list,
        jobs::show,
        system::reset,
        system::health,
        system::ready,
        system::metrics,
        workers::list,
        models::list,
        openapi_json,
        docs,
        page::index,
        page::asset,
    ),
    // Schemas named only by parameters or by prose, which utoipa does not collect itself.
    components(schemas(ErrorBody, DownloadFormat, events::EventData)),
    modifiers(&HeadOperationIds),
    tags(
        (name = "music", description = "Songs: upload, progress, selections, downloads, events"),
        (name = "system", description = "Jobs, reset, health and this description"),
    )
)]
pub(crate) struct ApiDoc;

/// Gives each `HEAD` operation an id of its own: a handler that answers `GET` and `HEAD` is one
/// utoipa operation under both methods, and OpenAPI wants every operation id unique.
struct HeadOperationIds;

impl Modify for HeadOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            if let Some(id) = item.head.as_mut().and_then(|h| h.operation_id.as_mut()) {
                id.push_str("Head");
            }
        }
    }
}

/// The document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"the API description failed: {e}\"}}"))
});

/// Mounts `GET /openapi.json` and the docs page (`/docs` redirects to `/docs/`, whose files
/// are Swagger UI's). `resource` is the routes' resource maker (a JSON 405 for other methods).
pub(super) fn configure(
    cfg: &mut web::ServiceConfig,
    resource: impl Fn(&str) -> actix_web::Resource,
) {
    let ui = SwaggerUi::new("/{_:.*}").config(
        Config::from(OPENAPI_PATH)
            // Swagger UI would otherwise show a badge fetched from swagger.io.
            .validator_url("none")
            .display_operation_id(true),
    );
    cfg.service(resource(OPENAPI_PATH).route(web::get().to(openapi_json)))
        .service(resource(DOCS_PATH).route(web::get().to(docs)))
        .service(
            web::scope(DOCS_PATH)
                .wrap(
                    DefaultHeaders::new()
                        .add((
                            header::CONTENT_SECURITY_POLICY,
                            DOCS_CONTENT_SECURITY_POLICY,
                        ))
                        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                        .add((header::REFERRER_POLICY, "no-referrer")),
                )
                .service(ui),
        );
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((
        status = 200,
        description = "The OpenAPI 3.1 document of this API (what `/docs` renders)",
        content_type = "application/json",
        body = Object,
    )),
)]
pub(super) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(DOCUMENT.as_str())
}

/// `GET /docs`: the docs page, at `/docs/` (its files are relative to it).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "system",
    responses(
        (
            status = 308,
            description = "To `/docs/`: Swagger UI rendering `/openapi.json`, served by the \
                gateway itself (no CDN: it works with no network)",
            headers(("Location" = String, description = "`/docs/`")),
        ),
    ),
)]
pub(super) async fn docs() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}

/// Every error: a status that says whose fault it is (4xx the request's, 5xx the server's),
/// with the reason.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Why, in a sentence. An internal failure (500) says `internal error` only; its cause is
    /// logged.
    #[schema(example = "no music with id 123")]
    error: String,
}

/// Where a song is, as `GET /music` and `GET /music/{music_id}` show it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SongState {
    /// Uploaded, waiting for the splitter.
    Queued,
    /// Cut into segments, being separated.
    Separating,
    /// Stems assembled; a selection is being mixed.
    Mixing,
    /// Stems assembled and every selection mixed.
    Done,
    /// Gave up: `error` says why (`POST /music/{music_id}/retry` starts it again).
    Failed,
    /// No change for the stall time: no separator may be running (`GET /music/{music_id}` and
    /// the events only).
    Stalled,
}

/// Where a job (one segment's separation) is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobState {
    /// In the queue, or waiting for its turn in the song's window.
    Queued,
    /// A separator has it.
    Running,
    /// Its stems are stored.
    Done,
    /// Given up.
    Failed,
}

/// What an event says changed (its SSE `event:` name, and `kind` in its data).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EventKind {
    /// Progress (segments separated, state).
    Progress,
    /// The stems are assembled: `instruments` has their links.
    Stem,
    /// A selection is mixed: `final` has its link.
    Mix,
    /// The song failed: `error` says why.
    Failed,
}

/// An audio file's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct AudioBytes(Vec<u8>);

/// A download's format.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DownloadFormat {
    /// 16-bit PCM WAV (the default; `wav16` too).
    Wav,
    /// 32-bit float WAV: the samples as stored.
    Wav32f,
    /// FLAC, 16-bit.
    Flac,
    /// MP3.
    Mp3,
}

/// `POST /music` as a form: the file is the first part with a file name (or named `file`);
/// other fields are read past.
#[derive(Deserialize, ToSchema)]
pub(crate) struct UploadForm {
    /// The audio file (MP3, WAV, FLAC, OGG, M4A, ...); its name is kept as the song's name
    /// when its tags have no title.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// A track in a selection: its id, or its stem name (`"vocals"`, any case).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum TrackRef {
    /// A track id (from `tracks` of the song).
    #[schema(example = 3164892)]
    Id(u64),
    /// A stem name.
    #[schema(example = "vocals")]
    Name(String),
}

/// A track in a selection with its gain.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrackGain {
    /// The track.
    track_id: TrackRef,
    /// Its gain in dB, from -60 to +12, rounded to 0.1 dB (0 when left out).
    #[serde(default)]
    #[schema(value_type = f64, minimum = -60.0, maximum = 12.0, example = -3.5)]
    gain_db: Option<f64>,
}

/// One entry of `tracks` in a selection with gains.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum SelectedTrack {
    /// A track at 0 dB.
    Track(TrackRef),
    /// A track at a gain.
    WithGain(TrackGain),
}

/// A selection with gains.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GainedSelection {
    /// The tracks to mix, each once (twice at one gain counts once; at two gains is a 400).
    #[schema(min_items = 1)]
    tracks: Vec<SelectedTrack>,
}

/// The body of `POST /music/{music_id}`: the tracks to mix. The original contract's array of
/// track ids (each at 0 dB), which may also name stems, or `{"tracks": [...]}` whose entries
/// may carry a gain. A track left out is not in the mix; an unknown field is a 400.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Selection {
    /// `[3133121, 3164892]` or `["vocals", "drums"]`.
    Tracks(Vec<TrackRef>),
    /// `{"tracks": [{"track_id": 3133121, "gain_db": -3}, "drums"]}`.
    WithGains(GainedSelection),
}

/// The answer to `DELETE /music/{music_id}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Deleted {
    /// The song deleted.
    #[schema(format = Int64, minimum = 0)]
    music_id: u64,
    /// `deleted`.
    #[schema(example = "deleted")]
    status: String,
}

/// The answer to `POST /reset`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ResetDone {
    /// `reset`.
    #[schema(example = "reset")]
    status: String,
}

/// The answer to `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready`, or `not ready`.
    #[schema(example = "ready")]
    status: String,
    /// Each check (`nats`: connected; `model`: at least one model is registered), and whether
    /// it passes.
    #[schema(example = json!({"nats": true, "model": true}))]
    checks: std::collections::BTreeMap<String, bool>,
}

/// The model an upload without a choice gets (see `GET /models`), as `GET /healthz` shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct HealthModel {
    /// Its short name.
    name: String,
    /// Its stems, in output order.
    #[schema(example = json!(["drums", "bass", "other", "vocals"]))]
    sources: Vec<String>,
    /// Its segment length in samples.
    segment: u32,
    /// Whether it takes exactly `segment` samples.
    fixed: bool,
    /// The first 16 hex digits of the model file's blake3.
    fingerprint: String,
}

/// The answer to `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    #[schema(example = "ok")]
    status: String,
    /// The model an upload without a choice gets (`DME_DEFAULT_MODEL`, else the only one
    /// registered); null until one is registered, while several are and none is the default
    /// (see `GET /models`), or while NATS cannot be read.
    #[schema(required = true)]
    model: Option<HealthModel>,
}

#[cfg(test)]
mod tests {
    use actix_web::test::{self as http, TestRequest};
    use actix_web::App;
    use serde_json::Value;

    use super::*;

    /// The original contract, as the repository keeps it.
    const CONTRACT: &str = include_str!("../../../../docs/api/original-contract.yaml");

    /// Statuses of the contract that dme answers otherwise, each with why: both are the
    /// contract's "Invalid input", which dme answers with 400, 413 or 415 and the reason; its
    /// 405 is a method the path does not take (or, as the contract has it for a selection, a
    /// track the song does not have).
    const STATUSES_ANSWERED_OTHERWISE: &[(&str, &str, &str)] =
        &[("/music", "post", "405"), ("/job", "get", "405")];

    /// Fields of the contract's answers that are there only sometimes, each with why: `final`
    /// links the latest selection's mix, so there is none before a song's first mix.
    const FIELDS_SOMETIMES_THERE: &[&str] = &["final"];

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn contract() -> Value {
        yaml_serde::from_str(CONTRACT).expect("the contract is YAML")
    }

    fn document() -> Value {
        serde_json::from_str(&DOCUMENT).expect("the document is JSON")
    }

    /// `schema` with its `$ref` (a local one) followed, in `doc`.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        let mut schema = schema;
        for _ in 0..32 {
            let Some(target) = schema.get("$ref").and_then(Value::as_str) else {
                return schema;
            };
            let pointer = target.strip_prefix('#').expect("a local $ref");
            schema = doc.pointer(pointer).expect("every $ref resolves");
        }
        panic!("a $ref loop at {schema}")
    }

    /// The alternatives a schema allows: its `oneOf`/`anyOf`, else itself.
    fn alternatives<'a>(doc: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
        let schema = resolve(doc, schema);
        match schema.get("oneOf").or_else(|| schema.get("anyOf")) {
            Some(Value::Array(all)) => all
                .iter()
                .flat_map(|s| alternatives(doc, s))
                .filter(|s| s.get("type") != Some(&Value::from("null")))
                .collect(),
            _ => vec![schema],
        }
    }

    fn types(schema: &Value) -> Vec<&str> {
        match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `ours` (a schema of the code's document) has the shape of `theirs` (of the
    /// contract): the same type, every property the contract names (required in ours, when
    /// `answer`, unless it is one of [`FIELDS_SOMETIMES_THERE`]), items alike. An answer may
    /// narrow the contract's alternatives (every one of ours is one of theirs); a request body
    /// may widen them (every one of theirs is one of ours).
    fn same_shape(
        contract: &Value,
        theirs: &Value,
        doc: &Value,
        ours: &Value,
        answer: bool,
        at: &str,
    ) -> Result<(), String> {
        let their_alts = alternatives(contract, theirs);
        let our_alts = alternatives(doc, ours);
        let fits = |t: &Value, o: &Value| shape_of_one(contract, t, doc, o, answer, at);
        let errors: Vec<String> = if answer {
            our_alts
                .iter()
                .filter_map(|o| {
                    let tries: Vec<_> = their_alts.iter().map(|t| fits(t, o)).collect();
                    (!tries.iter().any(Result::is_ok)).then(|| {
                        tries
                            .into_iter()
                            .filter_map(Result::err)
                            .collect::<Vec<_>>()
                    })
                })
                .flatten()
                .collect()
        } else {
            their_alts
                .iter()
                .filter_map(|t| {
                    let tries: Vec<_> = our_alts.iter().map(|o| fits(t, o)).collect();
                    (!tries.iter().any(Result::is_ok)).then(|| {
                        tries
                            .into_iter()
                            .filter_map(Result::err)
                            .collect::<Vec<_>>()
                    })
                })
                .flatten()
                .collect()
        };
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn shape_of_one(
        contract: &Value,
        theirs: &Value,
        doc: &Value,
        ours: &Value,
        answer: bool,
        at: &str,
    ) -> Result<(), String> {
        let (their_types, our_types) = (types(theirs), types(ours));
        if let Some(t) = their_types.iter().find(|t| !our_types.contains(t)) {
            return Err(format!("{at}: the contract's type {t}, ours {our_types:?}"));
        }
        if let Some(items) = theirs.get("items") {
            let our_items = ours
                .get("items")
                .ok_or_else(|| format!("{at}: an array in the contract, no items in ours"))?;
            same_shape(contract, items, doc, our_items, answer, &format!("{at}[]"))?;
        }
        let Some(Value::Object(properties)) = theirs.get("properties") else {
            return Ok(());
        };
        let our_properties = ours.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = ours
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, their_property) in properties {
            let at = format!("{at}.{name}");
            let ours = our_properties
                .and_then(|p| p.get(name))
                .ok_or_else(|| format!("{at}: missing"))?;
            if answer
                && !required.contains(&name.as_str())
                && !FIELDS_SOMETIMES_THERE.contains(&name.as_str())
            {
                return Err(format!("{at}: not required"));
            }
            same_shape(contract, their_property, doc, ours, answer, &at)?;
        }
        Ok(())
    }

    /// What the code's document lacks of the contract, one line each.
    fn missing_from(doc: &Value) -> Vec<String> {
        let contract = contract();
        let mut missing = Vec::new();
        let paths = contract["paths"]
            .as_object()
            .expect("the contract has paths");
        for (path, item) in paths {
            for (method, theirs) in item.as_object().expect("a path item") {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let at = format!("{} {path}", method.to_uppercase());
                let Some(ours) = doc["paths"].get(path).and_then(|p| p.get(method)) else {
                    missing.push(format!("{at}: no such operation"));
                    continue;
                };
                missing.extend(
                    missing_from_operation(&contract, theirs, doc, ours, path, method)
                        .into_iter()
                        .map(|m| format!("{at}: {m}")),
                );
            }
        }
        missing
    }

    fn missing_from_operation(
        contract: &Value,
        theirs: &Value,
        doc: &Value,
        ours: &Value,
        path: &str,
        method: &str,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        let empty = Vec::new();
        let our_parameters = ours["parameters"].as_array().unwrap_or(&empty);
        for parameter in theirs["parameters"].as_array().unwrap_or(&empty) {
            let (name, place) = (&parameter["name"], &parameter["in"]);
            let Some(our) = our_parameters
                .iter()
                .map(|p| resolve(doc, p))
                .find(|p| p["name"] == *name && p["in"] == *place)
            else {
                missing.push(format!("parameter {name} in {place}"));
                continue;
            };
            if parameter["required"] == Value::Bool(true) && our["required"] != Value::Bool(true) {
                missing.push(format!("parameter {name} is not required"));
            }
            if let Err(e) = same_shape(
                contract,
                &parameter["schema"],
                doc,
                &our["schema"],
                false,
                &format!("parameter {name}"),
            ) {
                missing.push(e);
            }
        }
        if let Some(body) = theirs.get("requestBody") {
            let body = resolve(contract, body);
            let our_body = ours.get("requestBody").map(|b| resolve(doc, b));
            for (content_type, media) in body["content"].as_object().expect("content") {
                let Some(our_media) = our_body.and_then(|b| b["content"].get(content_type)) else {
                    missing.push(format!("request body as {content_type}"));
                    continue;
                };
                if let Err(e) = same_shape(
                    contract,
                    &media["schema"],
                    doc,
                    &our_media["schema"],
                    false,
                    &format!("request body as {content_type}"),
                ) {
                    missing.push(e);
                }
            }
        }
        let responses = theirs["responses"].as_object().expect("responses");
        for (status, response) in responses {
            let Some(our_response) = ours["responses"].get(status).map(|r| resolve(doc, r)) else {
                if !STATUSES_ANSWERED_OTHERWISE.contains(&(path, method, status.as_str())) {
                    missing.push(format!("status {status}"));
                }
                continue;
            };
            let Some(content) = resolve(contract, response)["content"].as_object() else {
                continue;
            };
            for (content_type, media) in content {
                let Some(our_media) = our_response["content"].get(content_type) else {
                    missing.push(format!("status {status} as {content_type}"));
                    continue;
                };
                if let Err(e) = same_shape(
                    contract,
                    &media["schema"],
                    doc,
                    &our_media["schema"],
                    true,
                    &format!("status {status}"),
                ) {
                    missing.push(e);
                }
            }
        }
        missing
    }

    /// Every `$ref` under `value`, with where it is.
    fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(fields) => {
                for (key, v) in fields {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(target)) => out.push((at.clone(), target)),
                        _ => refs(v, format!("{at}/{key}"), out),
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    refs(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_document_keeps_every_path_method_parameter_and_answer_field_of_the_contract() {
        let missing = missing_from(&document());
        assert!(
            missing.is_empty(),
            "the document lacks:\n{}",
            missing.join("\n")
        );
    }

    /// The check above is no formality: the document with any piece of the contract taken out
    /// fails it, and says what is missing.
    #[test]
    fn a_document_without_a_piece_of_the_contract_fails_the_check() {
        /// What is taken out, how, and the line the check must then report.
        type Case = (&'static str, fn(&mut Value), &'static str);
        let cases: &[Case] = &[
            (
                "a path",
                |d| {
                    d["paths"].as_object_mut().unwrap().remove("/job/{job_id}");
                },
                "GET /job/{job_id}: no such operation",
            ),
            (
                "a method",
                |d| {
                    d["paths"]["/music/{music_id}"]
                        .as_object_mut()
                        .unwrap()
                        .remove("post");
                },
                "POST /music/{music_id}: no such operation",
            ),
            (
                "a parameter",
                |d| d["paths"]["/music/{music_id}"]["get"]["parameters"] = Value::Array(vec![]),
                "GET /music/{music_id}: parameter \"music_id\" in \"path\"",
            ),
            (
                "an answer's field",
                |d| {
                    let music = &mut d["components"]["schemas"]["Music"];
                    music["properties"].as_object_mut().unwrap().remove("band");
                },
                "POST /music: status 200.band: missing",
            ),
            (
                "a field of an array's items",
                |d| {
                    let track = &mut d["components"]["schemas"]["Track"];
                    track["properties"]
                        .as_object_mut()
                        .unwrap()
                        .remove("track_id");
                },
                "GET /music: status 200[].tracks[].track_id: missing",
            ),
            (
                "a field made optional",
                |d| {
                    let job = &mut d["components"]["schemas"]["Job"]["required"];
                    job.as_array_mut().unwrap().retain(|f| f != "size");
                },
                "GET /job/{job_id}: status 200.size: not required",
            ),
            (
                "a field's type",
                |d| {
                    d["components"]["schemas"]["Progress"]["properties"]["progress"]["type"] =
                        "string".into()
                },
                "GET /music/{music_id}: status 200.progress: the contract's type integer",
            ),
            (
                "a request body's type",
                |d| {
                    let body = &mut d["paths"]["/music"]["post"]["requestBody"]["content"];
                    body.as_object_mut()
                        .unwrap()
                        .remove("application/octet-stream");
                },
                "POST /music: request body as application/octet-stream",
            ),
            (
                "the array form of a selection",
                |d| {
                    let selection = &mut d["components"]["schemas"]["Selection"]["oneOf"];
                    selection.as_array_mut().unwrap().remove(0);
                },
                "POST /music/{music_id}: request body as application/json",
            ),
            (
                "a status",
                |d| {
                    let responses = &mut d["paths"]["/music/{music_id}"]["get"]["responses"];
                    responses.as_object_mut().unwrap().remove("404");
                },
                "GET /music/{music_id}: status 404",
            ),
        ];
        for (what, cut, expected) in cases {
            let mut doc = document();
            cut(&mut doc);
            let missing = missing_from(&doc);
            assert!(
                missing.iter().any(|m| m.starts_with(expected)),
                "without {what}, expected {expected:?}, got {missing:?}"
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3_with_every_ref_resolved_and_path_parameter_declared() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["info"]["title"].is_string());
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(found.len() > 20, "the answers are described by components");
        for (at, target) in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{at}: {target}"));
            assert!(
                doc.pointer(pointer).is_some(),
                "{at}: {target} does not resolve"
            );
        }
        let mut operation_ids = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            assert!(path.starts_with('/'), "{path}");
            let in_path: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|s| s.split_once('}').map(|(name, _)| name))
                .collect();
            for (method, operation) in item.as_object().unwrap() {
                assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
                let at = format!("{method} {path}");
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}"));
                assert!(operation_ids.insert(id), "{at}: operationId {id} twice");
                let responses = operation["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{at}: no responses");
                for (status, response) in responses {
                    assert!(
                        status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()),
                        "{at}: status {status}"
                    );
                    assert!(response["description"].is_string(), "{at} {status}");
                }
                let parameters = operation["parameters"].as_array();
                let declared: Vec<&str> = parameters
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| {
                        assert_eq!(p["required"], true, "{at}: {p}");
                        p["name"].as_str().unwrap()
                    })
                    .collect();
                assert_eq!(declared, in_path, "{at}: path parameters");
            }
        }
        // Every error is the JSON error body, but a 503 of `/readyz`: its report of the checks.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let report = (path.as_str(), status.as_str()) == ("/readyz", "503");
                    if (status.starts_with('4') || status.starts_with('5')) && !report {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    #[actix_web::test]
    async fn the_document_and_the_docs_page_are_served_with_no_other_origin() {
        let app = http::init_service(App::new().configure(super::super::configure)).await;
        let get = |uri: &str| TestRequest::get().uri(uri).to_request();
        let answer = http::call_service(&app, get(OPENAPI_PATH)).await;
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let served: Value = http::read_body_json(answer).await;
        assert_eq!(served, serde_json::to_value(ApiDoc::openapi()).unwrap());
        let post = TestRequest::post().uri(OPENAPI_PATH).to_request();
        assert_eq!(http::call_service(&app, post).await.status(), 405);

        let redirect = http::call_service(&app, get("/docs")).await;
        assert_eq!(redirect.status(), 308);
        assert_eq!(redirect.headers().get(header::LOCATION).unwrap(), "/docs/");
        let page = http::call_service(&app, get("/docs/")).await;
        assert_eq!(page.status(), 200);
        let csp = page.headers().get(header::CONTENT_SECURITY_POLICY).unwrap();
        let csp = csp.to_str().unwrap().to_string();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("http"), "no other origin: {csp}");
        let html = String::from_utf8(http::read_body(page).await.to_vec()).unwrap();
        // Every file the page loads comes from the gateway, and is there.
        let linked: Vec<&str> = html
            .split(['"', '\''])
            .filter(|s| s.ends_with(".js") || s.ends_with(".css") || s.ends_with(".png"))
            .collect();
        assert!(linked.len() >= 3, "{html}");
        for file in linked {
            assert!(!file.contains("//"), "{file} is on another origin");
            let uri = format!("/docs/{}", file.trim_start_matches("./"));
            let answer = http::call_service(&app, get(&uri)).await;
            assert_eq!(answer.status(), 200, "{uri}");
            assert!(answer
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY));
        }
        let init = http::call_service(&app, get("/docs/swagger-initializer.js")).await;
        let init = String::from_utf8(http::read_body(init).await.to_vec()).unwrap();
        assert!(init.contains(&format!("\"{OPENAPI_PATH}\"")), "{init}");
        assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    }
}

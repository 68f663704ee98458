//! `GET /openapi.json` and `GET /docs` of a running gateway, and the document held to what the
//! gateway really answers.
//!
//! The gateway's own unit tests check the document against the original contract
//! (`docs/api/original-contract.yaml`) and its structure; this one checks it against a song's
//! life on a real system: every JSON answer (upload, list, progress, selections with and without
//! gains, peaks, jobs, errors, retry refused, delete, reset, health) must be documented for its
//! path, method and status, carry every field the document requires, no field the document does
//! not name, each of the documented type. The docs page is served, with its files, from the
//! gateway itself.

use dme_testkit::system::{synth_wav, Options, System};
use reqwest::Method;
use serde_json::{json, Value};

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// `schema` with its local `$ref`s followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut schema = schema;
    while let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = target.strip_prefix('#').expect("a local $ref");
        schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{target} does not resolve"));
    }
    schema
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Where `value` breaks `schema` (a JSON Schema as utoipa writes them: `$ref`, `oneOf`, `type`,
/// `enum`, `properties`, `required`, `items`, `minimum`, `maximum`), one line each. A field the
/// schema does not name counts too: the document must name every field the gateway sends.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    if let Some(Value::Array(alternatives)) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
        let tries: Vec<Vec<String>> = alternatives
            .iter()
            .map(|alt| violations(doc, alt, value, at))
            .collect();
        return if tries.iter().any(Vec::is_empty) {
            Vec::new()
        } else {
            vec![format!("{at}: {value} is none of {tries:?}")]
        };
    }
    let mut out = Vec::new();
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
        return vec![format!("{at}: {value} is not {types:?}")];
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(n), Some(min)) = (
        value.as_f64(),
        schema.get("minimum").and_then(Value::as_f64),
    ) {
        if n < min {
            out.push(format!("{at}: {n} below {min}"));
        }
    }
    if let (Some(n), Some(max)) = (
        value.as_f64(),
        schema.get("maximum").and_then(Value::as_f64),
    ) {
        if n > max {
            out.push(format!("{at}: {n} above {max}"));
        }
    }
    // An object the document leaves free-form (no `properties`) may hold anything.
    if let (Value::Object(fields), Some(properties)) =
        (value, schema.get("properties").and_then(Value::as_object))
    {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().expect("a field name");
            if !fields.contains_key(name) {
                out.push(format!("{at}.{name}: required, missing"));
            }
        }
        for (name, field) in fields {
            match properties.get(name) {
                Some(property) => {
                    out.extend(violations(doc, property, field, &format!("{at}.{name}")))
                }
                None => out.push(format!("{at}.{name}: not in the document")),
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            out.extend(violations(doc, item_schema, item, &format!("{at}[{i}]")));
        }
    }
    out
}

/// Sends `method path` (with a JSON `body`, if any) and checks the answer against the document's
/// schema for `template` (the documented path), the method and the answer's status; returns the
/// status and body.
async fn checked(
    sys: &System,
    doc: &Value,
    method: Method,
    path: &str,
    template: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = sys.http.request(method.clone(), sys.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("an answer");
    documented(doc, &method, path, template, answer).await
}

/// The status and body of `answer` to `method path`, checked against the document's schema for
/// `template`, the method and the status.
async fn documented(
    doc: &Value,
    method: &Method,
    path: &str,
    template: &str,
    answer: reqwest::Response,
) -> (u16, Value) {
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.expect("a JSON answer");
    let what = format!("{method} {path} ({status})");
    let operation = &doc["paths"][template][method.as_str().to_lowercase()];
    assert!(
        operation.is_object(),
        "{what}: {template} is not documented"
    );
    let schema =
        &operation["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{what}: the status is not documented: {body}"
    );
    let broken = violations(doc, schema, &body, "answer");
    assert!(broken.is_empty(), "{what}: {body}\n{}", broken.join("\n"));
    (status, body)
}

#[tokio::test]
async fn a_running_gateway_answers_as_its_openapi_document_says_and_serves_its_docs() {
    let sys = System::start(DME, Options::default()).await;
    let doc: Value = sys
        .http
        .get(sys.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("a JSON document");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/music",
        "/music/{music_id}",
        "/job",
        "/job/{job_id}",
        "/reset",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }

    // The docs page (the client follows `/docs` to `/docs/`), and each file it loads.
    let page = sys
        .http
        .get(sys.url("/docs"))
        .send()
        .await
        .expect("GET /docs");
    assert_eq!(page.status(), 200);
    assert_eq!(page.url().path(), "/docs/");
    let html = page.text().await.expect("the page");
    assert!(html.contains("swagger-ui"), "{html}");
    for file in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        assert!(html.contains(file), "the page loads {file}");
        let answer = sys
            .http
            .get(sys.url(&format!("/docs/{file}")))
            .send()
            .await
            .expect("a docs file");
        assert_eq!(answer.status(), 200, "{file}");
    }

    let upload = sys
        .upload(synth_wav(3 * 44_100, 44_100, 2.0), "openapi.wav")
        .await;
    let (status, music) = documented(&doc, &Method::POST, "/music", "/music", upload).await;
    assert_eq!(status, 200, "{music}");
    // The check is no formality: a field the document does not name, or a required one
    // missing, is caught.
    let music_schema = &doc["paths"]["/music"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let mut extra = music.clone();
    extra["surprise"] = json!(1);
    assert!(!violations(&doc, music_schema, &extra, "answer").is_empty());
    let mut short = music.clone();
    short.as_object_mut().expect("an object").remove("band");
    assert!(!violations(&doc, music_schema, &short, "answer").is_empty());
    let id = music["music_id"].as_u64().expect("an id");
    let song = format!("/music/{id}");
    let ids: Vec<Value> = music["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .map(|t| t["track_id"].clone())
        .collect();
    checked(&sys, &doc, Method::GET, "/music", "/music", None).await;
    checked(&sys, &doc, Method::GET, &song, "/music/{music_id}", None).await;
    // The contract's array of ids, and tracks with gains.
    let (status, _) = checked(
        &sys,
        &doc,
        Method::POST,
        &song,
        "/music/{music_id}",
        Some(Value::Array(ids.clone())),
    )
    .await;
    assert_eq!(status, 200);
    let gains = json!({"tracks": [{"track_id": ids[0], "gain_db": -3}, "vocals"]});
    let (status, _) = checked(
        &sys,
        &doc,
        Method::POST,
        &song,
        "/music/{music_id}",
        Some(gains),
    )
    .await;
    assert_eq!(status, 200);
    let done = sys.finished(id).await;
    let (_, done_now) = checked(&sys, &doc, Method::GET, &song, "/music/{music_id}", None).await;
    assert!(done_now["final"].is_string(), "{done}");

    let track = done_now["instruments"][0]["track"]
        .as_str()
        .expect("a stem link");
    let peaks = format!("{}/peaks", track.trim_start_matches(&sys.url("")));
    let (status, _) = checked(
        &sys,
        &doc,
        Method::GET,
        &peaks,
        "/music/{music_id}/track/{track_id}/peaks",
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (_, jobs) = checked(&sys, &doc, Method::GET, "/job", "/job", None).await;
    let job = jobs[0].as_u64().expect("a job id");
    let (status, _) = checked(
        &sys,
        &doc,
        Method::GET,
        &format!("/job/{job}"),
        "/job/{job_id}",
        None,
    )
    .await;
    assert_eq!(status, 200);
    for path in ["/healthz", "/readyz", "/workers"] {
        let (status, body) = checked(&sys, &doc, Method::GET, path, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    // Errors are documented, with their JSON body.
    let cases = [
        (
            Method::GET,
            "/music/1".to_string(),
            "/music/{music_id}",
            None,
            404,
        ),
        (
            Method::GET,
            "/music/x".to_string(),
            "/music/{music_id}",
            None,
            400,
        ),
        (
            Method::GET,
            "/job/1".to_string(),
            "/job/{job_id}",
            None,
            404,
        ),
        (
            Method::POST,
            song.clone(),
            "/music/{music_id}",
            Some(json!([])),
            400,
        ),
        (
            Method::POST,
            song.clone(),
            "/music/{music_id}",
            Some(json!([1])),
            405,
        ),
        (
            Method::POST,
            format!("{song}/retry"),
            "/music/{music_id}/retry",
            None,
            409,
        ),
    ];
    for (method, path, template, body, expected) in cases {
        let (status, body) = checked(&sys, &doc, method.clone(), &path, template, body).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
    }

    let (status, _) = checked(&sys, &doc, Method::DELETE, &song, "/music/{music_id}", None).await;
    assert_eq!(status, 200);
    let (status, _) = checked(&sys, &doc, Method::POST, "/reset", "/reset", None).await;
    assert_eq!(status, 200);
}

//! API tokens and per-client limits against a real system: a gateway with an admin token
//! (`DME_API_TOKEN`) and a tokens file (`DME_API_TOKENS_FILE`) refuses requests without a
//! valid bearer token (401), lets a `user` token do everything but destroy (403), takes the
//! token as `?token=` on event streams and downloads, and leaves the health probes open; the
//! CLI sends `--token`. Per client (its token, else its address): new songs per minute
//! (`DME_CLIENT_UPLOADS_PER_MINUTE`) and songs in work (`DME_CLIENT_MAX_SONGS`), 429 with
//! `Retry-After` beyond, while the same bytes again never count.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use dme_testkit::system::{env, synth_wav, Options, System, SONG_DEADLINE};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The admin token given as `DME_API_TOKEN`.
const ADMIN: &str = "env-admin-0123456789abcdef";
/// The admin token of the tokens file.
const FILE_ADMIN: &str = "file-admin-0123456789abcdef";
/// A user token of the tokens file.
const USER: &str = "user-one-0123456789abcdef";
/// Another user token, from the same address.
const OTHER_USER: &str = "user-two-0123456789abcdef";

/// Frames of each test song: 2 s at 44.1 kHz, one segment.
const SONG_FRAMES: usize = 88_200;

/// A distinct 2-second song per `seed`.
fn song(seed: f32) -> Vec<u8> {
    synth_wav(SONG_FRAMES, 44_100, seed)
}

/// Writes a tokens file (with comments and a blank line, as people write them) into `dir`.
fn tokens_file(dir: &Path) -> String {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# dme API tokens: <role> <token>\nadmin {FILE_ADMIN}\n\n# the band\nuser {USER}\n\
             user  {OTHER_USER}\n"
        ),
    )
    .expect("the tokens file");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// A system whose gateway has both kinds of tokens, and `extra` settings.
async fn with_tokens(dir: &Path, extra: &[(&str, &str)]) -> System {
    let file = tokens_file(dir);
    let mut gateway_env = env(&[("DME_API_TOKEN", ADMIN), ("DME_API_TOKENS_FILE", &file)]);
    gateway_env.extend(env(extra));
    System::start(
        DME,
        Options {
            gateway_env,
            ..Options::default()
        },
    )
    .await
}

/// An HTTP client that sends `token` on every request (like `System::http`: no kept-alive
/// connections).
fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a header"),
        );
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// An answer: status, `WWW-Authenticate`, `Retry-After`, and the JSON body (null if none).
struct Answer {
    status: u16,
    challenge: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

/// `method <path>` with `token` as a bearer header (when given) and `body` (when given).
async fn call(
    sys: &System,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = client_with(token).request(method, sys.url(path));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/octet-stream")
            .body(body);
    }
    let r = request.send().await.expect("an answer");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (challenge, retry_after) = (header("www-authenticate"), header("retry-after"));
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        challenge,
        retry_after,
        body,
    }
}

/// Asserts a 401 with a JSON error and a bearer challenge.
fn assert_unauthorized(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.body);
    assert!(
        a.body["error"].is_string(),
        "{what}: a JSON error: {}",
        a.body
    );
    let challenge = a.challenge.as_deref().unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
}

/// Uploads `bytes` with `token`: the answer.
async fn upload(sys: &System, bytes: Vec<u8>, name: &str, token: Option<&str>) -> Answer {
    call(
        sys,
        Method::POST,
        &format!("/music?name={name}"),
        token,
        Some(bytes),
    )
    .await
}

/// Opens the event stream at `path` through `client` and returns the first event's text.
async fn first_event(sys: &System, client: &reqwest::Client, path: &str) -> String {
    let r = client.get(sys.url(path)).send().await.expect("an answer");
    assert_eq!(r.status(), 200, "GET {path}");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut text = String::new();
    tokio::time::timeout(SONG_DEADLINE, async {
        while !text.contains("\n\n") || !text.contains("event:") {
            let chunk = body.next().await.expect("more events").expect("a chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event on {path}"));
    text
}

/// Runs the CLI with `args` against the system, with `DME_TOKEN` unset.
async fn dme(sys: &System, args: &[&str]) -> Output {
    let output = tokio::time::timeout(
        SONG_DEADLINE,
        tokio::process::Command::new(DME)
            .args(args)
            .env("DME_URL", sys.url(""))
            .env_remove("DME_TOKEN")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("dme {args:?} hung"))
    .expect("dme runs");
    eprintln!(
        "$ dme {}\n-> {:?}\n{}",
        args.join(" "),
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn tokens_guard_the_api_and_only_an_admin_token_destroys() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut sys = with_tokens(dir.path(), &[]).await;

    // Open: the probes, the page and its files.
    for path in ["/healthz", "/readyz", "/", "/ui/app.js"] {
        let a = call(&sys, Method::GET, path, None, None).await;
        assert_eq!(a.status, 200, "{path} is open");
    }

    // No token, or a wrong one: 401 with a JSON error and a challenge, whatever the route.
    for (method, path) in [
        (Method::GET, "/music"),
        (Method::GET, "/music/1"),
        (Method::GET, "/events"),
        (Method::GET, "/job"),
        (Method::GET, "/metrics"),
        (Method::POST, "/reset"),
        (Method::DELETE, "/music/1"),
    ] {
        let a = call(&sys, method.clone(), path, None, None).await;
        assert_unauthorized(&a, &format!("{method} {path} without a token"));
        let a = call(
            &sys,
            method.clone(),
            path,
            Some("not-a-token-0123456789"),
            None,
        )
        .await;
        assert_unauthorized(&a, &format!("{method} {path} with a wrong token"));
        assert!(a.challenge.unwrap().contains("invalid_token"));
    }
    let a = upload(&sys, song(1.0), "a.wav", None).await;
    assert_unauthorized(&a, "an upload without a token");
    let a = call(
        &sys,
        Method::GET,
        "/events?token=wrong-0123456789abc",
        None,
        None,
    )
    .await;
    assert_unauthorized(&a, "an event stream with a wrong ?token=");
    let a = call(
        &sys,
        Method::GET,
        &format!("/music?token={USER}"),
        None,
        None,
    )
    .await;
    assert_unauthorized(&a, "?token= on a JSON route (streams and downloads only)");

    // A user token: upload and select, list, progress, events (header and ?token=), download.
    let user = client_with(Some(USER));
    let anonymous = client_with(None);
    sys.http = user.clone();
    let id = sys.upload_and_select_all(song(1.0), "a.wav").await;
    let list = call(&sys, Method::GET, "/music", Some(USER), None).await;
    assert_eq!(list.status, 200);
    assert!(list
        .body
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["music_id"] == id));
    let event = first_event(&sys, &user, &format!("/music/{id}/events")).await;
    assert!(event.contains(&id.to_string()), "{event}");
    first_event(
        &sys,
        &anonymous,
        &format!("/music/{id}/events?token={USER}"),
    )
    .await;
    first_event(&sys, &anonymous, &format!("/events?token={USER}")).await;
    let done = sys.finished(id).await;
    let track = done["tracks"][0]["track_id"].as_u64().expect("a track");
    for (client, path) in [
        (&user, format!("/music/{id}/track/{track}?format=wav")),
        (
            &anonymous,
            format!("/music/{id}/track/{track}?format=wav&token={USER}"),
        ),
    ] {
        let r = client.get(sys.url(&path)).send().await.expect("an answer");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(&r.bytes().await.expect("the file")[..4], b"RIFF");
    }
    let mix = done["final"].as_str().expect("the mix link");
    let r = anonymous
        .get(format!("{mix}?token={USER}"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 200, "the mix with ?token=");
    let without = anonymous.get(mix).send().await.expect("an answer");
    assert_eq!(without.status(), 401, "the mix without a token");

    // A user token cannot destroy: 403 with a JSON error; the song stays.
    for (method, path) in [
        (Method::POST, "/reset".to_string()),
        (Method::DELETE, format!("/music/{id}")),
    ] {
        let a = call(&sys, method.clone(), &path, Some(USER), None).await;
        assert_eq!(a.status, 403, "{method} {path}: {}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains("admin"),
            "{}",
            a.body
        );
    }
    assert_eq!(
        call(&sys, Method::GET, &format!("/music/{id}"), Some(USER), None)
            .await
            .status,
        200
    );

    // The CLI: with --token it works; without, a clear refusal and the bad-input code.
    let ls = dme(&sys, &["ls", "--json", "--token", USER]).await;
    assert_eq!(ls.status.code(), Some(0));
    let listed: Value = serde_json::from_slice(&ls.stdout).expect("JSON");
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["music_id"] == id));
    let status = dme(&sys, &["status", &id.to_string(), "--token", USER]).await;
    assert_eq!(status.status.code(), Some(0));
    let refused = dme(&sys, &["ls"]).await;
    assert_eq!(refused.status.code(), Some(2), "bad input");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--token") && stderr.contains("DME_TOKEN"),
        "{stderr}"
    );
    let wrong = dme(&sys, &["ls", "--token", "not-a-token-0123456789"]).await;
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("refused"));
    let rm = dme(&sys, &["rm", &id.to_string(), "--token", USER]).await;
    assert_eq!(rm.status.code(), Some(2), "a user cannot delete");

    // Admin tokens can: the file's deletes the song, the environment's resets.
    let a = call(
        &sys,
        Method::DELETE,
        &format!("/music/{id}"),
        Some(FILE_ADMIN),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(&sys, Method::POST, "/reset", Some(ADMIN), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let list = call(&sys, Method::GET, "/music", Some(ADMIN), None).await;
    assert_eq!(list.body, Value::Array(Vec::new()));
}

#[tokio::test]
async fn new_songs_per_minute_are_limited_per_token_and_the_same_bytes_are_free() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut sys = with_tokens(dir.path(), &[("DME_CLIENT_UPLOADS_PER_MINUTE", "2")]).await;
    // Songs stay queued with no separator: only the rate is tested here.
    assert!(sys.kill_separator("sep-1"));

    for (seed, name) in [(1.0, "a.wav"), (2.0, "b.wav")] {
        let a = upload(&sys, song(seed), name, Some(USER)).await;
        assert_eq!(a.status, 200, "{name}: {}", a.body);
    }
    let third = upload(&sys, song(3.0), "c.wav", Some(USER)).await;
    assert_eq!(third.status, 429, "{}", third.body);
    let wait: u64 = third
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        third.body["error"].as_str().unwrap().contains("minute"),
        "{}",
        third.body
    );

    // The same bytes again are the song already there: answered, not counted.
    let again = upload(&sys, song(1.0), "a again.wav", Some(USER)).await;
    assert_eq!(again.status, 200, "{}", again.body);

    // Another token from the same address has its own minute.
    let other = upload(&sys, song(3.0), "c.wav", Some(OTHER_USER)).await;
    assert_eq!(other.status, 200, "{}", other.body);
}

#[tokio::test]
async fn a_client_with_its_songs_in_work_waits_until_one_is_done() {
    let mut sys = System::start(
        DME,
        Options {
            gateway_env: env(&[("DME_CLIENT_MAX_SONGS", "1")]),
            ..Options::default()
        },
    )
    .await;
    // No separator: the first song stays in work.
    assert!(sys.kill_separator("sep-1"));
    let first = sys.upload_ok(song(1.0), "first.wav").await;
    let id = first["music_id"].as_u64().expect("an id");

    let second = upload(&sys, song(2.0), "second.wav", None).await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert!(second.retry_after.is_some(), "Retry-After");
    assert!(
        second.body["error"].as_str().unwrap().contains("in work"),
        "{}",
        second.body
    );
    let again = upload(&sys, song(1.0), "first again.wav", None).await;
    assert_eq!(again.status, 200, "the song in work itself: {}", again.body);

    sys.add_separator();
    sys.wait_music(id, "the first song done", |b| b["state"] == "done")
        .await;
    let second = upload(&sys, song(2.0), "second.wav", None).await;
    assert_eq!(second.status, 200, "{}", second.body);
}

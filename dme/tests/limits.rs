//! Admission limits against a real nats-server and the real services: a client's work in flight
//! (429), the object store's room (507, 413), and what a full store does to a song in work.

use std::time::Duration;

use dme_storage::Store;
use dme_testkit::system::{env, quick_redelivery, synth_wav, Options, System};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Frames of each test song: 2 s at 44.1 kHz.
const SONG_FRAMES: usize = 88_200;

/// A distinct 2-second song per `seed` (all of the same size).
fn song(seed: f32) -> Vec<u8> {
    synth_wav(SONG_FRAMES, 44_100, seed)
}

async fn store_of(sys: &System) -> Store {
    Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .expect("the store")
}

/// `POST /music` of `bytes` through `http` to `base`, with extra headers.
async fn upload_via(
    http: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
    name: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut request = http
        .post(format!("{base}/music?name={name}"))
        .header("content-type", "application/octet-stream")
        .body(bytes);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.expect("an answer");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn wait_done(sys: &System, id: u64) {
    sys.wait_music(id, "the song done", |b| b["state"] == "done")
        .await;
}

#[tokio::test]
async fn a_client_over_its_work_in_flight_gets_429_on_every_gateway_until_its_songs_finish() {
    let size = song(1.0).len() as u64;
    // Two songs in work fit, a third does not (seconds are not the limit here).
    let limit = (2 * size + size / 2).to_string();
    let gateway_env = env(&[
        ("DME_CLIENT_MAX_INFLIGHT_BYTES", &limit),
        ("DME_CLIENT_MAX_INFLIGHT_S", "100000"),
        ("DME_TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let mut sys = System::start(
        DME,
        Options {
            gateway_env: gateway_env.clone(),
            ..Options::default()
        },
    )
    .await;
    // With no separator, songs stay in work: the model stays registered, nothing finishes.
    assert!(sys.kill_separator("sep-1"));
    let base = sys.url("");

    let a = sys.upload_ok(song(1.0), "a.wav").await;
    let b = sys.upload_ok(song(2.0), "b.wav").await;
    let (status, retry_after, body) = upload_via(&sys.http, &base, song(3.0), "c.wav", &[]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry_after.as_deref(), Some("60"));
    let reason = body["error"].as_str().expect("a JSON reason");
    assert!(
        reason.contains("2 song(s) in work") && reason.contains("per client"),
        "{reason}"
    );

    // The same bytes again cost nothing new: answered, not refused.
    let again = sys.upload_ok(song(1.0), "a.wav").await;
    assert_eq!(again["music_id"], a["music_id"]);

    // A second gateway counts the same client's work from the shared records.
    let port = dme_testkit::free_port();
    let mut cmd = sys.command("gateway", &["--http-addr", &format!("127.0.0.1:{port}")]);
    for (k, v) in &gateway_env {
        cmd.env(k, v);
    }
    let mut second = dme_testkit::Process::spawn("second gateway", cmd);
    let second_base = format!("http://127.0.0.1:{port}");
    let http = sys.http.clone();
    let health = format!("{second_base}/healthz");
    dme_testkit::wait_for("the second gateway", Duration::from_secs(60), || {
        let (http, health) = (http.clone(), health.clone());
        async move { http.get(&health).send().await.ok().map(|_| ()) }
    })
    .await;
    let (status, _, body) = upload_via(&sys.http, &second_base, song(3.0), "c.wav", &[]).await;
    assert_eq!(status, 429, "the second gateway: {body}");

    // Other clients are unaffected: another address, and a client behind a trusted proxy.
    let other_address = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let (status, _, body) = upload_via(&other_address, &base, song(3.0), "c.wav", &[]).await;
    assert_eq!(status, 200, "another address: {body}");
    let (status, _, body) = upload_via(
        &sys.http,
        &base,
        song(4.0),
        "d.wav",
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(status, 200, "a client behind a trusted proxy: {body}");

    // Once its songs are done, the client is served again.
    sys.add_separator();
    for music in [&a, &b] {
        wait_done(&sys, music["music_id"].as_u64().unwrap()).await;
    }
    let (status, _, body) = upload_via(&sys.http, &second_base, song(5.0), "e.wav", &[]).await;
    assert_eq!(status, 200, "after its songs finished: {body}");
    second.kill();
}

/// The object store's maximum in the tests below: 100 MB, so its high-water mark (80%) is 80 MB.
const STORE_MAX: u64 = 100_000_000;
const HIGH_WATER: u64 = STORE_MAX / 10 * 8;

/// A 2-second song may take at least 8 MB of store at its peak (four stems, stereo f32: 4/3 of it
/// as segment inputs, 4/3 per stem as segment stems, a track per stem and a mix; the gateway's
/// estimate adds the original and a model window), so 1 MB below the high-water mark leaves no
/// room for one, whatever the exact estimate.
const LESS_THAN_A_SONG: u64 = 1_000_000;

/// Fills the store with a filler object until `used` reaches `target` bytes.
async fn fill_to(store: &Store, name: &str, target: u64) -> Result<(), dme_storage::StoreError> {
    let used = store.file_usage().await.unwrap().used;
    let filler = vec![7u8; target.saturating_sub(used) as usize];
    store.put_object(name, &filler).await
}

#[tokio::test]
async fn a_full_store_refuses_new_songs_with_507_and_still_serves_what_it_holds() {
    let sys = System::start(
        DME,
        Options {
            env: env(&[("DME_STORE_MAX_BYTES", &STORE_MAX.to_string())]),
            ..Options::default()
        },
    )
    .await;
    let store = store_of(&sys).await;
    assert_eq!(
        store.file_usage().await.unwrap().max,
        Some(STORE_MAX),
        "every service sets DME_STORE_MAX_BYTES on the object store"
    );
    let first = sys.upload_ok(song(1.0), "first.wav").await;
    let first_id = first["music_id"].as_u64().unwrap();
    wait_done(&sys, first_id).await;

    // Other data fills the store to just below its high-water mark.
    fill_to(&store, "filler", HIGH_WATER - LESS_THAN_A_SONG)
        .await
        .expect("below the maximum, a put succeeds");
    let (status, retry_after, body) =
        upload_via(&sys.http, &sys.url(""), song(2.0), "second.wav", &[]).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(retry_after.as_deref(), Some("60"));
    let reason = body["error"].as_str().expect("a JSON reason");
    assert!(reason.contains("store is too full"), "{reason}");
    assert_eq!(
        sys.get("/music").await.body.as_array().unwrap().len(),
        1,
        "nothing of the refused song is recorded"
    );

    // A song that could never fit below the high-water mark is too large (413), not a wait: 20 s
    // take at least 82 MB (see LESS_THAN_A_SONG).
    let long = synth_wav(SONG_FRAMES * 10, 44_100, 3.0);
    let (status, _, body) = upload_via(&sys.http, &sys.url(""), long, "long.wav", &[]).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("store accepts new work up to"),
        "{body}"
    );

    // What is stored is still served: the song, its stems as stored and newly encoded.
    let done = sys.get(&format!("/music/{first_id}")).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.body["state"], "done");
    for instrument in done.body["instruments"].as_array().unwrap() {
        let url = instrument["track"].as_str().unwrap();
        for format in ["wav32f", "wav"] {
            let file = sys.download(&format!("{url}?format={format}")).await;
            assert_eq!(file.status, 200, "{url} as {format}");
            assert!(!file.bytes.is_empty());
        }
    }
    // The same bytes as the first song cost nothing new and are answered.
    let again = sys.upload_ok(song(1.0), "first.wav").await;
    assert_eq!(again["music_id"], first["music_id"]);
}

#[tokio::test]
async fn a_store_that_fills_while_a_song_is_in_work_fails_the_song_with_the_reason() {
    let mut options = Options {
        env: quick_redelivery(2),
        ..Options::default()
    };
    options
        .env
        .extend(env(&[("DME_STORE_MAX_BYTES", &STORE_MAX.to_string())]));
    let mut sys = System::start(DME, options).await;
    assert!(sys.kill_separator("sep-1"));
    let music = sys.upload_ok(song(1.0), "song.wav").await;
    let id = music["music_id"].as_u64().unwrap();
    // Once the song is cut, other data fills the store to its maximum.
    sys.wait_music(id, "the song cut", |b| b["segments"].as_u64() > Some(0))
        .await;
    let store = store_of(&sys).await;
    let err = fill_to(&store, "filler", STORE_MAX + 1)
        .await
        .expect_err("a put beyond the maximum fails");
    assert!(
        matches!(err, dme_storage::StoreError::Full { .. }),
        "a full store is named as such: {err}"
    );

    // The separator cannot store its stems: the song fails with a reason that says so, and the
    // gateway refuses new songs with 507 meanwhile.
    sys.add_separator();
    let failed = sys.failed(id).await;
    let reason = failed["error"].as_str().unwrap_or_default();
    assert!(reason.contains("store is full"), "{failed}");
    let (status, _, body) = upload_via(&sys.http, &sys.url(""), song(2.0), "second.wav", &[]).await;
    assert_eq!(status, 507, "{body}");
}

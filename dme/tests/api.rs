//! The upload side of the HTTP API against a real nats-server and the real services.

use std::time::Duration;

use dme_testkit::song::{test_song_mp3, TEST_SONG_ARTIST, TEST_SONG_TITLE};
use dme_testkit::system::{synth_wav, Options, Response, System};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The upload answer for the test song: its ID3v2 tags, the default model's four stems, and
/// what the file holds (30 s of 44.1 kHz stereo MP3).
fn assert_test_song(body: &Value) {
    assert_eq!(body["name"], TEST_SONG_TITLE, "{body}");
    assert_eq!(body["band"], TEST_SONG_ARTIST, "{body}");
    let names: Vec<&str> = body["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["drums", "bass", "other", "vocals"]);
    for t in body["tracks"].as_array().unwrap() {
        let id = t["track_id"].as_u64().unwrap();
        assert!(id > 0 && id < 1 << 53);
    }
    let d = body["duration_s"].as_f64().unwrap();
    assert!((d - 30.0).abs() < 0.01, "duration {d}");
    assert_eq!(body["sample_rate"], 44100);
    assert_eq!(body["channels"], 2);
    assert_eq!(body["codec"], "mp3");
    assert_eq!(body["size"], test_song_mp3().len());
    let id = body["music_id"].as_u64().unwrap();
    assert!(id > 0 && id < 1 << 53);
}

#[tokio::test]
async fn raw_and_multipart_uploads_of_the_same_song_share_one_record() {
    let sys = System::start(DME, Options::default()).await;
    let first = sys.upload_ok(test_song_mp3().to_vec(), "song.mp3").await;
    assert_test_song(&first);

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(test_song_mp3())
            .file_name("Test Song.mp3")
            .mime_str("audio/mpeg")
            .unwrap(),
    );
    let r = sys
        .http
        .post(sys.url("/music"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_test_song(&second);
    assert_eq!(first["music_id"], second["music_id"]);
    assert_eq!(first["tracks"], second["tracks"]);

    let list = sys.get("/music").await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.body.as_array().unwrap().len(),
        1,
        "stored once: {}",
        list.body
    );
    let id = first["music_id"].as_u64().unwrap();
    let one = sys.get(&format!("/music/{id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["name"], TEST_SONG_TITLE);
}

#[tokio::test]
async fn untagged_upload_is_named_after_its_file() {
    let sys = System::start(DME, Options::default()).await;
    let body = sys
        .upload_ok(synth_wav(44_100, 44_100, 1.0), "My%20Demo.wav")
        .await;
    assert_eq!(body["name"], "My Demo");
    assert_eq!(body["band"], "");
    assert!(body["codec"].as_str().unwrap().starts_with("pcm"), "{body}");
}

async fn expect_error(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.expect("errors are JSON");
    body["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let opts = Options {
        gateway_env: vec![("DME_MAX_UPLOAD_BYTES".into(), "600000".into())],
        ..Options::default()
    };
    let sys = System::start(DME, opts).await;
    // Empty body.
    let msg = expect_error(sys.upload(Vec::new(), "x.mp3").await, 400).await;
    assert!(msg.contains("empty"), "{msg}");
    // Text and PNG are not audio.
    expect_error(
        sys.upload(b"hello, this is not music at all".to_vec(), "a.mp3")
            .await,
        415,
    )
    .await;
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde".to_vec();
    expect_error(sys.upload(png, "a.png").await, 415).await;
    // Over the (configured) size limit.
    let msg = expect_error(sys.upload(test_song_mp3().to_vec(), "big.mp3").await, 413).await;
    assert!(msg.contains("limit"), "{msg}");
    // Unknown and malformed ids.
    expect_error(
        sys.http.get(sys.url("/music/12345")).send().await.unwrap(),
        404,
    )
    .await;
    expect_error(
        sys.http.get(sys.url("/music/abc")).send().await.unwrap(),
        400,
    )
    .await;
    expect_error(
        sys.http.get(sys.url("/music/-5")).send().await.unwrap(),
        400,
    )
    .await;
    expect_error(
        sys.http
            .get(sys.url("/music/99999999999999999999999"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    expect_error(sys.http.get(sys.url("/job/1")).send().await.unwrap(), 404).await;
    expect_error(sys.http.get(sys.url("/job/x")).send().await.unwrap(), 400).await;
    expect_error(sys.http.get(sys.url("/nowhere")).send().await.unwrap(), 404).await;
    // Nothing was stored by any of these.
    assert_eq!(sys.get("/music").await.body, serde_json::json!([]));
}

#[tokio::test]
async fn reset_deletes_everything_and_the_system_keeps_serving() {
    let sys = System::start(DME, Options::default()).await;
    let song = sys.upload_ok(synth_wav(30_000, 44_100, 2.0), "a.wav").await;
    let id = song["music_id"].as_u64().unwrap();
    let reset = sys.post_json("/reset", "").await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert_eq!(sys.get(&format!("/music/{id}")).await.status, 404);
    // Work in flight when the reset came (the song may be half cut) drains away.
    dme_testkit::wait_for("an empty system", Duration::from_secs(20), || async {
        let empty = serde_json::json!([]);
        (sys.get("/music").await.body == empty && sys.get("/job").await.body == empty).then_some(())
    })
    .await;
    // A new upload is processed normally.
    let (_, done) = sys
        .separate_and_mix(synth_wav(30_000, 44_100, 3.0), "b.wav", &["drums"])
        .await;
    assert_eq!(done["progress"], 100);
}

#[tokio::test]
async fn a_restarted_gateway_loses_nothing_and_two_gateways_agree() {
    let mut sys = System::start(DME, Options::default()).await;
    let song = sys.upload_ok(test_song_mp3().to_vec(), "song.mp3").await;
    sys.gateway.as_mut().unwrap().kill();
    sys.start_gateway().await;
    let Response { status, body: list } = sys.get("/music").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["music_id"], song["music_id"]);
    assert_test_song(&list[0]);

    // A second gateway on another port sees the same state.
    let port = dme_testkit::free_port();
    let mut second = sys.spawn("gateway", &["--http-addr", &format!("127.0.0.1:{port}")]);
    let url = format!("http://127.0.0.1:{port}/music");
    let http = sys.http.clone();
    let other: Value = dme_testkit::wait_for("second gateway", Duration::from_secs(30), || {
        let http = http.clone();
        let url = url.clone();
        async move { http.get(&url).send().await.ok()?.json().await.ok() }
    })
    .await;
    // The song goes on separating between the two reads: its state and progress may differ.
    let settled = |list: &Value| -> Vec<Value> {
        let mut songs = list.as_array().unwrap().clone();
        for song in &mut songs {
            let fields = song.as_object_mut().unwrap();
            fields.remove("state");
            fields.remove("progress");
        }
        songs
    };
    assert_eq!(settled(&other), settled(&list));
    second.kill();
}

#[tokio::test]
async fn an_upload_before_any_model_is_registered_is_503() {
    let nats = dme_testkit::NatsServer::start();
    let port = dme_testkit::free_port();
    let mut cmd = std::process::Command::new(DME);
    cmd.args(["gateway", "--http-addr", &format!("127.0.0.1:{port}")])
        .env("DME_NATS_URL", nats.url())
        .env("DME_LOG", "warn");
    let _gateway = dme_testkit::Process::spawn("gateway", cmd);
    let url = format!("http://127.0.0.1:{port}/music?name=a.wav");
    let body = synth_wav(10_000, 44_100, 1.0);
    let resp = dme_testkit::wait_for("the gateway", Duration::from_secs(60), || {
        let (url, body) = (url.clone(), body.clone());
        async move {
            reqwest::Client::new()
                .post(&url)
                .body(body)
                .send()
                .await
                .ok()
        }
    })
    .await;
    let msg = expect_error(resp, 503).await;
    assert!(
        msg.contains("no model is registered") && msg.contains("dme models add"),
        "{msg}"
    );
}

//! Model pools: each model's separators take only the segments cut for it; an upload names its
//! model (or gets the default); the same file with two models is two songs; an upload made
//! before any separator runs waits in the queue; a rolling upgrade (new pool up, old pool
//! stopped) loses no song.

use std::collections::BTreeSet;
use std::time::Duration;

use dme_testkit::model as model_path;
use dme_testkit::system::{synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::{wait_for, Process};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// How long a song of a model whose pool is stopped is watched to stay queued, not failed:
/// several times the separators' ack wait, so a redelivery loop would have shown.
const WAITING_WATCH: Duration = Duration::from_secs(3);

/// How often the watch looks.
const WATCH_POLL: Duration = Duration::from_millis(100);

/// Length of the old model's songs: with its slow model (about 0.22 s per one-second segment)
/// three of them keep its one separator busy for well over ten seconds, so some are still in
/// flight when its pool is stopped, even on a loaded machine.
const OLD_SONG_SECONDS: usize = 14;

/// The models offered, by name: `GET /models`.
async fn models(sys: &System) -> Vec<Value> {
    let r = sys.get("/models").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.as_array().cloned().expect("a list of models")
}

/// The offered model named `name`.
async fn offered(sys: &System, name: &str) -> Value {
    models(sys)
        .await
        .into_iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("model {name} is offered"))
}

/// The name of the offered model whose fingerprint is `fingerprint`.
async fn name_of(sys: &System, fingerprint: &str) -> String {
    let m = models(sys).await;
    let m = m.iter().find(|m| m["fingerprint"] == fingerprint).unwrap();
    m["name"].as_str().unwrap().to_string()
}

/// `POST /music?model=<model>&name=<name>`: (status, body).
async fn upload_for(sys: &System, bytes: Vec<u8>, name: &str, model: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(sys.url(&format!("/music?name={name}&model={model}")))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("an answer to the upload");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Uploads and returns the song's id, asserting it was accepted.
async fn upload_ok_for(sys: &System, bytes: Vec<u8>, name: &str, model: &str) -> u64 {
    let (status, body) = upload_for(sys, bytes, name, model).await;
    assert_eq!(status, 200, "{body}");
    body["music_id"].as_u64().unwrap()
}

/// Waits until song `id` is done and returns its stems' names.
async fn stems_when_done(sys: &System, id: u64) -> Vec<String> {
    let done = sys
        .wait_music(id, "done", |v| {
            v["state"] == "done" || v["state"] == "failed"
        })
        .await;
    assert_eq!(done["state"], "done", "song {id}: {done}");
    let record = sys.get(&format!("/music/{id}")).await.body;
    record["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// The workers that separated song `id`'s segments.
async fn workers_of(sys: &System, id: u64) -> BTreeSet<String> {
    let jobs = sys.jobs_of(id).await;
    assert!(!jobs.is_empty(), "song {id} has jobs");
    jobs.iter()
        .map(|j| j.worker.clone().unwrap_or_else(|| format!("(none: {j:?})")))
        .collect()
}

/// Starts a separator of the model in `file` with worker id `id`.
fn separator_of(sys: &System, file: &std::path::Path, id: &str) -> Process {
    let model = file.to_str().unwrap();
    sys.spawn("separator", &["--model", model, "--worker-id", id])
}

/// Waits until `GET /models` shows `n` live separators of the model `fingerprint`.
async fn wait_for_pool(sys: &System, fingerprint: &str, n: u64) {
    wait_for("the pool's separators", SONG_DEADLINE, || async {
        let m = models(sys).await;
        let m = m.iter().find(|m| m["fingerprint"] == fingerprint)?;
        (m["separators"].as_u64() == Some(n)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_pools_separate_only_their_own_models_songs_even_those_uploaded_before_them() {
    let four = model_path("default.onnx");
    let six = model_path("test/conv_six.onnx");
    // No separator yet: both models are offered up front, the embedded one is the default.
    let mut sys = System::start(
        DME,
        Options {
            separators: 0,
            offer: vec![four.clone(), six.clone()],
            gateway_env: vec![("DME_DEFAULT_MODEL".into(), "dme-hpss-dsp".into())],
            ..Options::default()
        },
    )
    .await;
    let listed = models(&sys).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let default = offered(&sys, "dme-hpss-dsp").await;
    assert_eq!(default["default"], true, "{default}");
    assert_eq!(default["separators"], 0, "{default}");
    let six_model = listed
        .iter()
        .find(|m| m["default"] == false)
        .cloned()
        .unwrap();
    let six_fp = six_model["fingerprint"].as_str().unwrap().to_string();
    let four_fp = default["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(six_model["sources"].as_array().unwrap().len(), 6);
    let six_name = name_of(&sys, &six_fp).await;

    // A model nobody offers is refused, naming the models there are.
    let (status, body) = upload_for(&sys, synth_wav(44_100, 44_100, 1.0), "x", "nope").await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&six_fp) && error.contains(&four_fp),
        "{error}"
    );

    // Uploads before any separator: accepted, and they wait.
    let song = synth_wav(3 * 44_100, 44_100, 2.0);
    let same_default = sys.upload_ok(song.clone(), "same").await;
    let same_default = same_default["music_id"].as_u64().unwrap();
    let same_six = upload_ok_for(&sys, song.clone(), "same", &six_name).await;
    assert_ne!(
        same_default, same_six,
        "the same file with two models is two songs"
    );
    let again = upload_ok_for(&sys, song, "same", &four_fp).await;
    assert_eq!(
        again, same_default,
        "the same file with the same model is one song"
    );
    let other_six = upload_ok_for(&sys, synth_wav(2 * 44_100, 44_100, 3.0), "six", &six_fp).await;
    let other_four = sys
        .upload_ok(synth_wav(2 * 44_100, 44_100, 4.0), "four")
        .await;
    let other_four = other_four["music_id"].as_u64().unwrap();
    for id in [same_default, same_six, other_six, other_four] {
        let v = sys.get(&format!("/music/{id}")).await.body;
        assert_ne!(v["state"], "failed", "{v}");
        assert_ne!(v["state"], "done", "nothing separates yet: {v}");
    }

    // Both pools start; each takes its own model's songs.
    sys.add_separator(); // sep-1: the embedded model
    let _six_worker = separator_of(&sys, &six, "six-1");
    wait_for_pool(&sys, &six_fp, 1).await;
    wait_for_pool(&sys, &four_fp, 1).await;
    for id in [same_default, other_four] {
        let stems = stems_when_done(&sys, id).await;
        assert_eq!(stems, ["drums", "bass", "other", "vocals"], "song {id}");
        assert_eq!(
            workers_of(&sys, id).await,
            BTreeSet::from(["sep-1".to_string()])
        );
    }
    for id in [same_six, other_six] {
        let stems = stems_when_done(&sys, id).await;
        assert_eq!(
            stems,
            ["drums", "bass", "other", "vocals", "guitar", "piano"],
            "song {id}"
        );
        assert_eq!(
            workers_of(&sys, id).await,
            BTreeSet::from(["six-1".to_string()])
        );
    }
    // Neither worker was ever handed the other model's segment (which it would refuse).
    let workers = sys.get("/workers").await.body;
    for w in workers.as_array().unwrap() {
        if w["service"] == "separator" {
            assert_eq!(w["stats"]["failures"], 0, "{w}");
        }
    }

    // The same list over the CLI and over NATS.
    let cli = sys
        .command("models", &["--url", &sys.url(""), "--json"])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(cli.as_array().unwrap().len(), 2, "{cli}");
    let nats = async_nats::connect(sys.nats.url()).await.unwrap();
    let answer = nats.request("dme.api.model.list", "".into()).await.unwrap();
    let over_nats: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(over_nats.as_array().unwrap().len(), 2, "{over_nats}");
}

#[tokio::test]
async fn a_rolling_upgrade_loses_no_song() {
    // The old model is slow, so its songs are still in flight when its pool is stopped.
    let old = model_path("test/slow_dynamic.onnx");
    let new = model_path("test/conv_dynamic.onnx");
    let mut sys = System::start(
        DME,
        Options {
            model: Some(old.clone()),
            ..Options::default()
        },
    )
    .await;
    let old_fp = models(&sys).await[0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let mut old_songs = Vec::new();
    for seed in 0..3 {
        let wav = synth_wav(OLD_SONG_SECONDS * 44_100, 44_100, 10.0 + seed as f32);
        old_songs.push(upload_ok_for(&sys, wav, &format!("old{seed}"), &old_fp).await);
    }

    // The new pool comes up beside the old one; new uploads name the new model.
    let _new_worker = separator_of(&sys, &new, "new-1");
    let new_fp = wait_for("the new model offered", SONG_DEADLINE, || async {
        let m = models(&sys).await;
        m.iter()
            .find(|m| m["fingerprint"] != old_fp.as_str() && m["separators"] == 1)
            .map(|m| m["fingerprint"].as_str().unwrap().to_string())
    })
    .await;
    // Two models and no default: an upload must choose.
    let (status, body) = upload_for(&sys, synth_wav(44_100, 44_100, 5.0), "x", "").await;
    assert_eq!(status, 400, "{body}");
    let mut new_songs = Vec::new();
    for seed in 0..2 {
        let wav = synth_wav(3 * 44_100, 44_100, 20.0 + seed as f32);
        new_songs.push(upload_ok_for(&sys, wav, &format!("new{seed}"), &new_fp).await);
    }

    // The old pool stops gracefully while its songs are in flight: what it holds is finished
    // or handed back, and what is queued waits.
    let first = old_songs[0];
    sys.wait_music(first, "a segment separated", |v| {
        v["segments_done"].as_u64().unwrap_or(0) > 0 || v["state"] == "done"
    })
    .await;
    let stopped = sys.separators.remove(0).terminate(Duration::from_secs(30));
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let waiting: Vec<u64> = {
        let mut out = Vec::new();
        for &id in &old_songs {
            let v = sys.get(&format!("/music/{id}")).await.body;
            assert_ne!(v["state"], "failed", "{v}");
            if v["state"] != "done" {
                out.push(id);
            }
        }
        out
    };
    assert!(
        !waiting.is_empty(),
        "an old song is still queued when its pool stops"
    );
    // The new pool finishes its songs meanwhile, and never touches the old model's.
    for &id in &new_songs {
        stems_when_done(&sys, id).await;
        assert_eq!(
            workers_of(&sys, id).await,
            BTreeSet::from(["new-1".to_string()])
        );
    }
    // Watched for a while (a negative: no state ends the watch), each look must find them
    // waiting.
    let watch_until = std::time::Instant::now() + WAITING_WATCH;
    while std::time::Instant::now() < watch_until {
        for &id in &waiting {
            let v = sys.get(&format!("/music/{id}")).await.body;
            assert!(
                v["state"] == "separating" || v["state"] == "queued",
                "an old song waits for its pool: {v}"
            );
        }
        tokio::time::sleep(WATCH_POLL).await;
    }

    // An old-model separator returns: every old song completes, by old workers only.
    sys.add_separator();
    for &id in &old_songs {
        stems_when_done(&sys, id).await;
        let workers = workers_of(&sys, id).await;
        assert!(!workers.contains("new-1"), "song {id}: {workers:?}");
    }
}

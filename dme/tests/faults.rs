//! Failure handling, proven by killing real processes: separators, the nats-server, the gateway,
//! splitter and mixer; poison segments; reset under load; many clients at once.

mod common;

use std::time::Duration;

use common::{model_path, synth_wav, Options, System, SONG_DEADLINE};
use dme_model::ModelSource;
use serde_json::Value;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Separators give a killed worker's segment to another after 2 s.
fn quick_redelivery(max_deliver: u32) -> Vec<(String, String)> {
    env(&[
        ("DME_SEPARATOR_ACK_WAIT_MS", "2000"),
        ("DME_SEPARATOR_MAX_DELIVER", &max_deliver.to_string()),
    ])
}

/// The single-process result of `model` on `wav` (segmenting.md), `S × 2` lanes.
fn reference(model: &str, wav: &[u8]) -> Vec<Vec<f32>> {
    let input = common::decode_bytes(wav, "wav");
    common::reference(
        &ModelSource::File(model_path(model)),
        &input.left,
        &input.right,
    )
}

async fn stems(sys: &System, done: &Value) -> Vec<Vec<f32>> {
    common::stem_lanes(sys, done).await
}

fn assert_same(got: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g.len(), e.len(), "{what}: lengths");
        let err = g
            .iter()
            .zip(e)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-6,
            "{what}: differs from a fault-free run by {err}"
        );
    }
}

async fn upload_and_select(sys: &System, wav: Vec<u8>, name: &str) -> u64 {
    let music = sys.upload_ok(wav, name).await;
    let all: Vec<&str> = music["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    sys.select(&music, &all).await
}

/// Waits until the song is `failed` and returns its answer.
async fn failed(sys: &System, id: u64) -> Value {
    dme_testkit::wait_for("the song to fail", SONG_DEADLINE, || async {
        let (_, b) = sys.get(&format!("/music/{id}")).await;
        (b["state"] == "failed").then_some(b)
    })
    .await
}

async fn finished(sys: &System, id: u64) -> Value {
    sys.wait_music(id, "the song", |b| {
        b["progress"] == 100 && b["final"].is_string()
    })
    .await
}

/// Jobs of a song.
async fn jobs_of(sys: &System, music: u64) -> Vec<Value> {
    let (_, ids) = sys.get("/job").await;
    let mut out = Vec::new();
    for id in ids.as_array().unwrap() {
        let (_, job) = sys.get(&format!("/job/{id}")).await;
        if job["music_id"] == music {
            out.push(job);
        }
    }
    out
}

#[tokio::test]
async fn a_separator_killed_mid_segment_is_replaced_by_redelivery() {
    let mut sys = System::start(Options {
        separators: 2,
        model: Some(model_path("test/slow_dynamic.onnx")),
        env: quick_redelivery(5),
        ..Options::default()
    })
    .await;
    let wav = synth_wav(8 * 44_100, 44_100, 1.0);
    let id = upload_and_select(&sys, wav.clone(), "a.wav").await;
    // Wait until a worker holds a segment, then SIGKILL it.
    let (victim, job_id) =
        dme_testkit::wait_for("a running segment", Duration::from_secs(60), || async {
            jobs_of(&sys, id).await.into_iter().find_map(|j| {
                (j["state"] == "running").then(|| {
                    (
                        j["worker"].as_str().unwrap().to_string(),
                        j["job_id"].as_u64().unwrap(),
                    )
                })
            })
        })
        .await;
    let index: usize = victim.trim_start_matches("sep-").parse::<usize>().unwrap() - 1;
    sys.separators[index].kill();
    let done = finished(&sys, id).await;
    assert_same(
        &stems(&sys, &done).await,
        &reference("test/slow_dynamic.onnx", &wav),
        "after a kill",
    );
    let (_, job) = sys.get(&format!("/job/{job_id}")).await;
    assert_eq!(job["state"], "done");
    assert!(
        job["attempts"].as_u64().unwrap() >= 2,
        "the killed segment was redelivered: {job}"
    );
    assert_ne!(job["worker"], victim.as_str(), "another worker finished it");
}

#[tokio::test]
async fn twenty_random_kills_during_five_songs_change_nothing() {
    let mut sys = System::start(Options {
        separators: 3,
        model: Some(model_path("test/slow_dynamic.onnx")),
        // Enough deliveries that random kills never make a healthy segment look poisonous.
        env: quick_redelivery(30),
        ..Options::default()
    })
    .await;
    let songs: Vec<Vec<u8>> = (0..5)
        .map(|k| synth_wav(3 * 44_100 + 777 * k, 44_100, k as f32 * 7.0))
        .collect();
    let mut ids = Vec::new();
    for (k, wav) in songs.iter().enumerate() {
        ids.push(upload_and_select(&sys, wav.clone(), &format!("s{k}.wav")).await);
    }
    // A fixed pseudo-random sequence: which worker to kill and when.
    let mut state = 0x2545_F491_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150 + (next() % 350) as u64)).await;
        let victim = (next() as usize) % sys.separators.len();
        sys.separators[victim].kill();
        sys.separators.remove(victim);
        sys.add_separator();
    }
    for (id, wav) in ids.iter().zip(&songs) {
        let done = finished(&sys, *id).await;
        assert_same(
            &stems(&sys, &done).await,
            &reference("test/slow_dynamic.onnx", wav),
            "after 20 kills",
        );
    }
}

#[tokio::test]
async fn a_poison_segment_fails_its_song_with_the_reason_and_others_continue() {
    let sys = System::start(Options {
        model: Some(model_path("test/poison_dynamic.onnx")),
        env: env(&[("DME_SEPARATOR_MAX_DELIVER", "3")]),
        ..Options::default()
    })
    .await;
    // One sample of 3.0 at 50,000: only segment 1 (33,075..77,175) sees it.
    let frames = 5 * 44_100;
    let mut left: Vec<f32> = (0..frames).map(|i| (i as f32 * 0.01).sin() * 0.3).collect();
    left[50_000] = 3.0;
    let right = left.iter().map(|v| v * 0.5).collect::<Vec<_>>();
    let poison = dme_audio::encode(&left, &right, 44_100, dme_audio::Format::Wav32f).unwrap();
    let bad = upload_and_select(&sys, poison, "poison.wav").await;
    let good = upload_and_select(&sys, synth_wav(frames, 44_100, 4.0), "good.wav").await;
    let failed = failed(&sys, bad).await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("segment 1") && error.contains("3 attempt"),
        "{error}"
    );
    let jobs = jobs_of(&sys, bad).await;
    let poisoned: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "failed").collect();
    assert_eq!(poisoned.len(), 1, "{jobs:?}");
    assert_eq!(poisoned[0]["segment"], 1);
    assert!(
        poisoned[0]["error"].as_str().unwrap().contains("NaN"),
        "{}",
        poisoned[0]
    );
    finished(&sys, good).await;
}

#[tokio::test]
async fn a_corrupt_segment_payload_is_terminated_at_once() {
    let mut sys = System::start(Options {
        model: Some(model_path("test/conv_dynamic.onnx")),
        ..Options::default()
    })
    .await;
    // No separator while the song is cut, so its input can be damaged before anyone reads it.
    sys.separators[0].kill();
    let id = upload_and_select(&sys, synth_wav(3 * 44_100, 44_100, 2.0), "c.wav").await;
    sys.wait_music(id, "the split", |b| b["state"] == "separating")
        .await;
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = dme_protocol::MusicId(id);
    store
        .put_object(&dme_protocol::objects::segment_input(music, 1), b"xyz")
        .await
        .unwrap();
    sys.add_separator();
    let failed = failed(&sys, id).await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("segment 1 failed after 1 attempt") && error.contains("3 bytes"),
        "{error}"
    );
}

#[tokio::test]
async fn a_worker_crash_loop_is_caught_by_the_max_deliveries_advisory() {
    let mut sys = System::start(Options {
        model: Some(model_path("test/slow_dynamic.onnx")),
        env: quick_redelivery(2),
        ..Options::default()
    })
    .await;
    let id = upload_and_select(&sys, synth_wav(44_100 / 2, 44_100, 3.0), "crash.wav").await;
    // Kill every worker that picks the song's only segment up, twice: its deliveries run out.
    for round in 0..2 {
        dme_testkit::wait_for("the segment to be running", SONG_DEADLINE, || async {
            let jobs = jobs_of(&sys, id).await;
            jobs.iter()
                .any(|j| j["state"] == "running" && j["attempts"] == round + 1)
                .then_some(())
        })
        .await;
        sys.separators[0].kill();
        sys.separators.clear();
        sys.add_separator();
    }
    let failed = failed(&sys, id).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("delivered 2 times"), "{error}");
    let jobs = jobs_of(&sys, id).await;
    assert_eq!(jobs[0]["state"], "failed");
}

#[tokio::test]
async fn a_nats_server_restart_mid_job_loses_nothing() {
    let mut sys = System::start(Options {
        model: Some(model_path("test/slow_dynamic.onnx")),
        ..Options::default()
    })
    .await;
    let wav = synth_wav(8 * 44_100, 44_100, 5.0);
    let id = upload_and_select(&sys, wav.clone(), "n.wav").await;
    sys.wait_music(id, "some progress", |b| {
        b["segments_done"].as_u64() >= Some(2)
    })
    .await;
    sys.nats.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sys.nats.restart();
    let done = finished(&sys, id).await;
    assert_same(
        &stems(&sys, &done).await,
        &reference("test/slow_dynamic.onnx", &wav),
        "after a nats restart",
    );
    let (_, list) = sys.get("/music").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn gateway_splitter_and_mixer_killed_and_restarted_mid_job() {
    let mut sys = System::start(Options {
        model: Some(model_path("test/slow_dynamic.onnx")),
        ..Options::default()
    })
    .await;
    let wav = synth_wav(8 * 44_100, 44_100, 6.0);
    // The splitter dies with the upload in its queue; a new one takes it.
    sys.splitter.as_mut().unwrap().kill();
    let id = upload_and_select(&sys, wav.clone(), "k.wav").await;
    sys.splitter = Some(sys.spawn("splitter", &[]));
    sys.wait_music(id, "separation", |b| b["segments_done"].as_u64() >= Some(1))
        .await;
    // The mixer dies while segments are being reported; the gateway dies too.
    sys.mixer.as_mut().unwrap().kill();
    sys.gateway.as_mut().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    sys.mixer = Some(sys.spawn("mixer", &[]));
    sys.start_gateway().await;
    let done = finished(&sys, id).await;
    assert_same(
        &stems(&sys, &done).await,
        &reference("test/slow_dynamic.onnx", &wav),
        "after restarts",
    );
}

#[tokio::test]
async fn reset_while_processing_leaves_an_empty_system_that_still_works() {
    let sys = System::start(Options {
        separators: 2,
        model: Some(model_path("test/slow_dynamic.onnx")),
        ..Options::default()
    })
    .await;
    let a = upload_and_select(&sys, synth_wav(6 * 44_100, 44_100, 1.0), "a.wav").await;
    upload_and_select(&sys, synth_wav(6 * 44_100, 44_100, 2.0), "b.wav").await;
    sys.wait_music(a, "separation", |b| b["segments_done"].as_u64() >= Some(1))
        .await;
    let (status, _) = sys.post_json("/reset", "").await;
    assert_eq!(status, 200);
    // Work in flight drains away: no record, job or file comes back.
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sys.get("/music").await.1, serde_json::json!([]));
    assert_eq!(sys.get("/job").await.1, serde_json::json!([]));
    assert_eq!(store.object_names("").await.unwrap(), Vec::<String>::new());
    let id = upload_and_select(&sys, synth_wav(2 * 44_100, 44_100, 3.0), "c.wav").await;
    finished(&sys, id).await;
}

#[tokio::test]
async fn fifty_clients_at_once_all_get_their_mix() {
    let sys = std::sync::Arc::new(
        System::start(Options {
            separators: 2,
            model: Some(model_path("test/conv_dynamic.onnx")),
            ..Options::default()
        })
        .await,
    );
    let mut clients = Vec::new();
    for k in 0..50 {
        let sys = sys.clone();
        clients.push(tokio::spawn(async move {
            let wav = synth_wav(44_100 + 100 * k, 44_100, k as f32);
            let (_, done) = sys
                .separate_and_mix(wav, &format!("c{k}.wav"), &["drums", "vocals"])
                .await;
            done["progress"].as_u64()
        }));
    }
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(100));
    }
    let (_, list) = sys.get("/music").await;
    assert_eq!(list.as_array().unwrap().len(), 50);
}

#[tokio::test]
async fn a_song_without_progress_is_reported_stalled_and_recovers() {
    let mut sys = System::start(Options {
        model: Some(model_path("test/conv_dynamic.onnx")),
        gateway_env: env(&[("DME_STALL_AFTER_S", "2")]),
        ..Options::default()
    })
    .await;
    sys.separators[0].kill();
    let id = upload_and_select(&sys, synth_wav(2 * 44_100, 44_100, 1.0), "s.wav").await;
    let stalled = dme_testkit::wait_for(
        "the song to be reported stalled",
        Duration::from_secs(30),
        || async {
            let (_, b) = sys.get(&format!("/music/{id}")).await;
            (b["state"] == "stalled").then_some(b)
        },
    )
    .await;
    assert!(
        stalled["error"].as_str().unwrap().contains("no progress"),
        "{stalled}"
    );
    sys.add_separator();
    let done = finished(&sys, id).await;
    assert_eq!(done["state"], "done");
}

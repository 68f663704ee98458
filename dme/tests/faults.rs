//! Failure handling, proven by killing real processes: separators, the nats-server, the gateway,
//! splitter and mixer; poison segments; reset under load; many clients at once.

mod common;

use dme_testkit::reference::assert_same;
use dme_testkit::system::{env, quick_redelivery};
use std::time::Duration;

use dme_protocol::records::JobState;
use dme_testkit::model as model_path;
use dme_testkit::system::{synth_wav, JobView, Options, System, SONG_DEADLINE};
use dme_testkit::wait_for;
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

async fn stems(sys: &System, done: &Value) -> Vec<Vec<f32>> {
    sys.stem_lanes(done).await
}

/// Jobs of a song.
async fn jobs_of(sys: &System, music: u64) -> Vec<JobView> {
    sys.jobs_of(music).await
}

/// True when every song in `ids` is done.
async fn all_done(sys: &System, ids: &[u64]) -> bool {
    for id in ids {
        if sys.get(&format!("/music/{id}")).await.body["state"] != "done" {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_separator_killed_mid_segment_is_replaced_by_redelivery() {
    let mut sys = System::start(
        DME,
        Options {
            separators: 2,
            model: Some(model_path("test/slow_dynamic.onnx")),
            env: quick_redelivery(5),
            ..Options::default()
        },
    )
    .await;
    let wav = synth_wav(8 * 44_100, 44_100, 1.0);
    let id = sys.upload_and_select_all(wav.clone(), "a.wav").await;
    // Wait until a worker holds a segment, then SIGKILL it.
    let (victim, job_id) = wait_for("a running segment", Duration::from_secs(60), || async {
        jobs_of(&sys, id)
            .await
            .into_iter()
            .find(|j| j.state == "running")
            .and_then(|j| Some((j.worker?, j.job_id)))
    })
    .await;
    assert!(sys.kill_separator(&victim), "{victim} was running");
    let done = sys.finished(id).await;
    assert_same(
        &stems(&sys, &done).await,
        &common::reference("test/slow_dynamic.onnx", &wav),
        "after a kill",
    );
    let job = sys.get(&format!("/job/{job_id}")).await.body;
    assert_eq!(job["state"], "done");
    assert!(
        job["attempts"].as_u64().unwrap() >= 2,
        "the killed segment was redelivered: {job}"
    );
    assert_ne!(job["worker"], victim.as_str(), "another worker finished it");
}

#[tokio::test]
async fn twenty_random_kills_during_five_songs_change_nothing() {
    let mut sys = System::start(
        DME,
        Options {
            separators: 3,
            model: Some(model_path("test/slow_dynamic.onnx")),
            // Enough deliveries that random kills never make a healthy segment look poisonous.
            env: quick_redelivery(30),
            ..Options::default()
        },
    )
    .await;
    let songs: Vec<Vec<u8>> = (0..5)
        .map(|k| synth_wav(3 * 44_100 + 777 * k, 44_100, k as f32 * 7.0))
        .collect();
    let mut ids = Vec::new();
    for (k, wav) in songs.iter().enumerate() {
        ids.push(
            sys.upload_and_select_all(wav.clone(), &format!("s{k}.wav"))
                .await,
        );
    }
    // A fixed pseudo-random sequence: which worker to kill.
    let mut state = 0x2545_F491_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    // Each kill waits for the system to move on (a segment finished since the last kill, or
    // every song done), then hits a worker with a segment in hand when there is one.
    let mut finished_before = 0;
    for _ in 0..20 {
        let jobs = wait_for("progress since the last kill", SONG_DEADLINE, || async {
            let jobs = sys.jobs().await;
            let finished = jobs.iter().filter(|j| j.state == "done").count();
            (finished > finished_before || all_done(&sys, &ids).await).then_some(jobs)
        })
        .await;
        finished_before = jobs.iter().filter(|j| j.state == "done").count();
        let alive: Vec<String> = sys
            .separators
            .iter()
            .map(|p| p.name().trim_start_matches("separator ").to_string())
            .collect();
        let busy: Vec<&String> = jobs
            .iter()
            .filter(|j| j.state == "running")
            .filter_map(|j| j.worker.as_ref())
            .filter(|w| alive.contains(w))
            .collect();
        let victim = match busy.len() {
            0 => alive[next() as usize % alive.len()].clone(),
            n => busy[next() as usize % n].clone(),
        };
        assert!(sys.kill_separator(&victim), "{victim} runs");
        sys.add_separator();
    }
    for (id, wav) in ids.iter().zip(&songs) {
        let done = sys.finished(*id).await;
        assert_same(
            &stems(&sys, &done).await,
            &common::reference("test/slow_dynamic.onnx", wav),
            "after 20 kills",
        );
    }
}

#[tokio::test]
async fn a_poison_segment_fails_its_song_with_the_reason_and_others_continue() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/poison_dynamic.onnx")),
            env: env(&[("DME_SEPARATOR_MAX_DELIVER", "3")]),
            ..Options::default()
        },
    )
    .await;
    // One sample of 3.0 at 50,000: only segment 1 (33,075..77,175) sees it.
    let frames = 5 * 44_100;
    let mut left: Vec<f32> = (0..frames).map(|i| (i as f32 * 0.01).sin() * 0.3).collect();
    left[50_000] = 3.0;
    let right = left.iter().map(|v| v * 0.5).collect::<Vec<_>>();
    let poison = dme_audio::encode(&left, &right, 44_100, dme_audio::Format::Wav32f).unwrap();
    let bad = sys.upload_and_select_all(poison, "poison.wav").await;
    let good = sys
        .upload_and_select_all(synth_wav(frames, 44_100, 4.0), "good.wav")
        .await;
    let failed = sys.failed(bad).await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("segment 1") && error.contains("3 attempt"),
        "{error}"
    );
    let jobs = jobs_of(&sys, bad).await;
    let poisoned: Vec<&JobView> = jobs.iter().filter(|j| j.state == "failed").collect();
    assert_eq!(poisoned.len(), 1, "{jobs:?}");
    assert_eq!(poisoned[0].segment, 1);
    assert!(
        poisoned[0].error.as_deref().unwrap().contains("NaN"),
        "{:?}",
        poisoned[0]
    );
    sys.finished(good).await;
}

#[tokio::test]
async fn a_corrupt_segment_payload_is_terminated_at_once() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    // No separator while the song is cut, so its input can be damaged before anyone reads it.
    sys.separators[0].kill();
    let id = sys
        .upload_and_select_all(synth_wav(3 * 44_100, 44_100, 2.0), "c.wav")
        .await;
    sys.wait_music(id, "the split", |b| b["state"] == "separating")
        .await;
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = dme_protocol::MusicId(id);
    let incarnation = store.music(music).await.unwrap().unwrap().incarnation;
    store
        .put_object(
            &dme_protocol::objects::segment_input(music, incarnation, 1),
            b"xyz",
        )
        .await
        .unwrap();
    sys.add_separator();
    let failed = sys.failed(id).await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("segment 1 failed after 1 attempt") && error.contains("3 bytes"),
        "{error}"
    );
}

#[tokio::test]
async fn a_worker_crash_loop_is_caught_by_the_max_deliveries_advisory() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/slow_dynamic.onnx")),
            env: quick_redelivery(2),
            ..Options::default()
        },
    )
    .await;
    let id = sys
        .upload_and_select_all(synth_wav(44_100 / 2, 44_100, 3.0), "crash.wav")
        .await;
    // Kill every worker that picks the song's only segment up, twice: its deliveries run out.
    sys.crash_loop(id, 2).await;
    let failed = sys.failed(id).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("delivered 2 times"), "{error}");
    let jobs = jobs_of(&sys, id).await;
    assert_eq!(jobs[0].state, "failed");
}

#[tokio::test]
async fn a_nats_server_restart_mid_job_loses_nothing() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/slow_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let wav = synth_wav(8 * 44_100, 44_100, 5.0);
    let id = sys.upload_and_select_all(wav.clone(), "n.wav").await;
    sys.wait_music(id, "some progress", |b| {
        b["segments_done"].as_u64() >= Some(2)
    })
    .await;
    sys.nats.kill();
    // The outage is real once the services see it: the gateway is no longer ready.
    wait_for(
        "the gateway to notice the outage",
        Duration::from_secs(30),
        || async {
            let health = sys.http.get(sys.url("/readyz")).send().await;
            (!health.is_ok_and(|r| r.status().is_success())).then_some(())
        },
    )
    .await;
    sys.nats.restart();
    let done = sys.finished(id).await;
    assert_same(
        &stems(&sys, &done).await,
        &common::reference("test/slow_dynamic.onnx", &wav),
        "after a nats restart",
    );
    let list = sys.get("/music").await.body;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn gateway_splitter_and_mixer_killed_and_restarted_mid_job() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/slow_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let wav = synth_wav(8 * 44_100, 44_100, 6.0);
    // The splitter dies with the upload in its queue; a new one takes it.
    sys.splitter.as_mut().unwrap().kill();
    let id = sys.upload_and_select_all(wav.clone(), "k.wav").await;
    sys.splitter = Some(sys.spawn("splitter", &[]));
    sys.wait_music(id, "separation", |b| b["segments_done"].as_u64() >= Some(1))
        .await;
    // The mixer dies while segments are being reported; the gateway dies too. They come back
    // once a segment has finished without them (read from the store: no gateway to ask).
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = dme_protocol::MusicId(id);
    let segments_done = || async {
        let jobs = store.list_jobs().await.unwrap();
        let of_song = jobs.iter().filter(|j| j.music_id == music);
        let done = of_song
            .clone()
            .filter(|j| j.state == JobState::Done)
            .count();
        (done, of_song.count())
    };
    let (done_before, _) = segments_done().await;
    sys.mixer.as_mut().unwrap().kill();
    sys.gateway.as_mut().unwrap().kill();
    wait_for(
        "a segment done while the mixer is down",
        SONG_DEADLINE,
        || async {
            let (done, all) = segments_done().await;
            (done > done_before || done == all).then_some(())
        },
    )
    .await;
    sys.mixer = Some(sys.spawn("mixer", &[]));
    sys.start_gateway().await;
    let done = sys.finished(id).await;
    assert_same(
        &stems(&sys, &done).await,
        &common::reference("test/slow_dynamic.onnx", &wav),
        "after restarts",
    );
}

#[tokio::test]
async fn reset_while_processing_leaves_an_empty_system_that_still_works() {
    let sys = System::start(
        DME,
        Options {
            separators: 2,
            model: Some(model_path("test/slow_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let a = sys
        .upload_and_select_all(synth_wav(6 * 44_100, 44_100, 1.0), "a.wav")
        .await;
    sys.upload_and_select_all(synth_wav(6 * 44_100, 44_100, 2.0), "b.wav")
        .await;
    sys.wait_music(a, "separation", |b| b["segments_done"].as_u64() >= Some(1))
        .await;
    assert_eq!(sys.post_json("/reset", "").await.status, 200);
    // Work in flight drains away: no record, job or file is left...
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let empty = serde_json::json!([]);
    wait_for("an empty system", Duration::from_secs(30), || async {
        (sys.get("/music").await.body == empty
            && sys.get("/job").await.body == empty
            && store.object_names("").await.unwrap().is_empty())
        .then_some(())
    })
    .await;
    // ...and none comes back while a new song goes through the same workers after it.
    let id = sys
        .upload_and_select_all(synth_wav(2 * 44_100, 44_100, 3.0), "c.wav")
        .await;
    sys.finished(id).await;
    let list = sys.get("/music").await.body;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(jobs_of(&sys, id).await.len() == sys.jobs().await.len());
    for name in store.object_names("").await.unwrap() {
        assert!(
            dme_protocol::objects::of_song(dme_protocol::MusicId(id), &name),
            "{name} is left from before the reset"
        );
    }
}

#[tokio::test]
async fn fifty_clients_at_once_all_get_their_mix() {
    let sys = std::sync::Arc::new(
        System::start(
            DME,
            Options {
                separators: 2,
                model: Some(model_path("test/conv_dynamic.onnx")),
                ..Options::default()
            },
        )
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
    let list = sys.get("/music").await.body;
    assert_eq!(list.as_array().unwrap().len(), 50);
}

#[tokio::test]
async fn a_song_without_progress_is_reported_stalled_and_recovers() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            gateway_env: env(&[("DME_STALL_AFTER_S", "2")]),
            ..Options::default()
        },
    )
    .await;
    sys.separators[0].kill();
    let id = sys
        .upload_and_select_all(synth_wav(2 * 44_100, 44_100, 1.0), "s.wav")
        .await;
    let stalled = wait_for(
        "the song to be reported stalled",
        Duration::from_secs(30),
        || async {
            let b = sys.get(&format!("/music/{id}")).await.body;
            (b["state"] == "stalled").then_some(b)
        },
    )
    .await;
    assert!(
        stalled["error"].as_str().unwrap().contains("no progress"),
        "{stalled}"
    );
    sys.add_separator();
    let done = sys.finished(id).await;
    assert_eq!(done["state"], "done");
}

//! One song at a time: `DELETE /music/{id}` and `POST /music/{id}/retry`, each while other songs
//! are being separated, against real processes.

mod common;

use std::time::Duration;

use dme_protocol::{objects, streams, MusicId};
use dme_testkit::model as model_path;
use dme_testkit::reference::assert_same;
use dme_testkit::system::{quick_redelivery, synth_wav, Options, Response, System, SONG_DEADLINE};
use dme_testkit::wait_for;
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");
const SLOW: &str = "test/slow_dynamic.onnx";

/// `<method> <path>` with no body.
async fn call(sys: &System, method: reqwest::Method, path: &str) -> Response {
    let r = sys
        .http
        .request(method, sys.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Response { status, body }
}

/// Names of every object of `music` in the store, and how many job records it has.
async fn leftovers(store: &dme_storage::Store, music: u64) -> (Vec<String>, usize) {
    let id = MusicId(music);
    let mut names = Vec::new();
    for prefix in objects::prefixes(id) {
        for name in store.object_names(&prefix).await.unwrap() {
            // `orig/12` is also the start of `orig/123`.
            if !prefix.starts_with("orig/") || name == objects::original(id) {
                names.push(name);
            }
        }
    }
    let jobs = store
        .list_jobs()
        .await
        .unwrap()
        .iter()
        .filter(|j| j.music_id == id)
        .count();
    (names, jobs)
}

#[tokio::test]
async fn deleting_a_song_mid_separation_removes_it_and_leaves_the_others_alone() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path(SLOW)),
            ..Options::default()
        },
    )
    .await;
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let keep_wav = synth_wav(6 * 44_100, 44_100, 1.0);
    let gone_wav = synth_wav(8 * 44_100, 44_100, 2.0);
    let keep = sys
        .upload_and_select_all(keep_wav.clone(), "keep.wav")
        .await;
    let gone = sys
        .upload_and_select_all(gone_wav.clone(), "gone.wav")
        .await;
    sys.wait_music(gone, "the song to be separating", |b| {
        b["segments_done"].as_u64() >= Some(1)
    })
    .await;

    let deleted = call(&sys, reqwest::Method::DELETE, &format!("/music/{gone}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["status"], "deleted");
    assert_eq!(sys.get(&format!("/music/{gone}")).await.status, 404);
    let again = call(&sys, reqwest::Method::DELETE, &format!("/music/{gone}")).await;
    assert_eq!(again.status, 404, "{}", again.body);
    assert!(again.body["error"].is_string());
    let malformed = call(&sys, reqwest::Method::DELETE, "/music/x1").await;
    assert_eq!(malformed.status, 400);

    // The other song finishes, exactly.
    let done = sys.finished(keep).await;
    assert_same(
        &sys.stem_lanes(&done).await,
        &common::reference(SLOW, &keep_wav),
        "the song that was not deleted",
    );
    let list = sys.get("/music").await.body;
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["music_id"].as_u64())
        .collect();
    assert_eq!(ids, vec![keep]);

    // Work of the deleted song still in flight is dropped, and nothing of it stays behind:
    // no object, no job record, no queued work.
    wait_for(
        "the deleted song's leftovers to go",
        SONG_DEADLINE,
        || async {
            let (names, jobs) = leftovers(&store, gone).await;
            let queued = store
                .jetstream()
                .get_stream(streams::WORK_STREAM)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages;
            (names.is_empty() && jobs == 0 && queued == 0).then_some(())
        },
    )
    .await;
    assert!(!leftovers(&store, keep).await.0.is_empty());

    // The same file can be uploaded again, and is separated like a new song.
    let again = sys
        .upload_and_select_all(gone_wav.clone(), "gone.wav")
        .await;
    assert_eq!(again, gone);
    let done = sys.finished(gone).await;
    assert_same(
        &sys.stem_lanes(&done).await,
        &common::reference(SLOW, &gone_wav),
        "the song uploaded again after its deletion",
    );
}

#[tokio::test]
async fn a_failed_song_is_retried_from_its_original_while_others_separate() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path(SLOW)),
            env: quick_redelivery(2),
            ..Options::default()
        },
    )
    .await;
    // A song whose only segment's deliveries run out: every worker that takes it is killed.
    let wav = synth_wav(44_100 / 2, 44_100, 3.0);
    let id = sys.upload_and_select_all(wav.clone(), "retry.wav").await;
    sys.crash_loop(id, 2).await;
    let failed = sys.failed(id).await;
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("delivered 2 times"));

    // Another song is being separated while the failed one is retried.
    let other_wav = synth_wav(6 * 44_100, 44_100, 4.0);
    let other = sys
        .upload_and_select_all(other_wav.clone(), "other.wav")
        .await;
    sys.wait_music(other, "the other song to be separating", |b| {
        b["state"] == "separating"
    })
    .await;
    let retried = call(&sys, reqwest::Method::POST, &format!("/music/{id}/retry")).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.body["music_id"], id);
    assert_eq!(retried.body["state"], "queued");
    // Only a failed song is retried.
    let twice = call(&sys, reqwest::Method::POST, &format!("/music/{id}/retry")).await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert!(twice.body["error"]
        .as_str()
        .unwrap()
        .contains("only a failed song"));
    let unknown = call(&sys, reqwest::Method::POST, "/music/12345/retry").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // The retried song is separated again and its selection, kept, is mixed.
    let done = sys.finished(id).await;
    assert!(done["error"].is_null(), "{done}");
    assert_same(
        &sys.stem_lanes(&done).await,
        &common::reference(SLOW, &wav),
        "the retried song",
    );
    let jobs = sys.jobs_of(id).await;
    assert!(jobs.iter().all(|j| j.state == "done"), "{jobs:?}");
    let other_done = sys.finished(other).await;
    assert_same(
        &sys.stem_lanes(&other_done).await,
        &common::reference(SLOW, &other_wav),
        "the song separated meanwhile",
    );
}

#[tokio::test]
async fn a_long_cut_shows_it_is_alive_and_is_never_reported_stalled() {
    // The gateway calls a song stalled after 2 s without a change; the splitter touches the
    // record every second while it cuts. Half an hour of silence takes longer than that to cut.
    let stall_after_s = 2;
    let sys = System::start(
        DME,
        Options {
            env: dme_testkit::system::env(&[
                ("DME_STALL_AFTER_S", &stall_after_s.to_string()),
                ("DME_CUT_HEARTBEAT_S", "1"),
            ]),
            ..Options::default()
        },
    )
    .await;
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = sys
        .upload_ok(dme_testkit::song::silence_flac(30 * 60), "long.flac")
        .await;
    let id = music["music_id"].as_u64().unwrap();
    let started = std::time::Instant::now();
    let mut touches = std::collections::BTreeSet::new();
    let mut states = Vec::new();
    loop {
        let record = store.music(MusicId(id)).await.unwrap().expect("the record");
        let body = sys.get(&format!("/music/{id}")).await.body;
        let state = body["state"].as_str().unwrap_or_default().to_string();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if record.plan.is_some() {
            break;
        }
        touches.insert(record.updated_ms);
        assert!(started.elapsed() < SONG_DEADLINE, "the cut never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut = started.elapsed();
    eprintln!(
        "the cut took {cut:?}; record times seen meanwhile: {}",
        touches.len()
    );
    assert!(
        cut > Duration::from_secs(2 * stall_after_s),
        "the cut took {cut:?}: too short to show anything"
    );
    assert!(
        !states.iter().any(|s| s == "stalled"),
        "states while cut: {states:?}"
    );
    assert!(
        touches.len() >= 2,
        "the record was not touched during the cut"
    );
}

#[tokio::test]
async fn a_song_keeps_at_most_sixteen_selections() {
    let mut sys = System::start(DME, Options::default()).await;
    let store = dme_storage::Store::connect(&sys.nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    // Nothing is mixed while no separator runs: selections wait.
    sys.separators.clear();
    let music = sys
        .upload_ok(synth_wav(2 * 44_100, 44_100, 7.0), "many.wav")
        .await;
    let id = music["music_id"].as_u64().unwrap();
    let drums = music["tracks"][0]["track_id"].as_u64().unwrap();
    let select =
        |gain: i32| format!(r#"{{"tracks": [{{"track_id": {drums}, "gain_db": {gain}}}]}}"#);
    for gain in 0..16 {
        let r = sys.post_json(&format!("/music/{id}"), &select(-gain)).await;
        assert_eq!(r.status, 200, "selection {gain}: {}", r.body);
    }
    let crowded = sys.post_json(&format!("/music/{id}"), &select(-16)).await;
    assert_eq!(crowded.status, 429, "{}", crowded.body);
    assert!(crowded.body["error"]
        .as_str()
        .unwrap()
        .contains("waiting to be mixed"));
    // A selection the song has already is taken again (it becomes the latest).
    let again = sys.post_json(&format!("/music/{id}"), &select(-3)).await;
    assert_eq!(again.status, 200, "{}", again.body);

    // Once they are mixed, new selections push the oldest mixed ones out, files and all.
    sys.add_separator();
    sys.finished(id).await;
    let before = store.music(MusicId(id)).await.unwrap().unwrap();
    assert_eq!(before.mixes.len(), 16);
    let oldest = before.mixes[0].key.clone();
    let oldest_object = objects::mix(MusicId(id), before.incarnation, &oldest);
    assert!(store.object_size(&oldest_object).await.unwrap().is_some());
    let r = sys.post_json(&format!("/music/{id}"), &select(-20)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = sys.finished(id).await;
    let after = store.music(MusicId(id)).await.unwrap().unwrap();
    assert_eq!(after.mixes.len(), 16);
    assert!(after.mixes.iter().all(|m| m.key != oldest));
    assert!(store.object_size(&oldest_object).await.unwrap().is_none());
    assert!(done["final"]
        .as_str()
        .unwrap()
        .ends_with(&after.mixes[15].key));
}

//! The JSON API over NATS, used as a NATS user uses it: a Python client (nats-py, installed by
//! `scripts/setup.sh`; none of dme's code) finds the `dme-api` micro service, uploads a song inline
//! and another through the `dme-uploads` bucket, follows the JSON events, chooses stems by name
//! with a gain, reads songs and jobs, deletes, and meets every kind of error
//! (`tests/clients/nats_api.py`). This test then checks that what it got is exactly what the
//! HTTP API answers, and resets over NATS.

use std::path::PathBuf;
use std::process::Command;

use dme_testkit::system::{synth_wav, Options, System};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The Python of the venv `scripts/setup.sh` made: the one beside its nats-server.
fn python() -> PathBuf {
    dme_testkit::nats_server_binary()
        .parent()
        .expect("nats-server lies in the venv's bin folder")
        .join("python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_user_with_json_alone_gets_what_http_answers() {
    let sys = System::start(DME, Options::default()).await;
    let folder = tempfile::tempdir().unwrap();
    let first = folder.path().join("first.wav");
    let second = folder.path().join("second.wav");
    std::fs::write(&first, synth_wav(44_100 * 4, 44_100, 0.3)).unwrap();
    std::fs::write(&second, synth_wav(44_100 * 2, 44_100, 0.7)).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/nats_api.py");
    let nats_url = sys.nats.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(nats_url)
            .arg(&first)
            .arg(&second)
            .output()
            .expect("the venv's python runs (scripts/setup.sh installs it)")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the NATS client failed: {stderr}");
    let seen: Value = serde_json::from_slice(&output.stdout).expect("the client prints JSON");

    let endpoints: Vec<&str> = seen["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for subject in [
        "dme.api.music.upload",
        "dme.api.music.list",
        "dme.api.music.get",
        "dme.api.music.select",
        "dme.api.music.delete",
        "dme.api.music.retry",
        "dme.api.job.list",
        "dme.api.job.get",
        "dme.api.reset",
    ] {
        assert!(endpoints.contains(&subject), "{subject} in {endpoints:?}");
    }

    // The upload answers as POST /music does: the same bytes over HTTP give the same song.
    let uploaded = &seen["uploaded"];
    let id = uploaded["music_id"].as_u64().unwrap();
    assert_eq!(uploaded["name"], "first song");
    let again = sys
        .upload_ok(synth_wav(44_100 * 4, 44_100, 0.3), "again.wav")
        .await;
    assert_eq!(
        again["music_id"], uploaded["music_id"],
        "POST /music of the same bytes"
    );
    assert_eq!(again["tracks"], uploaded["tracks"]);

    // Events came in order of what happened, each on the song's subject (the client checked).
    let kinds = seen["event_kinds_until_stems"].as_array().unwrap();
    assert_eq!(kinds.last().unwrap(), "stem", "{kinds:?}");

    // The selection by names with a gain is the one HTTP records.
    let tracks = uploaded["tracks"].as_array().unwrap();
    let (first_id, last_id) = (
        &tracks[0]["track_id"],
        &tracks[tracks.len() - 1]["track_id"],
    );
    let selected = &seen["selected"];
    assert_eq!(selected["tracks"], serde_json::json!([first_id, last_id]));
    assert_eq!(selected["gains_db"], serde_json::json!([0.0, -3.0]));

    // Reads equal the HTTP answers, links and all.
    let http = sys.get(&format!("/music/{id}")).await;
    assert_eq!(http.status, 200);
    assert_eq!(
        seen["get"], http.body,
        "dme.api.music.get = GET /music/{{id}}"
    );
    let final_link = seen["final_event"]["final"].as_str().unwrap();
    assert_eq!(http.body["final"].as_str(), Some(final_link));
    assert_eq!(sys.download(final_link).await.status, 200, "{final_link}");
    let listed = seen["list"].as_array().unwrap();
    assert!(listed.iter().any(|m| m["music_id"] == id), "{listed:?}");
    assert_eq!(seen["jobs"], sys.get("/job").await.body);
    let job_id = seen["jobs"][0].as_u64().unwrap();
    assert_eq!(seen["job"], sys.get(&format!("/job/{job_id}")).await.body);

    // The bucket's file became a song, was deleted from the bucket, and the song went too.
    let second = seen["uploaded_object"]["music_id"].as_u64().unwrap();
    assert_eq!(seen["uploaded_object"]["name"], "second");
    assert_eq!(seen["object_left"], serde_json::json!([]));
    assert_eq!(seen["deleted"]["status"], "deleted");
    assert_eq!(sys.get(&format!("/music/{second}")).await.status, 404);

    // Errors were counted by the service's stats, as `nats micro stats dme-api` shows them.
    let stats = &seen["stats"];
    assert!(
        stats["music-get"]["errors"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert!(
        stats["music-upload"]["requests"].as_u64().unwrap() >= 4,
        "{stats}"
    );

    // Reset over NATS empties what HTTP shows, as `POST /reset` does.
    let nats = async_nats::connect(sys.nats.url()).await.unwrap();
    let answer = nats.request("dme.api.reset", "".into()).await.unwrap();
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer, serde_json::json!({"status": "reset"}));
    assert_eq!(sys.get("/music").await.body, serde_json::json!([]));
}

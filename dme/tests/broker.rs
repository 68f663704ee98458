//! A broker crash at any moment of a song's life: the nats-server is SIGKILLed at a random
//! moment (upload, cut, separation, assembly, mixing) and restarted with its store; every song
//! completes with its mix and exact stems. What redelivery cannot bring back (a step whose
//! message was lost with the connection) the mixer's reconciler drives again.

mod common;

use std::time::{Duration, Instant};

use dme_testkit::model as model_path;
use dme_testkit::reference::assert_same;
use dme_testkit::system::{env, synth_wav, Options, System};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");
const MODEL: &str = "test/slow_dynamic.onnx";
const TRIALS: u64 = 20;
/// Seconds without a change (and nothing queued) before the reconciler drives a song again:
/// short, so a trial whose step was lost converges in seconds.
const RECONCILE_AFTER_S: &str = "3";

/// A small deterministic generator (xorshift), so a failing trial can be replayed.
struct Moments(u64);

impl Moments {
    fn next_fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Uploads `wav` (to the gateway at `base`) and selects every track, retrying while the
/// broker is away (the gateway then answers 503); returns the music id and the non-200
/// statuses seen.
async fn upload_until_accepted(
    http: reqwest::Client,
    base: String,
    wav: Vec<u8>,
    name: String,
) -> (u64, Vec<u16>) {
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let music = loop {
        assert!(
            Instant::now() < deadline,
            "upload never accepted: {refused:?}"
        );
        let r = http
            .post(format!("{base}/music?name={name}"))
            .header("content-type", "application/octet-stream")
            .body(wav.clone())
            .send()
            .await
            .expect("an answer to the upload");
        if r.status() == 200 {
            break r.json::<Value>().await.expect("an upload answer");
        }
        refused.push(r.status().as_u16());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let id = music["music_id"].as_u64().expect("a music id");
    let ids: Vec<u64> = music["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .filter_map(|t| t["track_id"].as_u64())
        .collect();
    let body = serde_json::to_string(&ids).expect("ids");
    loop {
        assert!(
            Instant::now() < deadline,
            "selection never accepted: {refused:?}"
        );
        let r = http
            .post(format!("{base}/music/{id}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("an answer to the selection");
        if r.status() == 200 {
            return (id, refused);
        }
        refused.push(r.status().as_u16());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_broker_killed_at_any_moment_of_a_songs_life_loses_no_song() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path(MODEL)),
            env: env(&[("DME_RECONCILE_AFTER_S", RECONCILE_AFTER_S)]),
            ..Options::default()
        },
    )
    .await;
    // How long a song lives without a crash, to spread the crashes over its life.
    let calm = synth_wav(3 * 44_100, 44_100, 100.0);
    let started = Instant::now();
    let (id, _) =
        upload_until_accepted(sys.http.clone(), sys.url(""), calm, "calm.wav".into()).await;
    sys.finished(id).await;
    let life = started.elapsed();
    eprintln!("a song lives {life:?} without a crash");

    let mut moments = Moments(0x5eed_d3e0);
    let mut refusals = Vec::new();
    for trial in 0..TRIALS {
        let wav = synth_wav(3 * 44_100, 44_100, trial as f32 + 1.0);
        // From just before the upload to just after the song's calm end.
        let at = life.mul_f64(1.1 * moments.next_fraction());
        let started = Instant::now();
        let song = tokio::spawn(upload_until_accepted(
            sys.http.clone(),
            sys.url(""),
            wav.clone(),
            format!("trial{trial}.wav"),
        ));
        tokio::time::sleep(at).await;
        // Kill, then restart with the same store after a short outage: the services' connections
        // break at once (SIGKILL closes the server's sockets).
        sys.nats.kill();
        tokio::time::sleep(Duration::from_millis(
            200 + (moments.next_fraction() * 1300.0) as u64,
        ))
        .await;
        if trial == 0 {
            // The gateway says the broker is away, in JSON, while it is.
            let during = sys.get("/music").await;
            assert_eq!(during.status, 503, "{}", during.body);
            assert!(during.body["error"].as_str().unwrap().contains("broker"));
        }
        sys.nats.restart();
        let crash = started.elapsed();
        let song = song.await.expect("the upload task");
        let (id, refused) = song;
        eprintln!("trial {trial}: broker killed {at:?} into the song, back after {crash:?}; refused {refused:?}");
        refusals.extend(refused);
        let done = sys.finished(id).await;
        assert_same(
            &sys.stem_lanes(&done).await,
            &common::reference(MODEL, &wav),
            &format!("trial {trial}"),
        );
        let mix = sys
            .download(done["final"].as_str().expect("a final mix"))
            .await;
        assert_eq!(mix.status, 200, "trial {trial}: the mix downloads");
    }
    // While the broker was away the gateway said so (503), never an internal error.
    assert!(
        refusals.iter().all(|s| *s == 503),
        "refusals while the broker was away: {refusals:?}"
    );
}

//! A simulated fleet (`DME_FAKE_INFER_MS`): separators that wait instead of running the model,
//! so one machine runs more workers than the segment window's floor, and the adaptive window
//! can be seen keeping every one of them busy. Real nats-server, real processes, real audio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dme_model::{Model, ModelOptions, ModelSource};
use dme_protocol::streams;
use dme_testkit::model as model_path;
use dme_testkit::system::{decode_bytes, env, synth_wav, Options, System};
use sampler::Sampler;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Fake separators: more than the window's floor below.
const WORKERS: usize = 6;

/// The window's floor (`DME_SEGMENT_WINDOW`): far below the workers, so a fixed window of it
/// would keep four of the six idle.
const FLOOR: &str = "2";

/// The simulated model run: long enough that every worker's segment overlaps the others' (the
/// releases and stores between two runs take milliseconds), short enough for a quick test.
const FAKE_INFER_MS: &str = "300";

/// How often the sampler reads the pool consumer's messages in workers' hands.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// A system of [`WORKERS`] fake separators running the 1 s-segment test model.
async fn fleet() -> (System, String) {
    let model = model_path("test/conv_dynamic.onnx");
    let fingerprint = Model::load(&ModelSource::File(model.clone()), &ModelOptions::default())
        .expect("the test model loads")
        .info()
        .simulated()
        .fingerprint;
    let sys = System::start(
        DME,
        Options {
            separators: WORKERS,
            model: Some(model),
            env: env(&[
                ("DME_SEGMENT_WINDOW", FLOOR),
                ("DME_FAKE_INFER_MS", FAKE_INFER_MS),
            ]),
            ..Options::default()
        },
    )
    .await;
    (sys, fingerprint)
}

mod sampler {
    //! A background reader of the pool consumer's messages in workers' hands, keeping the most
    //! it saw.

    use super::*;

    /// Samples `num_ack_pending` of a pool consumer until dropped.
    pub struct Sampler {
        pub most: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Sampler {
        pub async fn start(nats_url: &str, fingerprint: &str) -> Sampler {
            let client = async_nats::connect(nats_url).await.expect("NATS");
            let js = async_nats::jetstream::new(client);
            let name = streams::separator_consumer(fingerprint);
            let most = Arc::new(AtomicU64::new(0));
            let seen = most.clone();
            let task = tokio::spawn(async move {
                loop {
                    if let Ok(stream) = js.get_stream(streams::WORK_STREAM).await {
                        if let Ok(info) = stream.consumer_info(&name).await {
                            seen.fetch_max(info.num_ack_pending as u64, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
            });
            Sampler { most, task }
        }

        /// The most segments seen in workers' hands at once, from now on.
        pub fn reset(&self) {
            self.most.store(0, Ordering::Relaxed);
        }

        pub fn most(&self) -> u64 {
            self.most.load(Ordering::Relaxed)
        }
    }

    impl Drop for Sampler {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

#[tokio::test]
async fn one_song_alone_keeps_every_worker_busy_and_a_short_one_still_overtakes_it() {
    let (sys, fingerprint) = fleet().await;
    let sampler = Sampler::start(&sys.nats.url(), &fingerprint).await;

    // One song of about 40 one-second segments: with a window fixed at 2 only 2 (or 3) would
    // be in workers' hands at once; the adaptive window gives every worker one.
    let wav = synth_wav(30 * 44_100, 44_100, 1.0);
    let song = sys.upload_ok(wav.clone(), "alone.wav").await;
    let id = song["music_id"].as_u64().expect("a music id");
    let all: Vec<&str> = vec!["drums", "bass", "other", "vocals"];
    sys.select(&song, &all).await;
    let done = sys
        .wait_music(id, "the song alone", |b| {
            b["progress"] == 100 && b["final"].is_string()
        })
        .await;
    assert_eq!(
        sampler.most(),
        WORKERS as u64,
        "segments in workers' hands at once, one song alone on {WORKERS} workers"
    );

    // The fake's stems: the first stem is the input, every other one silence, exactly (the
    // overlap-add of identical windows gives the input back; silence stays 0).
    let input = decode_bytes(&wav, "wav");
    let lanes = sys.stem_lanes(&done).await;
    assert_eq!(lanes.len(), 8);
    assert_eq!(lanes[0].len(), input.frames());
    let most_off = |got: &[f32], want: &[f32]| {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(most_off(&lanes[0], &input.left) <= 1e-6);
    assert!(most_off(&lanes[1], &input.right) <= 1e-6);
    for silent in &lanes[2..] {
        assert!(
            silent.iter().all(|s| *s == 0.0),
            "a fake stem is not silent"
        );
    }

    // Two songs: a long one, then a short one while the long one separates. They share the
    // workers (every worker still busy), and the short one is not stuck behind the long one.
    sampler.reset();
    let long = sys
        .upload_ok(synth_wav(90 * 44_100, 44_100, 2.0), "long.wav")
        .await;
    let long_id = long["music_id"].as_u64().expect("a music id");
    sys.wait_music(long_id, "the long song to separate", |b| {
        b["state"] == "separating"
    })
    .await;
    let short = sys
        .upload_ok(synth_wav(8 * 44_100, 44_100, 3.0), "short.wav")
        .await;
    let short_id = short["music_id"].as_u64().expect("a music id");
    let started = Instant::now();
    sys.wait_music(short_id, "the short song", |b| b["progress"] == 100)
        .await;
    let long_now = sys.get(&format!("/music/{long_id}")).await.body;
    assert!(
        long_now["progress"].as_u64().expect("a progress") < 100,
        "the long song finished first (short song took {:?}): {long_now}",
        started.elapsed()
    );
    sys.wait_music(long_id, "the long song", |b| b["progress"] == 100)
        .await;
    assert_eq!(
        sampler.most(),
        WORKERS as u64,
        "two songs on {WORKERS} workers"
    );
}

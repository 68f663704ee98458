//! Recovery, proven against a real nats-server and the real services: a song uploaded again
//! after a reset is separated like a new one, a handler that panics never holds its message,
//! a crash loop is caught even when no mixer runs at the time, and a durable consumer takes the
//! settings of the service that starts last.

mod common;

use dme_testkit::reference::assert_same;
use dme_testkit::system::quick_redelivery;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dme_protocol::messages::{MusicUploaded, SegmentWork};
use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{now_ms, streams, subjects, Incarnation, MusicId, SegmentPlan};
use dme_storage::work::{self, Delivery, Handler, HandlerError};
use dme_storage::{Store, StoreError};
use dme_testkit::model as model_path;
use dme_testkit::system::{synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::{wait_for, NatsServer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// How long a test store waits for NATS.
const CONNECT: Duration = Duration::from_secs(5);

/// How long a pull request of this test waits for the server's answer (it expires after 1 s).
const PULL_ANSWER: Duration = Duration::from_secs(5);

/// `POST /reset`, then waits until the gateway lists no song.
async fn reset(sys: &System) {
    assert_eq!(sys.post_json("/reset", "").await.status, 200);
    let empty = serde_json::json!([]);
    wait_for("no song listed", Duration::from_secs(30), || async {
        (sys.get("/music").await.body == empty).then_some(())
    })
    .await;
}

async fn store(sys: &System) -> Store {
    Store::connect(&sys.nats.url(), "test", CONNECT)
        .await
        .unwrap()
}

// 1. Reset, then the same bytes again.

#[tokio::test]
async fn the_same_file_uploaded_after_a_reset_of_a_finished_song_is_separated_again() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let wav = synth_wav(3 * 44_100, 44_100, 1.0);
    let id = sys.upload_and_select_all(wav.clone(), "again.wav").await;
    let before = sys.stem_lanes(&sys.finished(id).await).await;
    reset(&sys).await;
    // Same bytes, same id; JetStream still remembers `up-<id>`, `seg-<id>-…` and `done-<id>-…`
    // of the first life of the song, so without an incarnation in the message ids the upload
    // would be dropped as a duplicate and the song stay queued for good.
    let again = sys.upload_and_select_all(wav, "again.wav").await;
    assert_eq!(again, id);
    let done = sys.finished(id).await;
    assert_eq!(done["state"], "done");
    assert_eq!(done["segments_done"], done["segments"]);
    assert_eq!(sys.stem_lanes(&done).await, before, "the same stems again");
    let jobs = sys.jobs_of(id).await;
    assert!(
        !jobs.is_empty() && jobs.iter().all(|j| j.state == "done"),
        "{jobs:?}"
    );
}

#[tokio::test]
async fn the_same_file_uploaded_again_right_after_a_reset_mid_separation_is_a_new_song() {
    let sys = System::start(
        DME,
        Options {
            separators: 2,
            model: Some(model_path("test/slow_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let wav = synth_wav(6 * 44_100, 44_100, 2.0);
    let id = sys.upload_and_select_all(wav.clone(), "mid.wav").await;
    sys.wait_music(id, "separation under way", |b| {
        b["state"] == "separating" && b["segments_done"].as_u64() >= Some(1)
    })
    .await;
    // Uploaded again at once: the separators still hold segments of the first life of the song,
    // and finish them while the new one is being cut. That work must neither count for the new
    // song nor touch its jobs and objects.
    reset(&sys).await;
    let again = sys.upload_and_select_all(wav.clone(), "mid.wav").await;
    assert_eq!(again, id);
    let done = sys.finished(id).await;
    assert_eq!(done["segments_done"], done["segments"]);
    assert_same(
        &sys.stem_lanes(&done).await,
        &common::reference("test/slow_dynamic.onnx", &wav),
        "the song uploaded again",
    );
    let jobs = sys.jobs_of(id).await;
    assert_eq!(jobs.len() as u64, done["segments"].as_u64().unwrap());
    assert!(jobs.iter().all(|j| j.state == "done"), "{jobs:?}");
    let list = sys.get("/music").await.body;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

// 2. A handler that panics never holds its message.

/// A handler's error in these tests: NATS failed.
#[derive(Debug)]
struct TestError(StoreError);

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "test handler: {}", self.0)
    }
}

impl std::error::Error for TestError {}

impl HandlerError for TestError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Cuts an upload the way the splitter did before it checked the registered model: a plan for
/// the model's segment, which panics (an `assert!` in `SegmentPlan::new`) when the segment read
/// from NATS is below 4 samples. Records each delivery; gives up the way the services do.
struct PlansWithTheRegisteredModel {
    store: Store,
    deliveries: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl Handler for PlansWithTheRegisteredModel {
    type Message = MusicUploaded;
    type Error = TestError;
    const RETRY_DELAY: Duration = Duration::from_millis(500);

    async fn handle(&self, uploaded: &MusicUploaded, delivery: Delivery) -> Result<(), TestError> {
        self.deliveries
            .lock()
            .unwrap()
            .push((delivery.attempt, Instant::now()));
        let models = self.store.models().await.map_err(TestError)?;
        let model = models.into_iter().next().expect("a registered model");
        let record = self
            .store
            .music(uploaded.music_id)
            .await
            .map_err(TestError)?;
        let frames = (record.expect("a record").duration_s * 44_100.0) as u64;
        let plan = SegmentPlan::new(frames, model.segment, model.fixed);
        assert!(plan.count() > 0);
        Ok(())
    }

    async fn give_up(&self, uploaded: &MusicUploaded, delivery: Delivery, reason: &str) {
        let reason = format!("failed after {} attempt(s): {reason}", delivery.attempt);
        dme_storage::song::fail(
            &self.store,
            uploaded.music_id,
            uploaded.incarnation,
            &reason,
        )
        .await
        .unwrap();
    }
}

fn music_record(music: MusicId, incarnation: Incarnation) -> MusicRecord {
    MusicRecord {
        music_id: music,
        content_hash: "00".repeat(32),
        name: "panic".into(),
        band: String::new(),
        file_name: "panic.wav".into(),
        size: 1,
        codec: "pcm_f32le".into(),
        sample_rate: 44_100,
        channels: 2,
        duration_s: 1.0,
        tracks: Vec::new(),
        model: "m".into(),
        created_ms: now_ms(),
        updated_ms: now_ms(),
        state: MusicState::Queued,
        error: None,
        plan: None,
        separated: Vec::new(),
        parts: 0,
        tracks_ready: false,
        mixes: Vec::new(),
        incarnation,
        client: None,
    }
}

#[tokio::test]
async fn a_panicking_handler_is_retried_at_once_and_then_fails_its_song_with_the_panic() {
    let nats = NatsServer::start();
    let store = Store::connect(&nats.url(), "test", CONNECT).await.unwrap();
    // A model record with a 2-sample segment: data read from NATS that made the splitter panic.
    store
        .register_model(&dme_protocol::records::ModelInfo {
            name: "broken".into(),
            fingerprint: "0000000000000000".into(),
            sources: vec!["drums".into()],
            segment: 2,
            fixed: false,
            sample_rate: 44_100,
        })
        .await
        .unwrap();
    let music = MusicId(77);
    let incarnation = Incarnation::fresh();
    assert!(store
        .create_music(&music_record(music, incarnation))
        .await
        .unwrap());
    // An ack wait far longer than the test may take: a message a panic left without a verdict
    // would only come back after it, and its in-progress acks (were they still running) would
    // keep it away for good.
    let redelivery = streams::Redelivery {
        ack_wait: Duration::from_secs(60),
        max_deliver: 3,
        max_ack_pending: 10,
    };
    let consumer = store
        .work_consumer(
            streams::SPLITTER_CONSUMER,
            subjects::WORK_UPLOADED,
            redelivery,
        )
        .await
        .unwrap();
    let uploaded = MusicUploaded {
        music_id: music,
        incarnation,
    };
    store
        .publish(subjects::WORK_UPLOADED, &uploaded, Some(&uploaded.msg_id()))
        .await
        .unwrap();
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(PlansWithTheRegisteredModel {
        store: store.clone(),
        deliveries: deliveries.clone(),
    });
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let worker = tokio::spawn(work::consume(
        consumer,
        redelivery,
        1,
        shutdown.clone(),
        handler,
    ));
    let record = wait_for("the song to fail", Duration::from_secs(30), || async {
        let r = store.music(music).await.unwrap()?;
        (r.state == MusicState::Failed).then_some(r)
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < redelivery.ack_wait,
        "three deliveries took {took:?}: a panic held the message until its ack wait"
    );
    let error = record.error.unwrap();
    assert!(
        error.contains("after 3 attempt(s)")
            && error.contains("the handler panicked")
            && error.contains("segment must be at least 4 samples"),
        "{error}"
    );
    let attempts: Vec<u32> = deliveries.lock().unwrap().iter().map(|d| d.0).collect();
    assert_eq!(attempts, vec![1, 2, 3], "redelivered after each panic");
    // Nothing is held: no delivery waits for an ack, nothing waits to be delivered.
    let stream = store
        .jetstream()
        .get_stream(streams::WORK_STREAM)
        .await
        .unwrap();
    wait_for("no message held", Duration::from_secs(10), || async {
        let info = stream
            .consumer_info(streams::SPLITTER_CONSUMER)
            .await
            .unwrap();
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    shutdown.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn a_registered_model_with_a_broken_segment_fails_the_song_after_redeliveries() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    // The splitter plans with the model record read from NATS; this one panicked it before.
    let store = store(&sys).await;
    let mut model = store.models().await.unwrap().remove(0);
    model.segment = 2;
    store.register_model(&model).await.unwrap();
    let id = sys
        .upload_and_select_all(synth_wav(44_100, 44_100, 3.0), "broken.wav")
        .await;
    let failed = sys.failed(id).await;
    let error = failed["error"].as_str().unwrap();
    let max_deliver = streams::Redelivery::PIPELINE.max_deliver;
    assert!(
        error.contains(&format!("after {max_deliver} attempt(s)"))
            && error.contains("segment of 2 samples"),
        "{error}"
    );
}

// 3. Failure advisories are never lost.

/// The separators' consumer of the one registered model (its pool).
async fn pool(store: &Store) -> String {
    let models = store.models().await.expect("the registered models");
    streams::separator_consumer(&models.first().expect("a registered model").fingerprint)
}

/// Takes one message of the `separator` consumer the way a worker does (a pull request of one
/// message) and never answers it, like a worker that dies with it; returns the segment.
async fn take_and_die(store: &Store) -> SegmentWork {
    let subject = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        streams::WORK_STREAM,
        pool(store).await
    );
    let client = store.client().clone();
    wait_for("a segment to take", SONG_DEADLINE, || {
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            let inbox = client.new_inbox();
            let mut answers = client.subscribe(inbox.clone()).await.ok()?;
            // Answered within a second: the message, or a 408 status when none came.
            let pull = r#"{"batch":1,"expires":1000000000}"#;
            client
                .publish_with_reply(subject, inbox, pull.into())
                .await
                .ok()?;
            let answer = tokio::time::timeout(PULL_ANSWER, answers.next()).await;
            let message = answer.ok().flatten()?;
            dme_protocol::decode::<SegmentWork>(&message.payload).ok()
        }
    })
    .await
}

#[tokio::test]
async fn a_crash_loop_while_no_mixer_runs_fails_the_segment_when_a_mixer_starts() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            env: quick_redelivery(2),
            ..Options::default()
        },
    )
    .await;
    // No mixer, and no separator but the ones this test plays: each takes the song's only
    // segment and dies with it.
    sys.mixer.as_mut().unwrap().kill();
    sys.separators[0].kill();
    sys.separators.clear();
    let id = sys
        .upload_and_select_all(synth_wav(44_100 / 2, 44_100, 3.0), "crash.wav")
        .await;
    let store = store(&sys).await;
    for _ in 0..2 {
        let segment = take_and_die(&store).await;
        assert_eq!((segment.music_id.0, segment.index), (id, 0));
    }
    // A separator comes up and asks for work: JetStream finds the segment out of deliveries,
    // gives it up and says so while no mixer listens, and the advisory waits in its stream.
    sys.add_separator();
    let advisories = store
        .jetstream()
        .get_stream(streams::ADVISORY_STREAM)
        .await
        .unwrap();
    let messages = || async {
        let mut stream = advisories.clone();
        stream.info().await.unwrap().state.messages
    };
    wait_for("the advisory in its stream", SONG_DEADLINE, || async {
        (messages().await == 1).then_some(())
    })
    .await;
    assert_eq!(
        sys.get(&format!("/music/{id}")).await.body["state"],
        "separating"
    );
    sys.mixer = Some(sys.spawn("mixer", &[]));
    let failed = sys.failed(id).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("segment 0 was delivered 2 times"), "{error}");
    let jobs = sys.jobs_of(id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, "failed");
    assert_eq!(jobs[0].error.as_deref(), Some(error));
    // The advisory is consumed and the dead item left the queue.
    wait_for("the advisory consumed", Duration::from_secs(10), || async {
        (messages().await == 0).then_some(())
    })
    .await;
    let work = store
        .jetstream()
        .get_stream(streams::WORK_STREAM)
        .await
        .unwrap();
    let info = work.consumer_info(pool(&store).await).await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

// 4. Consumer settings cannot drift.

#[tokio::test]
async fn a_separator_started_with_other_settings_updates_the_shared_consumer() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            env: quick_redelivery(4),
            ..Options::default()
        },
    )
    .await;
    let store = store(&sys).await;
    let stream = store
        .jetstream()
        .get_stream(streams::WORK_STREAM)
        .await
        .unwrap();
    let settings = || async {
        let info = stream.consumer_info(pool(&store).await).await.unwrap();
        (info.config.ack_wait, info.config.max_deliver)
    };
    assert_eq!(settings().await, (Duration::from_secs(2), 4));
    sys.separators[0].kill();
    sys.separators.clear();
    let mut command = sys.command("separator", &["--worker-id", "sep-b"]);
    command
        .env("DME_SEPARATOR_ACK_WAIT_MS", "3000")
        .env("DME_SEPARATOR_MAX_DELIVER", "6");
    sys.separators
        .push(dme_testkit::Process::spawn("separator sep-b", command));
    wait_for(
        "the consumer to take the new separator's settings",
        SONG_DEADLINE,
        || async { (settings().await == (Duration::from_secs(3), 6)).then_some(()) },
    )
    .await;
    // And it works with them.
    let id = sys
        .upload_and_select_all(synth_wav(44_100, 44_100, 4.0), "b.wav")
        .await;
    sys.finished(id).await;
}

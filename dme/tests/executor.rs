//! Nothing blocks the mixer's async executor, proven against a real nats-server and the real
//! mixer: an hour-long song is assembled (gigabytes of blending and file writes) by a mixer
//! whose executor has a single thread and whose ack wait is 2 s, and no message is delivered
//! twice. Anything that held that thread for an ack wait would stop the in-progress acks and
//! JetStream would deliver the message again.
//!
//! Separating an hour with a model takes far too long for a test, so the test writes what the
//! separators would have left: the song's record with its plan, and every segment's stems.

use std::time::Duration;

use dme_protocol::messages::SegmentDone;
use dme_protocol::records::{MusicRecord, MusicState, TrackRecord};
use dme_protocol::{now_ms, objects, streams, subjects, Incarnation, JobId, MusicId, SegmentPlan};
use dme_storage::Store;
use dme_testkit::{wait_for, NatsServer, Process};
use futures::StreamExt;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// An hour at 44.1 kHz.
const FRAMES: u64 = 60 * 60 * 44_100;

/// htdemucs' segment: 617 segments for the hour.
const SEGMENT: u32 = 343_980;

/// The mixer's ack wait here (the default is 30 s): in-progress acks go every 667 ms.
const ACK_WAIT_MS: &str = "2000";

/// Every stem sample the "separators" wrote: blending equal values gives that value back.
const STEM_VALUE: f32 = 0.25;

/// Stems objects stored at once.
const PUTS_AT_ONCE: usize = 4;

/// How long the whole assembly may take on a loaded 2-core machine (the test prints how long
/// it took).
const ASSEMBLY_DEADLINE: Duration = Duration::from_secs(600);

fn record(music: MusicId, incarnation: Incarnation, plan: SegmentPlan) -> MusicRecord {
    MusicRecord {
        music_id: music,
        content_hash: "00".repeat(32),
        name: "an hour".into(),
        band: String::new(),
        file_name: "hour.wav".into(),
        size: FRAMES * 8,
        codec: "pcm_f32le".into(),
        sample_rate: 44_100,
        channels: 2,
        duration_s: FRAMES as f64 / 44_100.0,
        // One stem keeps the test's disk and time down (1.27 GB of track); the blending per
        // segment is the same work per lane.
        tracks: TrackRecord::for_sources(music, &["vocals".to_string()]),
        model: "m".into(),
        created_ms: now_ms(),
        updated_ms: now_ms(),
        state: MusicState::Separating,
        error: None,
        plan: Some(plan),
        separated: vec![false; plan.count() as usize],
        parts: 0,
        tracks_ready: false,
        mixes: Vec::new(),
        incarnation,
        client: None,
    }
}

#[tokio::test]
async fn an_hour_long_assembly_with_a_short_ack_wait_is_never_redelivered() {
    let nats = NatsServer::start();
    let store = Store::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = MusicId(7_000_001);
    let incarnation = Incarnation::fresh();
    let plan = SegmentPlan::new(FRAMES, SEGMENT, false);
    let started = std::time::Instant::now();
    futures::stream::iter(plan.segments())
        .for_each_concurrent(PUTS_AT_ONCE, |seg| {
            let store = store.clone();
            async move {
                let lane = vec![STEM_VALUE; seg.len as usize];
                let bytes = objects::pack_planar(&[&lane, &lane]);
                let name = objects::segment_stems(music, incarnation, seg.index);
                store.put_object(&name, &bytes).await.unwrap();
            }
        })
        .await;
    assert!(store
        .create_music(&record(music, incarnation, plan))
        .await
        .unwrap());
    for seg in plan.segments() {
        let done = SegmentDone {
            music_id: music,
            index: seg.index,
            job_id: JobId::of(music, seg.index),
            incarnation,
        };
        store
            .publish(subjects::WORK_SEPARATED, &done, Some(&done.msg_id()))
            .await
            .unwrap();
    }
    println!(
        "{} segments' stems stored in {:.1} s",
        plan.count(),
        started.elapsed().as_secs_f64()
    );

    let started = std::time::Instant::now();
    let mut command = std::process::Command::new(DME);
    command
        .arg("mixer")
        .env("DME_NATS_URL", nats.url())
        .env(
            "DME_LOG",
            std::env::var("DME_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("DME_MIXER_ACK_WAIT_MS", ACK_WAIT_MS)
        // One executor thread: whatever blocks it stops the in-progress acks at once.
        .env("TOKIO_WORKER_THREADS", "1");
    let _mixer = Process::spawn("mixer", command);
    let assembled = wait_for("the hour assembled", ASSEMBLY_DEADLINE, || async {
        let r = store.music(music).await.ok()??;
        r.tracks_ready.then_some(r)
    })
    .await;
    println!(
        "assembled by a mixer with one executor thread and a {ACK_WAIT_MS} ms ack wait in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(assembled.state, MusicState::Done, "{:?}", assembled.error);

    // Every event delivered exactly once: the consumer's delivery sequence counts redeliveries
    // too. The last ack may still be on its way, so wait until nothing is pending.
    let consumer = store
        .work_consumer(
            streams::MIXER_ASSEMBLE_CONSUMER,
            subjects::WORK_SEPARATED,
            streams::Redelivery {
                ack_wait: Duration::from_millis(ACK_WAIT_MS.parse().unwrap()),
                ..streams::Redelivery::PIPELINE
            },
        )
        .await
        .unwrap();
    let info = wait_for("every event acked", Duration::from_secs(30), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
        }
    })
    .await;
    assert_eq!(
        info.delivered.consumer_sequence,
        u64::from(plan.count()),
        "deliveries of {} events (more means some were redelivered)",
        plan.count()
    );
    assert_eq!(info.num_redelivered, 0);

    // The track is the whole hour, and blending gave the stems' value back (tracks are stored
    // compressed: read through the decompressing reader).
    let track = objects::track(music, incarnation, "vocals");
    let mut reader = store
        .unpacked_object_reader(&track)
        .await
        .unwrap()
        .expect("the track");
    let mut head = vec![0u8; 4096];
    tokio::io::AsyncReadExt::read_exact(&mut reader, &mut head)
        .await
        .unwrap();
    let data = head
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk")
        + 8;
    let data_bytes = u32::from_le_bytes(head[data - 4..data].try_into().unwrap());
    assert_eq!(
        u64::from(data_bytes),
        FRAMES * 8,
        "the track's samples: one stereo float frame per song frame"
    );
    let first = f32::from_le_bytes(head[data..data + 4].try_into().unwrap());
    assert!((first - STEM_VALUE).abs() < 1e-6, "first sample {first}");
}

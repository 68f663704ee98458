//! A song's life on its record, against a real nats-server.

use std::time::Duration;

use dme_protocol::records::{MusicRecord, MusicState, TrackRecord};
use dme_protocol::{objects, Incarnation, MusicId, SegmentPlan};
use dme_storage::Store;

/// A song failed part-way: its first segments separated and their parts made, the rest not.
fn failed_part_way(music: MusicId, size: u64) -> MusicRecord {
    let plan = SegmentPlan::new(10 * 44_100, 44_100, true);
    let mut separated = vec![false; plan.count() as usize];
    separated[..3].fill(true);
    MusicRecord {
        music_id: music,
        content_hash: "ab".into(),
        name: "song".into(),
        band: String::new(),
        file_name: "song.wav".into(),
        size,
        codec: "pcm_s16le".into(),
        sample_rate: 44_100,
        channels: 2,
        duration_s: 10.0,
        tracks: TrackRecord::for_sources(music, &["drums".into(), "bass".into()]),
        model: "m".into(),
        created_ms: 1,
        updated_ms: 1,
        state: MusicState::Failed,
        error: Some("the model failed".into()),
        plan: Some(plan),
        separated,
        parts: 3,
        tracks_ready: false,
        mixes: Vec::new(),
        incarnation: Incarnation::fresh(),
        client: None,
    }
}

#[tokio::test]
async fn a_retried_song_starts_again_with_nothing_playable() {
    let nats = dme_testkit::NatsServer::start();
    let store = Store::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = MusicId(42);
    let original = vec![7u8; 1000];
    store
        .put_object(&objects::original(music), &original)
        .await
        .unwrap();
    let failed = failed_part_way(music, original.len() as u64);
    assert_eq!(failed.ready_frames(), 3 * 33_075);
    assert!(store.create_music(&failed).await.unwrap());

    let retried = dme_storage::song::retry(&store, music)
        .await
        .unwrap()
        .expect("a failed song is retried");
    assert_eq!(retried.state, MusicState::Queued);
    assert_ne!(retried.incarnation, failed.incarnation);
    // The parts were the failed life's: the new one has none until its own are made.
    assert_eq!((retried.parts, retried.ready_frames()), (0, 0));
    assert!(retried.separated.is_empty() && retried.plan.is_none());
}

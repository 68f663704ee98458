//! A song's life on its record, against a real nats-server.

use std::time::Duration;

mod common;

use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{objects, MusicId};
use dme_storage::Store;

/// A song failed part-way: its first segments separated and their parts made, the rest not.
fn failed_part_way(music: MusicId, size: u64) -> MusicRecord {
    let mut record = common::song(music, size);
    record.separated[..3].fill(true);
    record.parts = 3;
    record.fail("the model failed");
    record
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
    // Its parts stay counted on the record, but a failed song offers nothing to play.
    assert_eq!((failed.parts, failed.ready_frames()), (3, 0));
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

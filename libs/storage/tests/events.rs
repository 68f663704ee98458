//! Progress events published by racing publishers, against a real nats-server.

mod common;

use std::time::Duration;

use dme_protocol::messages::{EventKind, ProgressEvent};
use dme_protocol::records::MusicState;
use dme_protocol::MusicId;
use dme_storage::Store;
use futures::StreamExt;

/// Publishers racing on one song, each with the record as it saw it (the mixer's handlers of
/// its segments, the assembly), tell each change once, and a snapshot from before the stems
/// were ready, published after, is not told at all: no reader sees the song go back.
#[tokio::test]
async fn racing_publishers_tell_a_change_once_and_never_show_a_song_going_back() {
    let nats = dme_testkit::NatsServer::start();
    let store = Store::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let music = MusicId(7);
    let mut record = common::song(music, 1000);
    let segments = record.separated.len();
    let mut snapshots = Vec::new();
    for index in 0..segments {
        record.separated[index] = true;
        snapshots.push(ProgressEvent::of(&record));
    }
    record.parts = segments as u32;
    record.tracks_ready = true;
    record.state = MusicState::Done;
    let stems = ProgressEvent::of(&record);

    // Every snapshot at once, the stems' several times (copies of the last segment's event
    // handled side by side), then the earlier snapshots again, late.
    let racing = snapshots
        .iter()
        .chain(std::iter::repeat_n(&stems, 6))
        .map(|event| store.publish_progress(event));
    futures::future::join_all(racing).await;
    for late in &snapshots {
        store.publish_progress(late).await;
    }

    let mut feed = store.follow_progress(Some(music), 0).await.unwrap();
    let mut told = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), feed.next()).await {
        told.push(event.unwrap().event);
    }
    let kinds: Vec<EventKind> = told.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::Stem).count(),
        1,
        "{kinds:?}"
    );
    let first_ready = told.iter().position(|e| e.tracks_ready).unwrap();
    assert_eq!(told[first_ready].kind, EventKind::Stem);
    assert!(
        told[first_ready..].iter().all(|e| e.tracks_ready),
        "{told:#?}"
    );
    // Nothing newer than the stems came after them: every later publish was of the same state.
    assert!(told[first_ready..].iter().all(|e| *e
        == ProgressEvent {
            kind: e.kind,
            ..stems.clone()
        }));
}

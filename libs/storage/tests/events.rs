//! Progress events published by racing publishers, and work published while its stream does
//! not answer, against a real nats-server.

mod common;

use std::time::Duration;

use dme_protocol::messages::{EventKind, MusicUploaded, ProgressEvent};
use dme_protocol::records::MusicState;
use dme_protocol::{streams, subjects, Incarnation, MusicId};
use dme_storage::{NatsArgs, Store};
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
    race(&store).await;
}

/// The same on a 3-node cluster with every stream on 3 servers, where the stream's leader also
/// refuses a conditional publish while another write of the subject is being applied.
#[tokio::test]
async fn racing_publishers_on_a_replicated_event_stream_tell_a_change_once() {
    let cluster = dme_testkit::cluster::NatsCluster::start(3);
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        nats: NatsArgs,
    }
    let args = <Args as clap::Parser>::parse_from([
        "test",
        "--nats-url",
        &cluster.urls(),
        "--replicas",
        "3",
    ]);
    let store = Store::connect_with(&args.nats, "test").await.unwrap();
    race(&store).await;
}

async fn race(store: &Store) {
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

/// A work publish while nobody answers for the work stream (as while a cluster elects its
/// leader) is sent again until the stream answers, and stored once.
#[tokio::test]
async fn a_work_publish_waits_for_its_stream_to_answer_again() {
    let nats = dme_testkit::NatsServer::start();
    let store = Store::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream(streams::WORK_STREAM).await.unwrap();
    let uploaded = MusicUploaded {
        music_id: MusicId(7),
        incarnation: Incarnation(1),
    };
    let id = uploaded.msg_id();
    let publish = store.publish(subjects::WORK_UPLOADED, &uploaded, Some(&id));
    let back = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Declares every stream again.
        Store::connect(&nats.url(), "test", Duration::from_secs(5))
            .await
            .unwrap();
    };
    let (published, ()) = tokio::join!(publish, back);
    published.unwrap();
    let mut work = js.get_stream(streams::WORK_STREAM).await.unwrap();
    assert_eq!(work.info().await.unwrap().state.messages, 1);
}

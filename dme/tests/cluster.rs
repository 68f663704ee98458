//! Replicated state on a 3-node JetStream cluster (`DME_REPLICAS=3`): every stream, KV bucket
//! and the object store has three copies; SIGKILLing the server that leads the work stream in
//! the middle of a song's separation loses nothing (the song completes with the stems of a
//! single-process run), and the server, restarted with its store, catches up.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream::ClusterInfo};
use dme_protocol::streams;
use dme_testkit::cluster::NatsCluster;
use dme_testkit::model as model_path;
use dme_testkit::reference::assert_same;
use dme_testkit::system::{env, synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::wait_for;

const DME: &str = env!("CARGO_BIN_EXE_dme");
/// About 0.22 s a one-second segment: a 20-second song keeps two separators busy for a few
/// seconds, long enough to kill a server in the middle of it.
const MODEL: &str = "test/slow_dynamic.onnx";
const SONG_SECONDS: usize = 20;
const NODES: usize = 3;
/// Hang guard for cluster answers (leader elections take a few seconds).
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// Every stream dme declares, KV buckets' and the object store's included.
fn every_stream() -> Vec<String> {
    streams::declared_streams().to_vec()
}

/// The replication state of stream `name` (a `$JS.API.STREAM.INFO` request, answered by its
/// leader); `None` while the cluster cannot answer (an election under way).
async fn cluster_of(js: &jetstream::Context, name: &str) -> Option<(usize, ClusterInfo)> {
    let mut stream = js.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    Some((info.config.num_replicas, info.cluster.clone()?))
}

#[tokio::test]
async fn killing_the_work_streams_leader_mid_song_loses_nothing_and_it_catches_up() {
    let mut cluster = NatsCluster::start(NODES);
    let sys = System::start(
        DME,
        Options {
            separators: 2,
            model: Some(model_path(MODEL)),
            env: env(&[("DME_REPLICAS", "3")]),
            nats_url: Some(cluster.urls()),
            ..Options::default()
        },
    )
    .await;
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(urls)
        .await
        .expect("a client of the cluster");
    let js = jetstream::new(client);

    // Everything dme keeps is on all three servers, the work consumers too (they follow their
    // stream).
    for name in every_stream() {
        let (replicas, info) = wait_for(&format!("{name}'s info"), CLUSTER_DEADLINE, || {
            cluster_of(&js, &name)
        })
        .await;
        assert_eq!(replicas, NODES, "{name}: {info:?}");
        assert_eq!(info.replicas.len(), NODES - 1, "{name}: {info:?}");
    }
    let health = sys.get("/healthz").await.body;
    let fingerprint = health["model"]["fingerprint"].as_str().expect("the model");
    let pool = streams::separator_consumer(fingerprint);
    let peers = wait_for(
        "the separator consumer's leader",
        CLUSTER_DEADLINE,
        || async {
            let work = js.get_stream(streams::WORK_STREAM).await.ok()?;
            let info = work.consumer_info(&pool).await.ok()?;
            info.cluster.clone().filter(|c| c.leader.is_some())
        },
    )
    .await;
    assert_eq!(peers.replicas.len(), NODES - 1, "{peers:?}");

    let wav = synth_wav(SONG_SECONDS * 44_100, 44_100, 5.0);
    let id = sys.upload_and_select_all(wav.clone(), "cluster.wav").await;
    let (done, total) = wait_for("separation under way", SONG_DEADLINE, || async {
        let jobs = sys.jobs_of(id).await;
        let done = jobs.iter().filter(|j| j.state == "done").count();
        (done >= 1 && done < jobs.len()).then_some((done, jobs.len()))
    })
    .await;
    let leader = wait_for("the work stream's leader", CLUSTER_DEADLINE, || async {
        cluster_of(&js, streams::WORK_STREAM).await?.1.leader
    })
    .await;
    let victim = cluster.index_of(&leader).expect("the leader is a node");
    cluster.kill(victim);
    eprintln!("killed {leader}, the work stream's leader, with {done} of {total} segments done");
    // The kill hit work in flight: the song had not finished when its leader died (read once
    // the gateway reaches a surviving node).
    let (segments_done, segments) = wait_for(
        "the song's progress after the kill",
        CLUSTER_DEADLINE,
        || async {
            let song = sys.get(&format!("/music/{id}")).await;
            (song.status == 200).then(|| {
                (
                    song.body["segments_done"].as_u64().unwrap_or(0),
                    song.body["segments"].as_u64().unwrap_or(0),
                )
            })
        },
    )
    .await;
    assert!(
        segments_done < segments,
        "the song was separated before the kill ({segments_done} of {segments}): it tested nothing"
    );

    let finished = sys.finished(id).await;
    assert_same(
        &sys.stem_lanes(&finished).await,
        &common::reference(MODEL, &wav),
        "after the leader's death",
    );
    let (_, after) = wait_for("a new leader", CLUSTER_DEADLINE, || async {
        cluster_of(&js, streams::WORK_STREAM).await
    })
    .await;
    assert_ne!(after.leader.as_deref(), Some(leader.as_str()), "{after:?}");

    // Back with its store: it rejoins every stream and catches up with what it missed.
    cluster.restart(victim);
    for name in every_stream() {
        wait_for(
            &format!("{leader} to catch up on {name}"),
            CLUSTER_DEADLINE,
            || async {
                let (_, info) = cluster_of(&js, &name).await?;
                let caught_up = info.leader.as_deref() == Some(leader.as_str())
                    || info.replicas.iter().any(|p| {
                        p.name == leader && p.current && !p.offline && p.lag.unwrap_or(0) == 0
                    });
                caught_up.then_some(())
            },
        )
        .await;
    }
}

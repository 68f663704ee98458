//! In-progress acks and concurrent selections, against real processes.
//!
//! A segment that takes several ack waits on a live worker is never redelivered (its worker's
//! in-progress acks hold it); the same worker frozen with SIGSTOP is replaced after the ack
//! wait, and its late result, once resumed, changes nothing. The same selection from ten
//! clients at once is mixed once; different selections racing each other and the assembly each
//! get their own correct mix, and `final` names the latest.

mod common;
mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dme_model::{Model, ModelOptions, ModelSource};
use dme_protocol::{streams, MusicId};
use dme_storage::Store;
use dme_testkit::model as model_path;
use dme_testkit::reference::{self, assert_same};
use dme_testkit::system::{decode_bytes, env, synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::wait_for;
use serde_json::Value;
use watch::ObjectWrites;

const DME: &str = env!("CARGO_BIN_EXE_dme");
const SLOW: &str = "test/slow_dynamic.onnx";
/// The separators' ack wait in these tests: the shortest they accept.
const ACK_WAIT_MS: u64 = 1000;
/// How many ack waits the long segment should take on an idle machine (more on a busy one).
const ACK_WAITS_PER_SEGMENT: f64 = 6.0;

async fn store(sys: &System) -> Store {
    Store::connect(&sys.nats.url(), "test", Duration::from_secs(10))
        .await
        .expect("the test connects to NATS")
}

/// Reads a protobuf varint at `*at`.
fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = bytes[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `model` (an ONNX ModelProto) with its `segment_samples` metadata set to `segment`: the same
/// weights, so the same output, with segments as long as a test needs.
fn with_segment(model: &[u8], segment: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(model.len() + 32);
    let mut at = 0;
    let mut replaced = false;
    while at < model.len() {
        let start = at;
        let tag = varint(model, &mut at);
        match tag & 7 {
            0 => {
                varint(model, &mut at);
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(model, &mut at) as usize;
                let body = &model[at..at + len];
                at += len;
                // Field 14: metadata_props, a StringStringEntryProto {1: key, 2: value}.
                if tag >> 3 == 14 && body.windows(15).any(|w| w == b"segment_samples") {
                    let mut entry = Vec::new();
                    for (field, text) in [
                        (1u64, "segment_samples".to_string()),
                        (2, segment.to_string()),
                    ] {
                        put_varint(&mut entry, field << 3 | 2);
                        put_varint(&mut entry, text.len() as u64);
                        entry.extend_from_slice(text.as_bytes());
                    }
                    put_varint(&mut out, tag);
                    put_varint(&mut out, entry.len() as u64);
                    out.extend_from_slice(&entry);
                    replaced = true;
                    continue;
                }
            }
            other => panic!("wire type {other} in a ModelProto"),
        }
        out.extend_from_slice(&model[start..at]);
    }
    assert!(replaced, "the model has segment_samples metadata");
    out
}

/// A copy of the slow test model, in `dir`, and the length of a song it cuts into one segment
/// that takes about [`ACK_WAITS_PER_SEGMENT`] ack waits here (measured on this machine first;
/// more on a busy one). Returns the model's path and the song's frames.
fn long_segment_model(dir: &Path) -> (PathBuf, usize) {
    let mut model = Model::load(
        &ModelSource::File(model_path(SLOW)),
        &ModelOptions::default(),
    )
    .expect("the slow model loads");
    let probe = 44_100usize;
    let input = vec![0.1f32; 2 * probe];
    model.separate(&input).expect("the model runs");
    let started = Instant::now();
    model.separate(&input).expect("the model runs");
    let per_frame = started.elapsed().as_secs_f64() / probe as f64;
    let wanted = ACK_WAITS_PER_SEGMENT * ACK_WAIT_MS as f64 / 1000.0;
    let frames = ((wanted / per_frame) as usize).clamp(2 * probe, 90 * probe);
    // One segment: the song fits within the first stride (three quarters of the segment).
    let segment = (frames * 4).div_ceil(3) as u32 + 4;
    eprintln!(
        "slow model: {:.0} ms per second of audio; a {:.1} s song in one segment for a \
         {ACK_WAIT_MS} ms ack wait",
        per_frame * 44_100.0 * 1000.0,
        frames as f64 / 44_100.0
    );
    let bytes = std::fs::read(model_path(SLOW)).expect("the model file");
    let path = dir.join("slow_long.onnx");
    std::fs::write(&path, with_segment(&bytes, segment)).expect("the model copy");
    (path, frames)
}

/// The shared separator consumer's (deliveries so far, messages pending that were redelivered).
async fn separator_deliveries(store: &Store) -> (u64, usize) {
    let stream = store
        .jetstream()
        .get_stream(streams::WORK_STREAM)
        .await
        .expect("the work stream");
    let models = store.models().await.expect("the registered models");
    let pool = streams::separator_consumer(&models[0].fingerprint);
    let info = stream
        .consumer_info(pool)
        .await
        .expect("the separator consumer");
    (info.delivered.consumer_sequence, info.num_redelivered)
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pids fit pid_t");
    // SAFETY: kill(2) only sends a signal, to a child of this test that has not been reaped.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

fn quick_acks() -> Vec<(String, String)> {
    env(&[("DME_SEPARATOR_ACK_WAIT_MS", &ACK_WAIT_MS.to_string())])
}

#[tokio::test]
async fn a_segment_of_several_ack_waits_on_a_live_worker_is_not_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let (model, frames) = long_segment_model(dir.path());
    let sys = System::start(
        DME,
        Options {
            separators: 1,
            model: Some(model.clone()),
            env: quick_acks(),
            ..Options::default()
        },
    )
    .await;
    let store = store(&sys).await;
    let wav = synth_wav(frames, 44_100, 5.0);
    let id = sys.upload_and_select_all(wav.clone(), "long.wav").await;
    let job = wait_for("the segment running", SONG_DEADLINE, || async {
        let jobs = sys.jobs_of(id).await;
        jobs.into_iter().find(|j| j.state == "running")
    })
    .await;
    // While it runs, nothing of it is redelivered.
    let mut samples = 0;
    loop {
        let (_, redelivered) = separator_deliveries(&store).await;
        assert_eq!(redelivered, 0, "the live worker's segment was redelivered");
        samples += 1;
        let now = sys.get(&format!("/job/{}", job.job_id)).await.body;
        if now["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = sys.finished(id).await;
    let job = sys.get(&format!("/job/{}", job.job_id)).await.body;
    let ms = job["time_ms"].as_u64().expect("the inference time");
    eprintln!("the segment took {ms} ms of inference, {samples} samples of the consumer");
    assert!(
        ms >= 3 * ACK_WAIT_MS,
        "the segment took {ms} ms, under 3 ack waits ({ACK_WAIT_MS} ms): this run proves nothing"
    );
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(job["worker"], "sep-1", "{job}");
    let (delivered, redelivered) = separator_deliveries(&store).await;
    assert_eq!(
        (delivered, redelivered),
        (1, 0),
        "one delivery of one segment"
    );
    assert_same(
        &sys.stem_lanes(&done).await,
        &common::separate(&model, &decode_bytes(&wav, "wav")),
        "a long segment",
    );
}

#[tokio::test]
async fn a_frozen_worker_is_replaced_after_the_ack_wait_and_its_late_result_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (model, frames) = long_segment_model(dir.path());
    let mut sys = System::start(
        DME,
        Options {
            separators: 2,
            model: Some(model.clone()),
            env: quick_acks(),
            ..Options::default()
        },
    )
    .await;
    let store = store(&sys).await;
    let wav = synth_wav(frames, 44_100, 6.0);
    let id = sys.upload_and_select_all(wav.clone(), "frozen.wav").await;
    let (frozen, job_id) = wait_for("the segment running", SONG_DEADLINE, || async {
        let jobs = sys.jobs_of(id).await;
        let j = jobs.into_iter().find(|j| j.state == "running")?;
        Some((j.worker?, j.job_id))
    })
    .await;
    // Past loading its input, into the model run (a worker frozen while it reads the object
    // store finds the input gone when resumed: a retried read error, also harmless, but slow).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let name = format!("separator {frozen}");
    let pid = sys
        .separators
        .iter()
        .find(|p| p.name() == name)
        .expect("the worker runs")
        .id();
    signal(pid, libc::SIGSTOP);
    let done = sys.finished(id).await;
    let job = sys.get(&format!("/job/{job_id}")).await.body;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "redelivered once, after the ack wait: {job}"
    );
    assert_ne!(
        job["worker"],
        frozen.as_str(),
        "another worker finished it: {job}"
    );
    let reference = common::separate(&model, &decode_bytes(&wav, "wav"));
    assert_same(&sys.stem_lanes(&done).await, &reference, "replaced");
    let mix = sys.download(done["final"].as_str().expect("a mix")).await;

    // Resumed, the frozen worker finishes its copy late. With the other worker gone, a second
    // song can only be separated by it, after that late segment: once it is done, so is the
    // late result.
    let writes = ObjectWrites::watch(&store).await;
    signal(pid, libc::SIGCONT);
    let other = job["worker"].as_str().expect("a worker").to_string();
    assert!(sys.kill_separator(&other));
    let second = sys
        .upload_and_select_all(synth_wav(44_100, 44_100, 7.0), "after.wav")
        .await;
    sys.finished(second).await;
    let by = sys.jobs_of(second).await;
    assert!(
        by.iter()
            .all(|j| j.worker.as_deref() == Some(frozen.as_str())),
        "{by:?}"
    );

    let prefix = |n: &String| dme_protocol::objects::of_song(MusicId(id), n);
    let late: Vec<String> = writes.names().into_iter().filter(prefix).collect();
    assert!(late.is_empty(), "the late result wrote: {late:?}");
    let after = sys.get(&format!("/job/{job_id}")).await.body;
    assert_eq!(after, job, "the job record is unchanged");
    let song = sys.get(&format!("/music/{id}")).await.body;
    assert_eq!(song["state"], "done", "{song}");
    assert!(song["error"].is_null(), "{song}");
    assert_eq!(song["segments_done"], 1);
    assert_same(
        &sys.stem_lanes(&song).await,
        &reference,
        "after the late result",
    );
    let again = sys.download(done["final"].as_str().unwrap()).await;
    assert_eq!(again.bytes, mix.bytes, "the mix is unchanged");
}

/// The sum of the selected stems (`stems` as `S × 2` lanes), as the mix should be.
fn expected_mix(stems: &[Vec<f32>], selected: &[usize]) -> Vec<Vec<f32>> {
    let len = stems[0].len();
    (0..2)
        .map(|c| {
            (0..len)
                .map(|i| selected.iter().map(|s| stems[2 * s + c][i]).sum())
                .collect()
        })
        .collect()
}

/// The mix `key` of song `id` as float lanes.
async fn mix_lanes(sys: &System, id: u64, key: &str) -> Vec<Vec<f32>> {
    let url = sys.url(&format!("/music/{id}/mix/{key}?format=wav32f"));
    let mix = sys.download(&url).await;
    assert_eq!(mix.status, 200, "{url}");
    let (audio, _) = dme_audio::read_wav(&mix.bytes).expect("a float WAV");
    vec![audio.left, audio.right]
}

/// Posts `selected` (stem indices of the upload answer `music`) from a fresh client.
async fn post_selection(sys: &System, music: &Value, selected: &[usize]) -> u16 {
    let id = music["music_id"].as_u64().unwrap();
    let ids: Vec<u64> = selected
        .iter()
        .map(|s| music["tracks"][s]["track_id"].as_u64().unwrap())
        .collect();
    let body = serde_json::to_string(&ids).unwrap();
    sys.post_json(&format!("/music/{id}"), &body).await.status
}

fn key(selected: &[usize]) -> String {
    dme_protocol::objects::selection_key(selected)
}

#[tokio::test]
async fn concurrent_selections_are_mixed_once_each_and_final_names_the_latest() {
    let sys = System::start(
        DME,
        Options {
            separators: 1,
            model: Some(model_path(SLOW)),
            ..Options::default()
        },
    )
    .await;
    let store = store(&sys).await;
    let writes = ObjectWrites::watch(&store).await;
    let music = sys
        .upload_ok(synth_wav(3 * 44_100, 44_100, 8.0), "sel.wav")
        .await;
    let id = music["music_id"].as_u64().unwrap();
    // Racing each other and the separation: three selections at once while it separates...
    let early: [&[usize]; 3] = [&[0], &[1, 2], &[0, 3]];
    let statuses =
        futures::future::join_all(early.iter().map(|s| post_selection(&sys, &music, s))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // ...and three more at the assembly: when the last segment is separated.
    wait_for("the last segment", SONG_DEADLINE, || async {
        let b = sys.get(&format!("/music/{id}")).await.body;
        (b["segments"].as_u64()? > 0 && b["segments_done"] == b["segments"]).then_some(())
    })
    .await;
    let late: [&[usize]; 3] = [&[2], &[1, 3], &[0, 1, 2]];
    let statuses =
        futures::future::join_all(late.iter().map(|s| post_selection(&sys, &music, s))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let done = sys.finished(id).await;
    let record = store.music(MusicId(id)).await.unwrap().unwrap();
    let latest = record.mixes.last().expect("selections").key.clone();
    assert!(
        done["final"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mix/{latest}")),
        "final names the latest selection {latest}: {done}"
    );
    let stems = sys.stem_lanes(&done).await;
    for selected in early.iter().chain(&late) {
        let got = mix_lanes(&sys, id, &key(selected)).await;
        let err = reference::max_abs_diff(&got, &expected_mix(&stems, selected));
        assert!(
            err <= 1e-5,
            "mix {selected:?} differs from its stems' sum by {err}"
        );
    }

    // The same new selection from ten clients at once: one mix.
    let same: &[usize] = &[1, 2, 3];
    let before = writes.names().len();
    let statuses =
        futures::future::join_all((0..10).map(|_| post_selection(&sys, &music, same))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let done = sys.finished(id).await;
    assert!(
        done["final"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mix/{}", key(same))),
        "{done}"
    );
    wait_for("the mix requests to be handled", SONG_DEADLINE, || async {
        (store.queued_work(MusicId(id)).await.ok()? == 0).then_some(())
    })
    .await;
    let object = dme_protocol::objects::mix(MusicId(id), record.incarnation, &key(same));
    let renders = writes.names()[before..]
        .iter()
        .filter(|n| **n == object)
        .count();
    assert_eq!(
        renders, 1,
        "ten clients' selection {same:?} rendered {renders} times"
    );
    let got = mix_lanes(&sys, id, &key(same)).await;
    let err = reference::max_abs_diff(&got, &expected_mix(&stems, same));
    assert!(
        err <= 1e-5,
        "mix {same:?} differs from its stems' sum by {err}"
    );
    // Selecting an earlier selection again makes it the latest, without mixing it again.
    assert_eq!(post_selection(&sys, &music, early[1]).await, 200);
    let done = sys.finished(id).await;
    assert!(
        done["final"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mix/{}", key(early[1]))),
        "{done}"
    );
    let again = writes.names()[before..]
        .iter()
        .filter(|n| n.starts_with(&format!("mix/{id}/")))
        .count();
    assert_eq!(
        again,
        1,
        "only the new selection was rendered: {:?}",
        writes.names()
    );
}

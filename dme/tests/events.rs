//! Live events over HTTP (`GET /music/{id}/events`, `GET /events`) read as a plain HTTP client
//! reads a Server-Sent Events stream, against a real nats-server and the real services.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::time::Duration;

use dme_testkit::model as model_path;
use dme_testkit::system::{env, synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::wait_for;
use futures::{Stream, StreamExt};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Heartbeat interval in these tests (seconds): short, so a quiet stream shows one soon.
const HEARTBEAT_S: &str = "1";

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq)]
enum Sse {
    /// An event: its id (when it has one), its type and its JSON data.
    Event {
        id: Option<u64>,
        kind: String,
        data: Value,
    },
    /// A comment line (`: text`).
    Comment(String),
}

/// An open event stream, parsed as the SSE format says (fields up to a blank line; only what
/// dme sends: `id`, `event`, `data` and comments).
struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buffer: String,
}

impl EventStream {
    /// The next item; panics when the stream ends or nothing comes for [`SONG_DEADLINE`]
    /// (a hang guard, not a timed assertion: heartbeats come every second).
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return parse_block(block.trim_end_matches('\n'));
            }
            let chunk = tokio::time::timeout(SONG_DEADLINE, self.body.next())
                .await
                .expect("the event stream went silent")
                .expect("the event stream ended")
                .expect("the event stream broke");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("an event stream is UTF-8"));
        }
    }

    /// The next event, skipping comments.
    async fn next_event(&mut self) -> (Option<u64>, String, Value) {
        loop {
            if let Sse::Event { id, kind, data } = self.next().await {
                return (id, kind, data);
            }
        }
    }
}

fn parse_block(block: &str) -> Sse {
    let mut id = None;
    let mut kind = None;
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            assert!(
                id.is_none() && kind.is_none() && data.is_empty(),
                "a comment inside an event: {block:?}"
            );
            return Sse::Comment(comment.trim().to_string());
        }
        let (field, value) = line.split_once(": ").expect("a `field: value` line");
        match field {
            "id" => id = Some(value.parse().expect("a numeric event id")),
            "event" => kind = Some(value.to_string()),
            "data" => data.push(value),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    assert_eq!(data.len(), 1, "one data line per event: {block:?}");
    Sse::Event {
        id,
        kind: kind.expect("an event type"),
        data: serde_json::from_str(data[0]).expect("JSON data"),
    }
}

/// A client without an overall time limit (a stream lasts as long as it is read).
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
}

/// `GET <path>` with `Last-Event-ID` when given; panics unless it is a 200 event stream.
async fn open(
    sys: &System,
    client: &reqwest::Client,
    path: &str,
    last: Option<&str>,
) -> EventStream {
    let mut req = client.get(sys.url(path));
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last);
    }
    let r = req.send().await.expect("an answer");
    let status = r.status();
    let headers = r.headers().clone();
    if status != 200 {
        let body = r.text().await.unwrap_or_default();
        panic!("GET {path}: {status} {body}");
    }
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    EventStream {
        body: Box::pin(r.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec()))),
        buffer: String::new(),
    }
}

/// The status and JSON body of `GET <path>` (with `Last-Event-ID` when given).
async fn refused(sys: &System, path: &str, last: Option<&str>) -> (u16, Value) {
    let mut req = streaming_client().get(sys.url(path));
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last);
    }
    let r = req.send().await.expect("an answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn is_done(data: &Value) -> bool {
    data["progress"] == 100 && data["final"].is_string()
}

#[tokio::test]
async fn a_songs_events_arrive_live_in_order_and_resume_exactly_after_an_id() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/slow_dynamic.onnx")),
            gateway_env: env(&[("DME_SSE_HEARTBEAT_S", HEARTBEAT_S)]),
            ..Options::default()
        },
    )
    .await;
    let client = streaming_client();
    // 6 s at a 44 100-sample segment and a 33 075 stride: 8 segments.
    let music = sys
        .upload_ok(synth_wav(6 * 44_100, 44_100, 2.0), "live.wav")
        .await;
    let id = music["music_id"].as_u64().unwrap();
    let path = format!("/music/{id}/events");
    let mut stream = open(&sys, &client, &path, None).await;

    // First the song as it is now, built from its record.
    let (first_id, kind, now) = stream.next_event().await;
    assert_eq!(now["music_id"], id, "{now}");
    assert_eq!(kind, "progress", "{now}");
    assert_eq!(now["kind"], "progress");
    assert!(now["instruments"].as_array().unwrap().is_empty(), "{now}");
    assert_eq!(now["tracks"].as_array().unwrap().len(), 4, "{now}");
    let first_id = first_id.expect("the current state carries the stream's position");

    // Then every change, live, while the song is separated and mixed.
    sys.select(&music, &["drums", "bass", "other", "vocals"])
        .await;
    let mut live: Vec<(u64, String, Value)> = Vec::new();
    loop {
        let (event_id, kind, data) = stream.next_event().await;
        let event_id = event_id.expect("a live event has an id");
        assert_eq!(data["music_id"], id, "{data}");
        assert_ne!(kind, "failed", "{data}");
        assert_eq!(data["kind"], kind.as_str(), "{data}");
        let done = is_done(&data);
        live.push((event_id, kind, data));
        if done {
            break;
        }
    }
    let ids: Vec<u64> = live.iter().map(|(i, ..)| *i).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > first_id,
        "ids increase: {first_id} then {ids:?}"
    );
    let segments = live.last().unwrap().2["segments"].as_u64().unwrap();
    assert_eq!(segments, 8);
    // The separated segments' events came through (in any order: the mixer counts segments
    // concurrently), with the share of the song done, the whole song's before the stems. (A
    // segment's event that lands after the stems' is behind them and not published, so a count
    // may be missing: never most of them.)
    let before = now["segments_done"].as_u64().unwrap();
    let counted: BTreeSet<u64> = live
        .iter()
        .filter(|(_, kind, _)| kind == "progress")
        .filter_map(|(_, _, d)| d["segments_done"].as_u64())
        .filter(|n| *n > before)
        .collect();
    assert!(
        counted.iter().all(|n| *n <= segments)
            && counted.contains(&segments)
            && 2 * counted.len() as u64 >= segments - before,
        "{counted:?} of {before}..{segments}"
    );
    assert!(
        live.iter()
            .any(|(_, _, d)| d["progress"].as_u64().is_some_and(|p| p > 0 && p < 100)),
        "progress between 0 and 100 seen live"
    );
    let kinds: Vec<&str> = live
        .iter()
        .map(|(_, k, _)| k.as_str())
        .filter(|k| *k != "progress")
        .collect();
    assert_eq!(kinds, ["stem", "mix"], "the stems, then the mix");
    let (_, _, stems) = live.iter().find(|(_, k, _)| k == "stem").unwrap();
    let instruments = stems["instruments"].as_array().unwrap();
    assert_eq!(instruments.len(), 4, "{stems}");
    let (_, _, mixed) = live.last().unwrap();
    assert_eq!(live.last().unwrap().1, "mix");
    // The links are the ones `GET /music/{id}` hands out, and they work.
    let progress = sys.get(&format!("/music/{id}")).await.body;
    assert_eq!(mixed["final"], progress["final"]);
    assert_eq!(mixed["instruments"], progress["instruments"]);
    assert_eq!(mixed["state"], "done");
    let mix = sys.download(mixed["final"].as_str().unwrap()).await;
    assert_eq!(mix.status, 200);
    let stem = sys
        .download(instruments[0]["track"].as_str().unwrap())
        .await;
    assert_eq!(stem.status, 200);
    drop(stream);

    // Reconnecting after an event gets exactly the events after it: no loss, no repeat, and
    // then nothing but heartbeats (the song is finished).
    let cut = live.len() / 3;
    let after = live[cut].0;
    let mut resumed = open(&sys, &client, &path, Some(&after.to_string())).await;
    for expected in &live[cut + 1..] {
        let (event_id, kind, data) = resumed.next_event().await;
        assert_eq!(
            (event_id, &kind, &data),
            (Some(expected.0), &expected.1, &expected.2)
        );
    }
    assert_eq!(resumed.next().await, Sse::Comment("keep-alive".into()));

    // After the latest event: only heartbeats.
    let last = live.last().unwrap().0;
    let mut caught_up = open(&sys, &client, &path, Some(&last.to_string())).await;
    assert_eq!(caught_up.next().await, Sse::Comment("keep-alive".into()));

    // Without an id, a finished song's current state: its stems and mix at once.
    let mut fresh = open(&sys, &client, &path, None).await;
    let (fresh_id, kind, data) = fresh.next_event().await;
    assert_eq!(kind, "mix", "{data}");
    assert!(is_done(&data), "{data}");
    assert_eq!(data["instruments"], progress["instruments"]);
    assert!(fresh_id.unwrap() >= last);
}

#[tokio::test]
async fn all_events_show_every_songs_changes_failures_and_their_current_state() {
    let sys = System::start(
        DME,
        Options {
            // FIRs of the mix, but NaN for a window holding a sample above 1.5.
            model: Some(model_path("test/poison_dynamic.onnx")),
            env: env(&[("DME_SEPARATOR_MAX_DELIVER", "1")]),
            gateway_env: env(&[("DME_SSE_HEARTBEAT_S", HEARTBEAT_S)]),
            ..Options::default()
        },
    )
    .await;
    let client = streaming_client();
    // No song yet: nothing to show, and the heartbeat keeps the quiet stream open.
    let mut stream = open(&sys, &client, "/events", None).await;
    assert_eq!(stream.next().await, Sse::Comment("keep-alive".into()));

    let a = sys
        .upload_and_select_all(synth_wav(3 * 44_100, 44_100, 3.0), "a.wav")
        .await;
    let b = sys
        .upload_and_select_all(synth_wav(4 * 44_100, 44_100, 4.0), "b.wav")
        .await;
    // One sample of 3.0 at 50,000: segment 1 (33,075..77,175) can never be separated.
    let mut left: Vec<f32> = (0..3 * 44_100)
        .map(|i| (i as f32 * 0.01).sin() * 0.3)
        .collect();
    left[50_000] = 3.0;
    let right: Vec<f32> = left.iter().map(|v| v * 0.5).collect();
    let poison = dme_audio::encode(&left, &right, 44_100, dme_audio::Format::Wav32f).unwrap();
    let bad = sys.upload_and_select_all(poison, "poison.wav").await;

    let mut last_id = 0;
    let mut kinds: HashMap<u64, Vec<String>> = HashMap::new();
    let mut finished = BTreeSet::new();
    let mut reason = None;
    while finished.len() < 2 || reason.is_none() {
        let (event_id, kind, data) = stream.next_event().await;
        let event_id = event_id.expect("a live event has an id");
        assert!(
            event_id > last_id,
            "ids increase: {last_id} then {event_id}"
        );
        last_id = event_id;
        let song = data["music_id"].as_u64().unwrap();
        assert!([a, b, bad].contains(&song), "{data}");
        if song == bad && kind == "failed" {
            assert_eq!(data["state"], "failed", "{data}");
            reason = data["error"].as_str().map(String::from);
        } else {
            assert_ne!(kind, "failed", "{data}");
        }
        if is_done(&data) {
            finished.insert(song);
        }
        kinds.entry(song).or_default().push(kind);
    }
    let reason = reason.unwrap();
    assert!(reason.contains("segment 1"), "{reason}");
    for song in [a, b] {
        let news: Vec<&str> = kinds[&song]
            .iter()
            .map(String::as_str)
            .filter(|k| *k != "progress")
            .collect();
        assert_eq!(news, ["stem", "mix"], "song {song}");
    }
    drop(stream);

    // A new client first gets each song as it is now, the last carrying the stream's
    // position.
    let mut fresh = open(&sys, &client, "/events", None).await;
    let mut shown = HashMap::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, kind, data) = fresh.next_event().await;
        ids.push(id);
        shown.insert(data["music_id"].as_u64().unwrap(), (kind, data));
    }
    assert_eq!(shown.len(), 3);
    for song in [a, b] {
        let (kind, data) = &shown[&song];
        assert_eq!(kind, "mix", "{data}");
        assert!(is_done(data), "{data}");
    }
    let (kind, data) = &shown[&bad];
    assert_eq!(kind, "failed", "{data}");
    assert_eq!(data["error"], reason.as_str());
    assert_eq!(ids[..2], [None, None]);
    assert!(ids[2].unwrap() >= last_id);
    assert_eq!(fresh.next().await, Sse::Comment("keep-alive".into()));
}

#[tokio::test]
async fn event_streams_refuse_bad_ids_unknown_songs_and_too_many_clients() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            gateway_env: env(&[
                ("DME_SSE_HEARTBEAT_S", HEARTBEAT_S),
                ("DME_MAX_EVENT_STREAMS", "1"),
            ]),
            ..Options::default()
        },
    )
    .await;
    let (status, body) = refused(&sys, "/music/123456/events", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("123456"), "{body}");
    let (status, body) = refused(&sys, "/music/abc/events", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = refused(&sys, "/events", Some("the last one")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Last-Event-ID"),
        "{body}"
    );
    let r = streaming_client()
        .post(sys.url("/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // One stream at most: a second client is refused while the first reads.
    let client = streaming_client();
    let mut first = open(&sys, &client, "/events", None).await;
    assert_eq!(first.next().await, Sse::Comment("keep-alive".into()));
    let (status, body) = refused(&sys, "/events", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("event streams"),
        "{body}"
    );
    // The first client leaves: its place is freed (nothing of its stream is left behind).
    drop(first);
    drop(client);
    let mut next = wait_for("the place to be freed", Duration::from_secs(30), || async {
        let r = streaming_client()
            .get(sys.url("/events"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r)
    })
    .await
    .bytes_stream();
    let chunk = next.next().await.unwrap().unwrap();
    assert_eq!(&chunk[..], b": keep-alive\n\n");
}

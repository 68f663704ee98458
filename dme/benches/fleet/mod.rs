//! The `fleet` group (issue 14): a simulated fleet of 1 to 64 separators
//! (`DME_FAKE_INFER_MS`: each segment waits a fixed time instead of running the model) on
//! 3-minute songs, segments per second against the ideal `N × 1000 / delay`, written to
//! `bench/results/fleet.json` with a plot, `docs/bench/fleet.svg`, drawn here.
//!
//! Each size runs on a fresh system: N fake separators start; their pool's consumer is paused
//! while the songs are uploaded and cut (so cutting never starves the first waves) and until
//! every separator waits for work; then it is resumed and the time of every segment's done
//! event (a core subscription to the separated events) is taken. The figure is the segments
//! of the first [`WAVES`] full waves (`WAVES × N`) over the time from the resume to the last
//! of them: the last, partial wave of a run is left out, so a count of segments that is not a
//! multiple of N does not count against the fleet.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use dme_model::{Model, ModelOptions, ModelSource};
use dme_protocol::messages::SegmentDone;
use dme_protocol::{streams, subjects, SegmentPlan};
use dme_testkit::system::{env, memory, Options, System};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{figure, round, song_mp3, DME, SONG_SECONDS};

/// Fleet sizes measured (the issue's).
pub const SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// The simulated model run. Every segment still costs the machine real work (its input read
/// and unpacked, its stems packed and stored, five NATS round trips, the mixer's bookkeeping):
/// tens of milliseconds of CPU in all on these 2 cores. 64 workers at 4 s ask for 16 segments
/// a second, well under what the machine's cores and store sustain, so a shortfall is the
/// system's coordination, not the machine. (A real demucs segment takes seconds to a minute.)
pub const FAKE_INFER_MS: u64 = 4_000;

/// Full waves timed per size: enough that the first wave's start-up is a small part.
pub const WAVES: usize = 4;

/// The efficiency the issue asks for at 64 workers.
const TARGET_AT_64: f64 = 0.8;

/// How long one size may take before the bench gives up (a hang guard).
const SIZE_DEADLINE: Duration = Duration::from_secs(300);

/// Songs are cut and separators are up within this, or the bench gives up.
const READY_DEADLINE: Duration = Duration::from_secs(240);

/// What the figures do not say by themselves: where the gap at 64 comes from, measured while
/// the group ran on this 2-core machine (per-process CPU sampled from `/proc` every 2 s during
/// a 64-worker run).
const NOTES: &str = "Where the gap at 64 workers comes from (measured before the release \
fix below): every simulated worker is a process on the same 2 cores, and a size's workers \
start their first segments at the same moment, so every wave ends in a burst. Per segment a \
worker unpacks its input, packs and stores its stems (about 2.5 MB compressed) and the server \
stores them: about 80 ms of CPU across all processes (about one core on average while a \
64-worker run timed its 256 segments in 21 s). A 64-worker wave asks for some 5 CPU-seconds at \
once, and the slowest worker of each burst starts its next segment later: at 64 workers the \
spread from a wave's first to its last done event grew 1.45, 2.5, 3.35 and 4.0 s over the four \
waves (0.1 to 0.3 s at 8 workers, 0.6 to 1.7 s at 32). Workers on machines of their own do not \
share these cores. The mixer, which makes the per-segment compare-and-swap on each song's \
record, used about 2 CPU-seconds over a whole 64-worker run (perf: 1,035 samples at 499 Hz). \
Changed for these figures: (1) a release bug: a finished segment released only up to the \
window as it was now and stopped at the first segment already released, but segments finish \
out of order, so a window that shrank between two releases, or a walk under way below \
another, left segments released by nobody until the mixer's reconciler found the song idle \
(dme/tests/fleet.rs took 78 to 228 s with those stalls, 16 s after the fix); a finished \
segment now releases k + 1 to k + max(w, window), published pipelined (a first fix, from \
k + min(w, window), could still leave a gap, as a review showed); (2) a separator \
reads its pool's load only when it releases segments and its reading is over a second old \
(before: every second in the background, three JetStream API requests, so 64 idle workers \
asked 192 times a second); (3) it reads a segment's input by direct gets instead of creating \
an ordered consumer per object, and marks its job started while it reads; (4) the bench's \
clock starts at the first delivery after the pool is resumed, not at the resume (a pull \
request that waited through the pause is answered only when re-issued, up to 2 s later: 1 \
worker read 0.90 of ideal timed from the resume, 0.97 timed from the delivery). At 64 workers \
before all of these: 0.764 and 0.772; with (2) to (4): 0.789; with (1) to (4), the table, \
lower, with the waves spreading wider (2.8 to 5.6 s): 0.670 with the first fix of (1), 0.662 \
with the pipelined one, so the walk's round trips are not what costs; why releasing every \
segment costs 64 workers more than the stalling walk did is not found yet.";

/// One size's measurement.
struct Point {
    workers: usize,
    songs: usize,
    segments: usize,
    seconds: f64,
    rate: f64,
    ideal: f64,
    separator_rss_kib: u64,
}

/// Runs every size and returns the group's JSON; writes the plot to `svg`.
pub async fn fleet(svg: &Path) -> Value {
    let info = Model::load(&ModelSource::Embedded, &ModelOptions::default())
        .expect("the embedded model loads")
        .info()
        .clone();
    let frames = (SONG_SECONDS * 44_100.0) as u64;
    let per_song = SegmentPlan::new(frames, info.segment, info.fixed).count() as usize;
    // `DME_BENCH_FLEET_SIZES=1,64` measures some sizes only (a quicker look).
    let sizes: Vec<usize> = std::env::var("DME_BENCH_FLEET_SIZES").map_or(SIZES.to_vec(), |v| {
        v.split(',')
            .map(|n| n.trim().parse().expect("DME_BENCH_FLEET_SIZES: numbers"))
            .collect()
    });
    let most = *sizes.iter().max().expect("sizes");
    // One wave more than timed, so the last timed wave is full.
    let songs_for = |n: usize| ((WAVES + 1) * n).div_ceil(per_song).max(1);
    let mut mp3s = Vec::new();
    for seed in 0..songs_for(most) {
        mp3s.push(song_mp3(500 + seed as u64));
    }
    let mut points = Vec::new();
    for n in sizes {
        let p = size(n, songs_for(n), &mp3s, &info.simulated().fingerprint).await;
        eprintln!(
            "bench: fleet {n:>2} workers: {:.2} segments/s of {:.2} ideal ({:.3}), {} songs",
            p.rate,
            p.ideal,
            p.rate / p.ideal,
            p.songs
        );
        points.push(p);
    }
    std::fs::create_dir_all(svg.parent().expect("a folder")).expect("docs/bench");
    std::fs::write(svg, plot(&points)).expect("the plot");
    let mut figures = Vec::new();
    for p in &points {
        let efficiency = round(p.rate / p.ideal, 3);
        let met = (p.workers == 64).then_some(efficiency >= TARGET_AT_64);
        let target = if p.workers == 64 {
            format!("≥ {TARGET_AT_64} of linear")
        } else {
            String::new()
        };
        figures.push(figure(
            &format!(
                "{} workers: segments/s (ideal {})",
                p.workers,
                round(p.ideal, 3)
            ),
            round(p.rate, 3),
            &format!("segments/s, {efficiency} of ideal"),
            &target,
            met,
        ));
    }
    let rss = points
        .iter()
        .map(|p| p.separator_rss_kib)
        .max()
        .unwrap_or(0);
    json!({
        "title": "Simulated fleet: segments per second against the ideal (issue 14)",
        "command": "DME_BENCH_ONLY=fleet cargo bench -p dme --bench system",
        "setup": format!(
            "N separators with DME_FAKE_INFER_MS={FAKE_INFER_MS} (no model run: each segment \
             waits {FAKE_INFER_MS} ms, its stems are the input and silence) on 3-minute songs \
             of {per_song} segments (the embedded model's geometry), a fresh system per N; the \
             pool is paused while the songs are cut and until every separator waits, then the \
             first {WAVES} full waves ({WAVES} × N segments) are timed from the first delivery \
             after the resume to the last of their done events. Ideal = N × 1000 / {FAKE_INFER_MS} segments/s. \
             Peak RSS of one fake separator: {} MiB. Plot: docs/bench/fleet.svg.",
            rss / 1024
        ),
        "figures": figures,
        "notes": NOTES,
        "points": points.iter().map(|p| json!({
            "workers": p.workers,
            "songs": p.songs,
            "segments_timed": p.segments,
            "seconds": round(p.seconds, 3),
            "segments_per_s": round(p.rate, 3),
            "ideal_per_s": round(p.ideal, 3),
            "efficiency": round(p.rate / p.ideal, 3),
            "separator_peak_rss_kib": p.separator_rss_kib,
        })).collect::<Vec<_>>(),
    })
}

/// One fleet size: `n` fake separators, `songs` songs.
async fn size(n: usize, songs: usize, mp3s: &[Vec<u8>], fingerprint: &str) -> Point {
    let delay = FAKE_INFER_MS.to_string();
    let sys = System::start(
        DME,
        Options {
            separators: n,
            env: env(&[("DME_FAKE_INFER_MS", delay.as_str())]),
            ..Options::default()
        },
    )
    .await;
    let client = async_nats::connect(sys.nats.url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client.clone());
    let consumer = streams::separator_consumer(fingerprint);
    // The first separator registers the model before it declares the pool's consumer.
    let ready = Instant::now() + READY_DEADLINE;
    loop {
        let stream = js.get_stream(streams::WORK_STREAM).await.expect("stream");
        if stream.consumer_info(&consumer).await.is_ok() {
            break;
        }
        assert!(Instant::now() < ready, "no pool consumer {consumer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pause = format!("$JS.API.CONSUMER.PAUSE.{}.{consumer}", streams::WORK_STREAM);
    let paused = client
        .request(
            pause.clone(),
            r#"{"pause_until":"2999-01-01T00:00:00Z"}"#.into(),
        )
        .await
        .expect("the pool pauses");
    assert!(
        !String::from_utf8_lossy(&paused.payload).contains("\"error\""),
        "pause refused: {}",
        String::from_utf8_lossy(&paused.payload)
    );
    let mut done_events = client
        .subscribe(format!("{}.>", subjects::WORK_SEPARATED))
        .await
        .expect("a subscription");
    let mut ids = Vec::new();
    for (i, mp3) in mp3s.iter().take(songs).enumerate() {
        let up = sys.upload_ok(mp3.clone(), &format!("fleet{i}.mp3")).await;
        ids.push(up["music_id"].as_u64().expect("a music id"));
    }
    for id in &ids {
        loop {
            let b = sys.get(&format!("/music/{id}")).await.body;
            assert_ne!(b["state"], "failed", "{b}");
            if b["state"] == "separating" {
                break;
            }
            assert!(Instant::now() < ready, "song {id} was not cut: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every separator up and waiting for work (its one pull request).
    loop {
        let stream = js.get_stream(streams::WORK_STREAM).await.expect("stream");
        let info = stream.consumer_info(&consumer).await.expect("the pool");
        if info.num_waiting >= n {
            break;
        }
        assert!(
            Instant::now() < ready,
            "only {} of {n} separators wait for work",
            info.num_waiting
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = client
        .request(pause, "{}".into())
        .await
        .expect("the pool resumes");
    assert!(
        !String::from_utf8_lossy(&resumed.payload).contains("\"error\""),
        "resume refused"
    );
    // The clock starts when the first segment is in a worker's hands: a pull request that
    // waited through the pause is answered only when it is asked again (up to the pull's 2 s
    // expiry later), a lag of the bench's pause and not of the fleet.
    loop {
        let stream = js.get_stream(streams::WORK_STREAM).await.expect("stream");
        let info = stream.consumer_info(&consumer).await.expect("the pool");
        if info.num_ack_pending > 0 || info.delivered.stream_sequence > 0 {
            break;
        }
        assert!(
            Instant::now() < ready,
            "no segment delivered after the resume"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    let timed = WAVES * n;
    let mut seen = HashSet::new();
    let deadline = t0 + SIZE_DEADLINE;
    let mut last = t0;
    let mut times = Vec::new();
    while seen.len() < timed {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, done_events.next())
            .await
            .unwrap_or_else(|_| panic!("{n} workers: only {} segments done", seen.len()))
            .expect("the subscription");
        let Ok(done) = dme_protocol::decode::<SegmentDone>(&message.payload) else {
            continue;
        };
        if seen.insert((done.music_id, done.index)) {
            last = Instant::now();
            times.push(last.duration_since(t0).as_secs_f64());
        }
    }
    // Each wave's first and last done event: how far the waves spread.
    eprintln!(
        "bench: fleet {n}: waves done (first, last) at {:?} s",
        times
            .chunks(n)
            .map(|w| (round(w[0], 2), round(w[w.len() - 1], 2)))
            .collect::<Vec<_>>()
    );
    let seconds = last.duration_since(t0).as_secs_f64();
    let separator_rss_kib = sys
        .separators
        .first()
        .map_or(0, |p| memory(p.id(), "VmHWM") / 1024);
    drop(sys);
    Point {
        workers: n,
        songs,
        segments: timed,
        seconds,
        rate: timed as f64 / seconds,
        ideal: n as f64 * 1000.0 / FAKE_INFER_MS as f64,
        separator_rss_kib,
    }
}

/// One line of the plot: its name, its colour and its value at a point.
type Series<'a> = (&'a str, &'a str, &'a dyn Fn(&Point) -> f64);

/// The scaling curve as a hand-written SVG: segments per second against workers (log 2 scale)
/// for the measured fleet, the ideal and the issue's 0.8 of it.
fn plot(points: &[Point]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 60.0, 20.0, 30.0, 50.0);
    let max_x = points.iter().map(|p| p.workers).max().unwrap_or(1) as f64;
    let max_y = points
        .iter()
        .map(|p| p.ideal.max(p.rate))
        .fold(1.0f64, f64::max);
    let x = |n: f64| left + (n.log2() / max_x.log2().max(1.0)) * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - top - bottom);
    let line = |f: &dyn Fn(&Point) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.workers as f64), y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <title>dme simulated fleet: segments per second against workers</title>\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\">segments/s ({FAKE_INFER_MS} ms per segment)</text>\n"
    );
    for p in points {
        let px = x(p.workers as f64);
        svg += &format!(
            "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{top}\" stroke=\"#ddd\"/>\n\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            h - bottom,
            h - bottom + 16.0,
            p.workers
        );
    }
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">workers</text>\n\
         <line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
        (left + w - right) / 2.0,
        h - 12.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let series: [Series; 3] = [
        ("ideal", "#888", &|p: &Point| p.ideal),
        ("0.8 of ideal", "#d88", &|p: &Point| p.ideal * TARGET_AT_64),
        ("measured", "#1060c0", &|p: &Point| p.rate),
    ];
    for (i, (name, colour, f)) in series.iter().enumerate() {
        let dash = if *name == "measured" {
            ""
        } else {
            " stroke-dasharray=\"6 4\""
        };
        svg += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{name}</text>\n",
            line(*f),
            left + 10.0,
            top + 14.0 * (i as f64 + 1.0)
        );
    }
    for p in points {
        svg += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1060c0\"/>\n",
            x(p.workers as f64),
            y(p.rate)
        );
    }
    svg + "</svg>\n"
}

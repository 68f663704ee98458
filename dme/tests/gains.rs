//! Per-stem gains in a selection, the mix that never clips, and waveform peaks, against real
//! processes.
//!
//! A selection is the original contract's array of track ids (each at 0 dB, the mix the plain
//! sum of its stems, as ever) or `{"tracks": [{"track_id", "gain_db"}]}`: its mix is the sum of
//! the stems each times its gain, named by a key that spells the gains, so the same selection
//! and gains are mixed once. A mix whose sum would pass full scale is scaled down as a whole to
//! a peak of 0.99. `GET /music/{id}/track/{track_id}/peaks` serves each bucket's largest
//! absolute sample, computed once per track and kept beside it.

mod watch;

use std::time::Duration;

use dme_protocol::{objects, MusicId};
use dme_storage::Store;
use dme_testkit::system::{synth_wav, Options, System};
use serde_json::{json, Value};
use watch::ObjectWrites;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The peak a mix that would clip is scaled to (`MIX_PEAK_CEILING` in the mixer, README).
const CEILING: f32 = 0.99;

async fn store(sys: &System) -> Store {
    Store::connect(&sys.nats.url(), "test", Duration::from_secs(10))
        .await
        .expect("the test connects to NATS")
}

/// The weighted sum of `stems` (`S × 2` lanes): `(stem index, gain in dB)` pairs, summed in the
/// order given as f32, as the mixer sums them.
fn weighted_sum(stems: &[Vec<f32>], chosen: &[(usize, f64)]) -> Vec<Vec<f32>> {
    let len = stems[0].len();
    (0..2)
        .map(|c| {
            (0..len)
                .map(|i| {
                    chosen.iter().fold(0.0f32, |sum, (s, db)| {
                        sum + stems[2 * s + c][i] * 10f64.powf(db / 20.0) as f32
                    })
                })
                .collect()
        })
        .collect()
}

fn peak(lanes: &[Vec<f32>]) -> f32 {
    lanes.iter().flatten().fold(0.0f32, |p, s| p.max(s.abs()))
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>], scale: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "lengths");
            x.iter().zip(y).map(|(p, q)| (p - q * scale).abs())
        })
        .fold(0.0, f32::max)
}

/// The mix `key` of song `id` as float lanes.
async fn mix_lanes(sys: &System, id: u64, key: &str) -> Vec<Vec<f32>> {
    let url = sys.url(&format!("/music/{id}/mix/{key}?format=wav32f"));
    let mix = sys.download(&url).await;
    assert_eq!(mix.status, 200, "{url}");
    let (audio, _) = dme_audio::read_wav(&mix.bytes).expect("a float WAV");
    vec![audio.left, audio.right]
}

/// `{"tracks": [...]}` of `(stem index, gain)` for the upload answer `music`; a gain of `None`
/// leaves `gain_db` out.
fn with_gains(music: &Value, chosen: &[(usize, Option<f64>)]) -> String {
    let tracks: Vec<Value> = chosen
        .iter()
        .map(|(s, db)| {
            let id = &music["tracks"][s]["track_id"];
            match db {
                Some(db) => json!({"track_id": id, "gain_db": db}),
                None => json!({"track_id": id}),
            }
        })
        .collect();
    json!({ "tracks": tracks }).to_string()
}

#[tokio::test]
async fn gains_weight_the_mix_name_it_and_never_clip() {
    let mut sys = System::start(DME, Options::default()).await;
    let store = store(&sys).await;
    // No separator until the selections before the stems are checked: the song cannot finish.
    for mut separator in sys.separators.drain(..) {
        separator.kill();
    }
    let music = sys
        .upload_ok(synth_wav(3 * 44_100, 44_100, 5.0), "gains.wav")
        .await;
    let id = music["music_id"].as_u64().unwrap();
    let song = format!("/music/{id}");
    assert_eq!(music["tracks"].as_array().unwrap().len(), 4, "{music}");
    let track = |s: usize| music["tracks"][s]["track_id"].as_u64().unwrap();

    // Bad gains: 400 with a reason, nothing selected.
    let first = track(0);
    for (body, why) in [
        (
            format!(r#"{{"tracks": [{{"track_id": {first}, "gain_db": 12.5}}]}}"#),
            "from -60 to +12 dB",
        ),
        (
            format!(r#"{{"tracks": [{{"track_id": {first}, "gain_db": -60.5}}]}}"#),
            "from -60 to +12 dB",
        ),
        (
            format!(r#"{{"tracks": [{{"track_id": {first}, "gain_db": "loud"}}]}}"#),
            "must be a number",
        ),
        (
            format!(r#"{{"tracks": [{{"track_id": {first}, "gain_db": 1e400}}]}}"#),
            "body must be",
        ),
        (
            format!(
                r#"{{"tracks": [{{"track_id": {first}, "gain_db": 1}}, {{"track_id": {first}, "gain_db": -1}}]}}"#
            ),
            "given twice",
        ),
        (
            format!(r#"{{"tracks": [{{"track_id": {first}, "gain": 6}}]}}"#),
            "unknown field `gain`",
        ),
        (r#"{"tracks": []}"#.to_string(), "at least one track"),
        (r#"{"tracks": 3}"#.to_string(), "must be a list"),
    ] {
        let r = sys.post_json(&song, &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let error = r.body["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{body}: {}", r.body);
    }
    let unknown = r#"{"tracks": [{"track_id": 1, "gain_db": 0}]}"#;
    assert_eq!(sys.post_json(&song, unknown).await.status, 405);
    assert!(store
        .music(MusicId(id))
        .await
        .unwrap()
        .unwrap()
        .mixes
        .is_empty());

    // Peaks are not there before the stems: a JSON 404.
    let peaks_path = |s: usize, q: &str| format!("/music/{id}/track/{}/peaks{q}", track(s));
    let early = sys.download(&sys.url(&peaks_path(0, ""))).await;
    assert_eq!(early.status, 404);
    let reason: Value = serde_json::from_slice(&early.bytes).unwrap();
    assert!(
        reason["error"]
            .as_str()
            .unwrap()
            .contains("not separated yet"),
        "{reason}"
    );
    let head = sys
        .http
        .head(sys.url(&peaks_path(0, "")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);

    // A selection with gains before the stems: mixed once they are assembled.
    let weighted: [(usize, Option<f64>); 3] = [(2, Some(3.5)), (0, Some(-6.0)), (3, Some(-60.0))];
    let weighted_key = "0~-6-2~3.5-3~-60";
    let r = sys.post_json(&song, &with_gains(&music, &weighted)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["key"], weighted_key, "{}", r.body);
    assert_eq!(r.body["tracks"], json!([track(2), track(0), track(3)]));
    assert_eq!(r.body["gains_db"], json!([3.5, -6.0, -60.0]));

    let writes = ObjectWrites::watch(&store).await;
    sys.add_separator();
    let done = sys.finished(id).await;
    assert!(
        done["final"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mix/{weighted_key}")),
        "{done}"
    );
    assert_eq!(
        done["selection"],
        json!([track(2), track(0), track(3)]),
        "{done}"
    );
    assert_eq!(done["gains_db"], json!([3.5, -6.0, -60.0]), "{done}");
    let stems = sys.stem_lanes(&done).await;
    let chosen = [(2, 3.5), (0, -6.0), (3, -60.0)];
    let expected = weighted_sum(&stems, &chosen);
    assert!(
        peak(&expected) <= 1.0,
        "this selection must not need scaling"
    );
    let got = mix_lanes(&sys, id, weighted_key).await;
    let err = max_abs_diff(&got, &expected, 1.0);
    assert!(
        err <= 1e-5,
        "the weighted mix differs from its stems' weighted sum by {err}"
    );

    // The array of the original contract: every stem at 0 dB, the plain sum, the key as ever.
    let all: Vec<u64> = (0..4).map(track).collect();
    let r = sys
        .post_json(&song, &serde_json::to_string(&all).unwrap())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["key"], "0-1-2-3", "{}", r.body);
    assert_eq!(r.body["gains_db"], json!([0.0, 0.0, 0.0, 0.0]));
    let done = sys.finished(id).await;
    assert!(
        done["final"].as_str().unwrap().ends_with("/mix/0-1-2-3"),
        "{done}"
    );
    assert_eq!(done["gains_db"], json!([0.0, 0.0, 0.0, 0.0]), "{done}");
    let plain = weighted_sum(&stems, &[(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0)]);
    assert!(peak(&plain) <= 1.0, "the plain sum must not need scaling");
    let err = max_abs_diff(&mix_lanes(&sys, id, "0-1-2-3").await, &plain, 1.0);
    assert!(
        err <= 1e-5,
        "the plain mix differs from its stems' sum by {err}"
    );

    // The same selection and gains again, in another order and within a tenth of a dB: the
    // same key, the mix made before, not mixed again.
    let again: [(usize, Option<f64>); 3] = [(3, Some(-59.96)), (0, Some(-6.04)), (2, Some(3.5))];
    let r = sys.post_json(&song, &with_gains(&music, &again)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["key"], weighted_key, "{}", r.body);
    let done = sys.finished(id).await;
    assert!(
        done["final"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mix/{weighted_key}")),
        "{done}"
    );
    // Leaving `gain_db` out is 0 dB: the array's mix again.
    let unity: Vec<(usize, Option<f64>)> = (0..4).map(|s| (s, None)).collect();
    let r = sys.post_json(&song, &with_gains(&music, &unity)).await;
    assert_eq!(
        (r.status, &r.body["key"]),
        (200, &json!("0-1-2-3")),
        "{}",
        r.body
    );
    let done = sys.finished(id).await;
    assert!(
        done["final"].as_str().unwrap().ends_with("/mix/0-1-2-3"),
        "{done}"
    );

    // +12 dB on every stem would clip: the whole mix is scaled by one factor to a peak of 0.99.
    let loud: Vec<(usize, Option<f64>)> = (0..4).map(|s| (s, Some(12.0))).collect();
    let loud_key = "0~12-1~12-2~12-3~12";
    let r = sys.post_json(&song, &with_gains(&music, &loud)).await;
    assert_eq!(
        (r.status, &r.body["key"]),
        (200, &json!(loud_key)),
        "{}",
        r.body
    );
    let done = sys.finished(id).await;
    assert!(
        done["final"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mix/{loud_key}")),
        "{done}"
    );
    let unclipped = weighted_sum(&stems, &[(0, 12.0), (1, 12.0), (2, 12.0), (3, 12.0)]);
    let unclipped_peak = peak(&unclipped);
    assert!(
        unclipped_peak > 1.5,
        "+12 dB must clip: peak {unclipped_peak}"
    );
    let got = mix_lanes(&sys, id, loud_key).await;
    let got_peak = peak(&got);
    assert!(got_peak <= 1.0, "the mix clips: peak {got_peak}");
    assert!(
        (got_peak - CEILING).abs() <= 1e-6,
        "peak {got_peak}, not {CEILING}"
    );
    let scale = CEILING / unclipped_peak;
    println!("every stem at +12 dB: unclipped peak {unclipped_peak}, scaled by {scale}");
    let err = max_abs_diff(&got, &unclipped, scale);
    assert!(
        err <= 1e-5,
        "the loud mix is not its sum times {scale}: off by {err}"
    );
    // Its 16-bit WAV does not clip either.
    let wav16 = sys
        .download(&sys.url(&format!("/music/{id}/mix/{loud_key}")))
        .await;
    assert_eq!(wav16.status, 200);
    let (audio, _) = dme_audio::read_wav(&wav16.bytes).expect("a WAV");
    let full_scale = audio
        .left
        .iter()
        .chain(&audio.right)
        .filter(|s| s.abs() >= 1.0)
        .count();
    assert_eq!(full_scale, 0, "samples at full scale in the 16-bit mix");

    // Each mix was written once: the one asked for twice too.
    let record = store.music(MusicId(id)).await.unwrap().unwrap();
    let names = writes.names();
    for key in [weighted_key, "0-1-2-3", loud_key] {
        let object = objects::mix(MusicId(id), record.incarnation, key);
        let renders = names.iter().filter(|n| **n == object).count();
        assert_eq!(renders, 1, "mix {key} rendered {renders} times");
    }
    assert_eq!(record.mixes.len(), 3, "{:?}", record.mixes);

    // Peaks: one per bucket of each stem, the largest absolute sample of both channels.
    let mut cached = Vec::new();
    for s in 0..4 {
        let r = sys.download(&sys.url(&peaks_path(s, ""))).await;
        assert_eq!(r.status, 200);
        assert!(r.bytes.len() < 20_000, "{} bytes of peaks", r.bytes.len());
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        let body: Value = serde_json::from_slice(&r.bytes).unwrap();
        let (left, right) = (&stems[2 * s], &stems[2 * s + 1]);
        assert_eq!(body["frames"], left.len() as u64);
        assert_eq!(body["sample_rate"], 44_100);
        let per = body["frames_per_peak"].as_u64().unwrap() as usize;
        let peaks: Vec<f32> = body["peaks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        assert!(
            (1000..=2000).contains(&peaks.len()),
            "{} peaks",
            peaks.len()
        );
        println!(
            "stem {s}: {} peaks of {per} frames, {} bytes of JSON",
            peaks.len(),
            r.bytes.len()
        );
        assert_eq!(peaks.len(), left.len().div_ceil(per), "{per} frames a peak");
        for (b, p) in peaks.iter().enumerate() {
            let frames = b * per..((b + 1) * per).min(left.len());
            let want = left[frames.clone()]
                .iter()
                .chain(&right[frames])
                .fold(0.0f32, |m, x| m.max(x.abs()))
                .min(1.0);
            assert!(
                (p - want).abs() <= 5.1e-5,
                "stem {s} bucket {b}: {p} vs {want}"
            );
        }
        // Validators and HEAD.
        let again = sys
            .http
            .get(sys.url(&peaks_path(s, "")))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        let head = sys
            .http
            .head(sys.url(&peaks_path(s, "")))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"],
            r.bytes.len().to_string().as_str()
        );
        assert!(head.bytes().await.unwrap().is_empty());
        cached.push(objects::peaks(
            MusicId(id),
            record.incarnation,
            record.tracks[s].name.as_str(),
        ));
    }
    // Other bucket counts, clamped; coarser peaks are the largest of the finer ones.
    let fine = sys
        .get(&format!(
            "/music/{id}/track/{}/peaks?buckets=99999",
            track(1)
        ))
        .await;
    assert_eq!(fine.status, 200);
    let fine_peaks = fine.body["peaks"].as_array().unwrap().len();
    assert!(fine_peaks > 2000 && fine_peaks <= 8192, "{fine_peaks}");
    let coarse = sys
        .get(&format!("/music/{id}/track/{}/peaks?buckets=1", track(1)))
        .await;
    assert_eq!(coarse.status, 200);
    let coarse_peaks = coarse.body["peaks"].as_array().unwrap();
    assert!(
        coarse_peaks.len() <= 16 && coarse_peaks.len() >= 8,
        "{}",
        coarse.body
    );
    let loudest = fine.body["peaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap());
    let loudest = loudest.fold(0.0, f64::max);
    let coarse_loudest = coarse_peaks
        .iter()
        .map(|p| p.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(loudest, coarse_loudest);
    let bad = sys
        .get(&format!(
            "/music/{id}/track/{}/peaks?buckets=many",
            track(1)
        ))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let none = sys.get(&format!("/music/{id}/track/12345/peaks")).await;
    assert_eq!(none.status, 404, "{}", none.body);
    // Computed once per track, whatever was asked.
    let names = writes.names();
    for object in &cached {
        let puts = names.iter().filter(|n| *n == object).count();
        assert_eq!(puts, 1, "{object} written {puts} times");
    }
}

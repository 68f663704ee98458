//! Distributed separation and mixing end to end: real nats-server, real ONNX Runtime, real audio.

use dme_testkit::reference::max_abs_diff;
use std::path::Path;

use dme_model::{Model, ModelOptions, ModelSource};
use dme_testkit::model as model_path;
use dme_testkit::reference::{self, Segmenting};
use dme_testkit::song::test_song_mp3;
use dme_testkit::system::{decode_bytes, synth_wav, Options, System};

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The single-process result of the model at `model` on `left`/`right`, `S × 2` lanes.
fn reference(model: &Path, left: &[f32], right: &[f32]) -> Vec<Vec<f32>> {
    let source = ModelSource::File(model.to_path_buf());
    let mut model = Model::load(&source, &ModelOptions::default()).unwrap();
    let info = model.info().clone();
    let plan = Segmenting {
        segment: info.segment as usize,
        fixed: info.fixed,
        sources: info.sources.len(),
    };
    reference::separate(plan, left, right, |input| model.separate(input).unwrap())
}

#[tokio::test]
async fn a_song_with_one_separator_downloads_in_every_format_and_sums_back_to_the_input() {
    let sys = System::start(
        DME,
        Options {
            service_env: vec![("separator".into(), "DME_SEPARATOR_NICE".into(), "10".into())],
            ..Options::default()
        },
    )
    .await;
    let (music, done) = sys
        .separate_and_mix(
            test_song_mp3().to_vec(),
            "song.mp3",
            &["drums", "bass", "other", "vocals"],
        )
        .await;
    let input = decode_bytes(test_song_mp3(), "mp3");
    let frames = input.frames();
    assert_eq!(done["instruments"].as_array().unwrap().len(), 4);
    assert_eq!(done["state"], "done");
    assert_eq!(done["segments_done"], done["segments"]);
    // The separator runs every thread, the model's included, at its DME_SEPARATOR_NICE.
    let pid = sys.separators[0].id();
    let nices = dme_testkit::thread_nices(pid);
    assert!(nices.len() > 1, "{nices:?}");
    assert!(
        nices.iter().all(|n| *n == 10),
        "separator threads' nice: {nices:?}"
    );

    // Every stem and the mix, in every format, last as long as the input.
    let mut urls: Vec<String> = done["instruments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["track"].as_str().unwrap().to_string())
        .collect();
    urls.push(done["final"].as_str().unwrap().to_string());
    for url in &urls {
        for (format, ext, ctype) in [
            ("wav", "wav", "audio/wav"),
            ("wav32f", "wav", "audio/wav"),
            ("flac", "flac", "audio/flac"),
            ("mp3", "mp3", "audio/mpeg"),
        ] {
            let file = sys.download(&format!("{url}?format={format}")).await;
            assert_eq!(file.status, 200, "{url} {format}");
            assert_eq!(file.headers["content-type"], ctype);
            let cd = file.headers["content-disposition"].to_str().unwrap();
            assert!(
                cd.starts_with("attachment") && cd.contains(&format!(".{ext}")),
                "{cd}"
            );
            let decoded = decode_bytes(&file.bytes, ext);
            if format == "mp3" {
                assert!(
                    decoded.frames().abs_diff(frames) <= 1152,
                    "{url} mp3: {} vs {frames}",
                    decoded.frames()
                );
            } else {
                assert_eq!(decoded.frames(), frames, "{url} {format}");
            }
        }
    }

    // The four tracks of a model whose stems sum to its input sum back to the decoded input,
    // and the mix of all four equals their sum.
    let lanes = sys.stem_lanes(&done).await;
    let mut sum = [vec![0.0f32; frames], vec![0.0f32; frames]];
    for (i, lane) in lanes.iter().enumerate() {
        for (acc, v) in sum[i % 2].iter_mut().zip(lane) {
            *acc += v;
        }
    }
    let err = max_abs_diff(&sum, &[input.left.clone(), input.right.clone()]);
    assert!(err <= 1e-4, "tracks sum to the input within {err}");
    let mix = sys
        .download(&format!(
            "{}?format=wav32f",
            done["final"].as_str().unwrap()
        ))
        .await;
    let (mix, _) = dme_audio::read_wav(&mix.bytes).unwrap();
    let err = max_abs_diff(&[mix.left, mix.right], &sum);
    assert!(err <= 1e-5, "mix equals the sum of its tracks within {err}");

    // A byte range can be fetched (seeking in a browser).
    let r = sys
        .http
        .get(format!("{}?format=wav", urls[0]))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.headers()["content-range"]
        .to_str()
        .unwrap()
        .starts_with("bytes 100-199/"));
    assert_eq!(r.bytes().await.unwrap().len(), 100);
    let r = sys
        .http
        .get(format!("{}?format=ogg", urls[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Jobs: one per segment, done, with the API contract's fields.
    let jobs = sys.get("/job").await.body;
    assert_eq!(
        jobs.as_array().unwrap().len() as u64,
        done["segments"].as_u64().unwrap()
    );
    let job = sys.get(&format!("/job/{}", jobs[0])).await;
    assert_eq!(job.status, 200);
    let job = job.body;
    assert_eq!(job["music_id"], music["music_id"]);
    assert_eq!(job["state"], "done");
    assert!(job["size"].as_u64().unwrap() > 0);
    assert!(job["time"].is_u64() && job["worker"].is_string());
    assert_eq!(job["track_id"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn three_separators_give_exactly_the_single_process_result() {
    let model = model_path("test/conv_fixed.onnx");
    let sys = System::start(
        DME,
        Options {
            separators: 3,
            model: Some(model.clone()),
            ..Options::default()
        },
    )
    .await;
    let (_, done) = sys
        .separate_and_mix(test_song_mp3().to_vec(), "song.mp3", &["vocals"])
        .await;
    let input = decode_bytes(test_song_mp3(), "mp3");
    let expected = reference(&model, &input.left, &input.right);
    let got = sys.stem_lanes(&done).await;
    let err = max_abs_diff(&got, &expected);
    assert!(
        err <= 1e-6,
        "distributed vs single-process: max abs diff {err}"
    );
    // Several workers took part.
    let workers: std::collections::BTreeSet<String> = sys
        .jobs()
        .await
        .into_iter()
        .map(|job| job.worker.unwrap())
        .collect();
    assert!(workers.len() >= 2, "only {workers:?} worked");
}

#[tokio::test]
async fn edge_lengths_are_lossless_for_fixed_and_dynamic_models() {
    for model in ["test/conv_fixed.onnx", "test/conv_dynamic.onnx"] {
        let path = model_path(model);
        let sys = System::start(
            DME,
            Options {
                separators: 2,
                model: Some(path.clone()),
                ..Options::default()
            },
        )
        .await;
        // Segment 44100, stride 33075: shorter than one segment, exactly one segment, and one
        // sample more than a whole number of strides.
        for (k, frames) in [20_000usize, 44_100, 3 * 33_075 + 1]
            .into_iter()
            .enumerate()
        {
            let wav = synth_wav(frames, 44_100, k as f32 * 10.0);
            let (_, done) = sys
                .separate_and_mix(wav.clone(), &format!("s{k}.wav"), &["bass"])
                .await;
            let input = decode_bytes(&wav, "wav");
            assert_eq!(input.frames(), frames);
            let expected = reference(&path, &input.left, &input.right);
            let got = sys.stem_lanes(&done).await;
            let err = max_abs_diff(&got, &expected);
            assert!(err <= 1e-6, "{model}, {frames} frames: max abs diff {err}");
        }
    }
}

#[tokio::test]
async fn a_second_selection_only_remixes() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/sum_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let wav = synth_wav(100_000, 44_100, 5.0);
    let (music, first) = sys
        .separate_and_mix(wav.clone(), "a.wav", &["drums", "bass"])
        .await;
    let id = music["music_id"].as_u64().unwrap();
    let jobs = sys.get("/job").await.body;
    let mut before = Vec::new();
    for j in jobs.as_array().unwrap() {
        before.push(sys.get(&format!("/job/{j}")).await.body);
    }
    let vocals = music["tracks"][3]["track_id"].as_u64().unwrap();
    let selection = sys
        .post_json(&format!("/music/{id}"), &format!("[{vocals}, {vocals}]"))
        .await;
    assert_eq!(selection.status, 200, "{}", selection.body);
    let second = sys
        .wait_music(id, "the second mix", |b| {
            b["progress"] == 100 && b["final"].is_string() && b["final"] != first["final"]
        })
        .await;
    assert_eq!(second["selection"], serde_json::json!([vocals]));
    // No segment was separated again.
    assert_eq!(sys.get("/job").await.body, jobs);
    for (j, old) in jobs.as_array().unwrap().iter().zip(before) {
        let now = sys.get(&format!("/job/{j}")).await.body;
        assert_eq!(now, old, "job {j} changed");
    }
    // The second mix is the vocals track alone.
    let mix = sys
        .download(&format!(
            "{}?format=wav32f",
            second["final"].as_str().unwrap()
        ))
        .await;
    let track = sys
        .download(&format!(
            "{}?format=wav32f",
            second["instruments"][3]["track"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        dme_audio::read_wav(&mix.bytes).unwrap().0,
        dme_audio::read_wav(&track.bytes).unwrap().0
    );
    // Selections with unknown or malformed tracks (a string names a stem).
    assert_eq!(
        sys.post_json(&format!("/music/{id}"), "[1]").await.status,
        405
    );
    assert_eq!(
        sys.post_json(&format!("/music/{id}"), "[\"kazoo\"]")
            .await
            .status,
        405
    );
    assert_eq!(
        sys.post_json(&format!("/music/{id}"), "[true]")
            .await
            .status,
        400
    );
    assert_eq!(
        sys.post_json(&format!("/music/{id}"), "[-3]").await.status,
        400
    );
    assert_eq!(
        sys.post_json(&format!("/music/{id}"), "[]").await.status,
        400
    );
    assert_eq!(
        sys.post_json(&format!("/music/{id}"), "{oops").await.status,
        400
    );
    assert_eq!(
        sys.post_json("/music/424242", &format!("[{vocals}]"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_short_song_overtakes_a_long_one() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/slow_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    let long = sys
        .upload_ok(synth_wav(180 * 44_100, 44_100, 1.0), "long.wav")
        .await;
    let long_id = long["music_id"].as_u64().unwrap();
    sys.wait_music(long_id, "the long song to start", |b| {
        b["state"] == "separating"
    })
    .await;
    let short = sys
        .upload_ok(synth_wav(10 * 44_100, 44_100, 2.0), "short.wav")
        .await;
    let short_id = short["music_id"].as_u64().unwrap();
    sys.wait_music(short_id, "the short song", |b| b["progress"] == 100)
        .await;
    let long_now = sys.get(&format!("/music/{long_id}")).await.body;
    assert!(
        long_now["progress"].as_u64().unwrap() < 100,
        "the long song finished first: {long_now}"
    );
}

#[tokio::test]
async fn a_six_source_model_gives_six_tracks() {
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_six.onnx")),
            ..Options::default()
        },
    )
    .await;
    let (music, done) = sys
        .separate_and_mix(
            synth_wav(50_000, 44_100, 3.0),
            "six.wav",
            &["guitar", "piano"],
        )
        .await;
    let names: Vec<&str> = music["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["drums", "bass", "other", "vocals", "guitar", "piano"]
    );
    assert_eq!(done["instruments"].as_array().unwrap().len(), 6);
}

/// The samples of a WAV's data chunk as bits, every channel interleaved: what a prefix and the
/// start of its track are compared by.
fn sample_bits(wav: &[u8]) -> Vec<u32> {
    let (audio, rate) = dme_audio::read_wav(wav).expect("a WAV");
    assert_eq!(rate, 44_100);
    audio
        .left
        .iter()
        .zip(&audio.right)
        .flat_map(|(l, r)| [l.to_bits(), r.to_bits()])
        .collect()
}

#[tokio::test]
async fn the_start_of_every_stem_plays_while_the_rest_separates_and_is_the_tracks_start() {
    let mut sys = System::start(
        DME,
        Options {
            separators: 0,
            offer: vec![model_path("default.onnx")],
            ..Options::default()
        },
    )
    .await;
    // 60 s: 11 segments of the default model.
    let song = sys
        .upload_ok(synth_wav(60 * 44_100, 44_100, 7.0), "prefix.wav")
        .await;
    let id = song["music_id"].as_u64().unwrap();
    let tracks: Vec<u64> = song["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["track_id"].as_u64().unwrap())
        .collect();
    let base = sys.url("");
    let prefix = |track: u64, format: &str| {
        format!("{base}/music/{id}/track/{track}/prefix?format={format}")
    };
    // Nothing separated: 404 with a reason; formats that cannot grow and unknown tracks refused.
    let none = sys
        .get(&format!("/music/{id}/track/{}/prefix", tracks[0]))
        .await;
    assert_eq!(none.status, 404, "{}", none.body);
    assert!(none.body["error"]
        .as_str()
        .unwrap()
        .contains("separated yet"));
    assert_eq!(sys.get(&format!("/music/{id}")).await.body["ready_s"], 0.0);
    let mp3 = sys
        .get(&format!(
            "/music/{id}/track/{}/prefix?format=mp3",
            tracks[0]
        ))
        .await;
    assert_eq!(mp3.status, 400, "{}", mp3.body);
    assert_eq!(
        sys.get(&format!("/music/{id}/track/1/prefix")).await.status,
        404
    );

    // One separator until the start is playable, then frozen: the song stops part-way.
    sys.add_separator();
    let pid = sys.separators[0].id();
    sys.wait_music(id, "a playable start", |b| {
        b["ready_s"].as_f64().unwrap() > 0.0
    })
    .await;
    dme_testkit::signal(pid, libc::SIGSTOP);
    // The mixer finishes what it was given; then the record stays put.
    let partial = sys.at_rest(id).await;
    let ready_s = partial["ready_s"].as_f64().unwrap();
    let duration_s = partial["duration_s"].as_f64().unwrap();
    assert!(
        partial["instruments"].as_array().unwrap().is_empty() && ready_s < duration_s,
        "the song should be part-way: {partial}"
    );
    let mut starts = Vec::new();
    for &track in &tracks {
        let float = sys.download(&prefix(track, "wav32f")).await;
        assert_eq!(float.status, 200);
        assert_eq!(float.headers["dme-complete"], "false");
        assert_eq!(float.headers["cache-control"], "no-store");
        let said: f64 = float.headers["dme-ready-seconds"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(said, ready_s);
        let bits = sample_bits(&float.bytes);
        let frames = bits.len() / 2;
        assert_eq!((frames * 1000 / 44_100) as f64 / 1000.0, ready_s);
        let sixteen = sys.download(&prefix(track, "wav")).await;
        assert_eq!(sixteen.status, 200);
        assert_eq!(sample_bits(&sixteen.bytes).len(), bits.len());
        let head = sys.http.head(prefix(track, "wav")).send().await.unwrap();
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            sixteen.bytes.len().to_string()
        );
        starts.push((bits, sample_bits(&sixteen.bytes)));
    }

    // Thawed, the song finishes; each prefix was its track's start, bit for bit.
    dme_testkit::signal(pid, libc::SIGCONT);
    let done = sys
        .wait_music(id, "the stems", |b| b["progress"] == 100)
        .await;
    assert_eq!(
        done["ready_s"].as_f64().unwrap(),
        (60.0f64 * 1000.0).floor() / 1000.0
    );
    for (inst, (float, sixteen)) in done["instruments"].as_array().unwrap().iter().zip(&starts) {
        let url = inst["track"].as_str().unwrap();
        let whole = sample_bits(&sys.download(&format!("{url}?format=wav32f")).await.bytes);
        assert!(whole.len() > float.len());
        assert!(
            whole[..float.len()] == float[..],
            "{url}: the prefix is not the track's start"
        );
        let whole16 = sample_bits(&sys.download(&format!("{url}?format=wav")).await.bytes);
        assert!(
            whole16[..sixteen.len()] == sixteen[..],
            "{url}: 16-bit prefix"
        );
        // Once assembled, the prefix is the whole track.
        let track = inst["track_id"].as_u64().unwrap();
        let complete = sys.download(&prefix(track, "wav32f")).await;
        assert_eq!(complete.headers["dme-complete"], "true");
        assert!(sample_bits(&complete.bytes) == whole);
    }
    // The segments' inputs and stems go once the tracks hold them, the parts a minute later
    // (prefix downloads begun before may still read them). Each listing is a consumer on the
    // server: a look every second.
    let store =
        dme_storage::Store::connect(&sys.nats.url(), "test", std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut left = Vec::new();
        for prefix in [
            format!("part/{id}/"),
            format!("stems/{id}/"),
            format!("seg/{id}/"),
        ] {
            left.extend(store.object_names(&prefix).await.unwrap());
        }
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

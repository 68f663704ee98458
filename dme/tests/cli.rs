//! The `dme` command line for users (`dme separate`, `ls`, `status`, `jobs`, `workers`, `rm`,
//! `reset`), run as a user runs it: the real binary as a subprocess, its stdout, stderr and exit
//! code, against a real system over HTTP.
//!
//! Exit codes: 0 done; 2 bad input (usage, unreadable file, unknown stem, a 4xx); 3 the server
//! failed (5xx, a failed song); 4 cannot connect.

use std::path::Path;
use std::process::Output;

use dme_testkit::model as model_path;
use dme_testkit::system::{decode_bytes, env, synth_wav, Options, System, SONG_DEADLINE};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Runs `dme <args>` against the system (`DME_URL`), stdin empty (not a terminal), stdout and
/// stderr piped; `SONG_DEADLINE` is only a hang guard.
async fn dme(sys: &System, args: &[&str]) -> Output {
    dme_at(&sys.url(""), args).await
}

async fn dme_at(url: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(DME);
    command
        .args(args)
        .env("DME_URL", url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SONG_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("dme {args:?} hung"))
        .expect("dme runs");
    eprintln!(
        "$ dme {}\n-> {:?}\n{}",
        args.join(" "),
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code, not a signal")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn lanes(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let audio = decode_bytes(&bytes, "wav");
    vec![audio.left, audio.right]
}

#[tokio::test]
async fn the_cli_separates_files_into_folders_and_says_what_failed_by_its_exit_code() {
    // A model that is the identity's FIRs, except that a window holding a sample above 1.5 is
    // all NaN: a song with one such sample fails, cheaply.
    let sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/poison_dynamic.onnx")),
            env: env(&[("DME_SEPARATOR_MAX_DELIVER", "2")]),
            ..Options::default()
        },
    )
    .await;
    let health = sys.get("/healthz").await.body;
    let stems: Vec<String> = health["model"]["sources"]
        .as_array()
        .expect("the model's stems")
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(stems.len() >= 2, "{health}");
    let dir = tempfile::tempdir().unwrap();
    let song = dir.path().join("cli song.wav");
    std::fs::write(&song, synth_wav(3 * 44_100, 44_100, 5.0)).unwrap();
    let out = dir.path().join("out");
    let (song_arg, out_arg) = (song.to_str().unwrap(), out.to_str().unwrap());

    // Two stems kept, one at -3 dB: every stem written, and the mix of those two.
    let (loud, quiet) = (&stems[0], &stems[stems.len() - 1]);
    let keep = format!("{quiet},{loud}");
    let gain = format!("{quiet}=-3");
    let run = dme(
        &sys,
        &[
            "separate", song_arg, "--keep", &keep, "--gain", &gain, "--format", "wav", "-o",
            out_arg, "--json",
        ],
    )
    .await;
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let summary = stdout_json(&run);
    let entry = &summary.as_array().expect("one entry per file")[0];
    let folder = out.join("cli song");
    assert_eq!(entry["folder"], folder.to_str().unwrap(), "{entry}");
    let id = entry["music_id"].as_u64().expect("the song's id");
    let mut stem_lanes = Vec::new();
    for stem in &stems {
        let path = folder.join(format!("{stem}.wav"));
        assert_eq!(entry["stems"][stem], path.to_str().unwrap(), "{entry}");
        stem_lanes.push(lanes(&path));
    }
    let mix_path = folder.join("mix.wav");
    assert_eq!(entry["mix"], mix_path.to_str().unwrap(), "{entry}");
    assert_eq!(entry["gains_db"][quiet.as_str()], -3.0, "{entry}");
    let mix = lanes(&mix_path);
    // The mix is the kept stems' sum at their gains (scaled as a whole to a peak of 0.99 when
    // it would clip), within 16-bit quantisation: half a step per stem and for the mix.
    let gain_of = |s: &str| {
        if s == quiet {
            10f32.powf(-3.0 / 20.0)
        } else {
            1.0
        }
    };
    let kept: Vec<usize> = (0..stems.len())
        .filter(|&i| stems[i] == *quiet || stems[i] == *loud)
        .collect();
    let expected: Vec<Vec<f32>> = (0..2)
        .map(|c| {
            (0..mix[c].len())
                .map(|i| {
                    kept.iter()
                        .map(|&s| stem_lanes[s][c][i] * gain_of(&stems[s]))
                        .sum()
                })
                .collect()
        })
        .collect();
    let peak = expected
        .iter()
        .flatten()
        .fold(0.0f32, |p, v| p.max(v.abs()));
    let scale = if peak > 1.0 { 0.99 / peak } else { 1.0 };
    let tolerance = (kept.len() + 1) as f32 / 32_768.0;
    let mut worst = 0.0f32;
    for c in 0..2 {
        assert_eq!(
            mix[c].len(),
            stem_lanes[0][c].len(),
            "mix and stems differ in length"
        );
        for (got, want) in mix[c].iter().zip(&expected[c]) {
            worst = worst.max((got - want * scale).abs());
        }
    }
    println!("mix vs weighted stems: worst {worst}, tolerance {tolerance}, scale {scale}");
    assert!(
        worst <= tolerance,
        "the mix is off its stems' weighted sum by {worst} (tolerance {tolerance})"
    );

    // Without --json, piped: one line per step on stderr, one line per song on stdout.
    let all_out = dir.path().join("all");
    let run = dme(
        &sys,
        &["separate", song_arg, "-o", all_out.to_str().unwrap()],
    )
    .await;
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    assert!(stderr(&run).contains("cli song.wav: "), "{}", stderr(&run));
    assert!(stdout(&run).contains("mix.wav"), "{}", stdout(&run));
    for stem in stems.iter().map(String::as_str).chain(["mix"]) {
        assert!(all_out
            .join("cli song")
            .join(format!("{stem}.wav"))
            .is_file());
    }

    // ls, status, jobs: the API's JSON, and tables for people.
    let ls = dme(&sys, &["ls", "--json"]).await;
    assert_eq!(code(&ls), 0);
    assert!(
        stdout_json(&ls)
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["music_id"] == id),
        "{}",
        stdout(&ls)
    );
    let ls = dme(&sys, &["ls"]).await;
    assert_eq!(code(&ls), 0);
    assert!(stdout(&ls).contains(&id.to_string()), "{}", stdout(&ls));
    let status = dme(&sys, &["status", &id.to_string(), "--json"]).await;
    assert_eq!(code(&status), 0);
    let status = stdout_json(&status);
    assert_eq!(
        (&status["music_id"], &status["state"]),
        (&id.into(), &"done".into())
    );
    let status = dme(&sys, &["status", &id.to_string()]).await;
    assert!(
        stdout(&status).contains("done, 100%"),
        "{}",
        stdout(&status)
    );
    let jobs = dme(&sys, &["jobs", &id.to_string(), "--json"]).await;
    assert_eq!(code(&jobs), 0);
    let jobs = stdout_json(&jobs);
    let jobs = jobs.as_array().unwrap();
    assert!(!jobs.is_empty());
    assert!(jobs
        .iter()
        .all(|j| j["music_id"] == id && j["state"] == "done"));
    let all_jobs = dme(&sys, &["jobs"]).await;
    assert_eq!(code(&all_jobs), 0);
    assert!(
        stdout(&all_jobs).starts_with("JOB"),
        "{}",
        stdout(&all_jobs)
    );

    // workers: the fleet as JSON, the separator among it.
    let workers = dme(&sys, &["workers", "--json"]).await;
    assert_eq!(code(&workers), 0, "{}", stderr(&workers));
    let fleet = stdout_json(&workers);
    assert!(
        fleet
            .as_array()
            .is_some_and(|list| list.iter().any(|w| w["service"] == "separator")),
        "a separator in {fleet:#}"
    );

    // Bad input: 2, with the cause, nothing on stdout.
    let missing = dir.path().join("missing.wav");
    let run = dme(&sys, &["separate", missing.to_str().unwrap(), "--json"]).await;
    assert_eq!(code(&run), 2, "{}", stderr(&run));
    assert!(stderr(&run).contains("missing.wav"), "{}", stderr(&run));
    assert!(run.stdout.is_empty());
    let run = dme(
        &sys,
        &["separate", song_arg, "--keep", "kazoo", "-o", out_arg],
    )
    .await;
    assert_eq!(code(&run), 2);
    assert!(
        stderr(&run).contains("unknown stem `kazoo`") && stderr(&run).contains(stems[0].as_str()),
        "{}",
        stderr(&run)
    );
    let run = dme(&sys, &["status", "12345"]).await;
    assert_eq!(code(&run), 2, "no such song is a 404");
    let run = dme(&sys, &["reset"]).await;
    assert_eq!(code(&run), 2, "reset without --yes and without a terminal");
    assert!(stderr(&run).contains("--yes"), "{}", stderr(&run));

    // Nobody listening: 4.
    let run = dme_at("http://127.0.0.1:1", &["separate", song_arg, "-o", out_arg]).await;
    assert_eq!(code(&run), 4, "{}", stderr(&run));
    assert!(stderr(&run).contains("cannot connect"), "{}", stderr(&run));
    let run = dme_at("http://127.0.0.1:1", &["ls"]).await;
    assert_eq!(code(&run), 4);

    // A song that fails on the server: 3, with its error.
    let frames = 2 * 44_100;
    let mut left: Vec<f32> = (0..frames).map(|i| (i as f32 * 0.01).sin() * 0.3).collect();
    left[10_000] = 3.0;
    let right = left.iter().map(|v| v * 0.5).collect::<Vec<_>>();
    let poison = dir.path().join("poison.wav");
    std::fs::write(
        &poison,
        dme_audio::encode(&left, &right, 44_100, dme_audio::Format::Wav32f).unwrap(),
    )
    .unwrap();
    let run = dme(
        &sys,
        &[
            "separate",
            poison.to_str().unwrap(),
            "-o",
            out_arg,
            "--json",
        ],
    )
    .await;
    assert_eq!(code(&run), 3, "{}", stderr(&run));
    assert!(
        stderr(&run).contains("failed on the server"),
        "{}",
        stderr(&run)
    );
    let summary = stdout_json(&run);
    assert_eq!(summary[0]["exit_code"], 3, "{summary}");

    // rm, then the song is gone; reset --yes empties the server.
    let rm = dme(&sys, &["rm", &id.to_string(), "--json"]).await;
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
    assert_eq!(stdout_json(&rm)["status"], "deleted");
    assert_eq!(code(&dme(&sys, &["status", &id.to_string()]).await), 2);
    let reset = dme(&sys, &["reset", "--yes"]).await;
    assert_eq!(code(&reset), 0, "{}", stderr(&reset));
    let ls = dme(&sys, &["ls", "--json"]).await;
    assert_eq!(stdout_json(&ls), serde_json::json!([]));
}

#[tokio::test]
async fn separate_writes_the_start_of_every_stem_while_the_rest_separates() {
    let sys = System::start(DME, Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let song = dir.path().join("Preview Song.wav");
    // 60 s: 11 segments of the default model.
    std::fs::write(&song, synth_wav(60 * 44_100, 44_100, 4.0)).unwrap();
    let out = dir.path().join("out");
    let (url, song_arg, out_arg) = (
        sys.url(""),
        song.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    );
    let run = tokio::spawn(async move {
        dme_at(
            &url,
            &[
                "separate",
                &song_arg,
                "--preview",
                "5",
                "--json",
                "-o",
                &out_arg,
            ],
        )
        .await
    });
    // The one separator is frozen once the start is playable: the song stays part-way until
    // the preview is written.
    let id = dme_testkit::wait_for("the upload", SONG_DEADLINE, || async {
        sys.get("/music").await.body.as_array()?.first()?["music_id"].as_u64()
    })
    .await;
    sys.wait_music(id, "a playable start", |b| {
        b["ready_s"].as_f64().unwrap() > 0.0
    })
    .await;
    let separator = sys.separators[0].id();
    dme_testkit::signal(separator, libc::SIGSTOP);
    let folder = out.join("Preview Song").join("preview");
    let written = dme_testkit::wait_for("the preview", SONG_DEADLINE, || async {
        let names: Vec<String> = std::fs::read_dir(&folder)
            .ok()?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        (names.len() == 4
            && names
                .iter()
                .all(|n| n.ends_with(".wav") && !n.contains(".part")))
        .then_some(names)
    })
    .await;
    let unfinished = sys.get(&format!("/music/{id}")).await.body;
    assert!(
        unfinished["instruments"].as_array().unwrap().is_empty(),
        "the preview came before the stems: {unfinished}"
    );
    dme_testkit::signal(separator, libc::SIGCONT);
    let run = run.await.unwrap();
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    assert!(
        stderr(&run).contains("preview: the first"),
        "{}",
        stderr(&run)
    );
    let summary = stdout_json(&run);
    let preview = summary[0]["preview"]
        .as_object()
        .expect("the preview's files");
    assert_eq!(preview.len(), 4, "{summary}");
    for (stem, path) in preview {
        let path = Path::new(path.as_str().unwrap());
        assert!(written.contains(&path.file_name().unwrap().to_string_lossy().into_owned()));
        let start = lanes(path);
        let whole = lanes(Path::new(summary[0]["stems"][stem].as_str().unwrap()));
        let frames = start[0].len();
        assert!(
            frames >= 5 * 44_100 && frames < whole[0].len(),
            "{stem}: {frames} frames"
        );
        for (s, w) in start.iter().zip(&whole) {
            assert!(
                s[..] == w[..frames],
                "{stem}: the preview is not the stem's start"
            );
        }
    }
}

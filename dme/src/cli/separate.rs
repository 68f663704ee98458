//! `dme separate FILE...`: uploads each file, asks for the mix of the stems kept (at their
//! gains), follows the song's live events, then writes every stem and the mix into a folder per
//! song. Files go through the server side by side: each is uploaded (at most
//! [`MAX_PARALLEL_UPLOADS`] at once) and followed on its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::HumanBytes;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::client::{CliError, Client, Exit};
use super::events::SongEvents;
use super::output;
use super::progress::{FileProgress, Progress};
use super::Server;

/// Gains the gateway takes, in dB (a selection's `gain_db`).
const MIN_GAIN_DB: f64 = -60.0;
const MAX_GAIN_DB: f64 = 12.0;

/// Uploads at once: two keep a link busy while the server probes and stores the other; more
/// only split the same bandwidth.
const MAX_PARALLEL_UPLOADS: usize = 2;

/// Times a request the server answers 429 ("too much work from this client") is tried again:
/// with its `Retry-After` of about 10 s, a quarter of an hour for earlier songs to finish.
const MAX_BUSY_RETRIES: u32 = 90;

/// Wait after a 429 without `Retry-After`, and the most any `Retry-After` is followed.
const DEFAULT_BUSY_WAIT: Duration = Duration::from_secs(10);
const MAX_BUSY_WAIT: Duration = Duration::from_secs(60);

/// The name of the mix in a song's folder (with the format's extension), unless a stem takes
/// it: see [`file_stems`].
const MIX_FILE: &str = "mix";

/// `dme separate --help`'s epilogue: where files go and how they are named, and the exit codes.
pub const HELP: &str = concat!(
    "\
Output layout:
  DIR/<song>/<stem>.<ext>   every stem the model makes (e.g. drums, bass, other, vocals)
  DIR/<song>/mix.<ext>      the kept stems summed at their gains (all stems without --keep)
  Stems keep their names; a name another file of the song already took (a stem named \"mix\",
  two stems whose names differ only in case or in characters a file name cannot hold) gets
  -2, -3: with a stem named mix, the mix is mix-2.<ext>. --json gives every path.
  DIR/<song>/preview/<stem>.wav  with --preview SECONDS: each stem's start, written as soon
  as that much of every stem is separated (16-bit WAV)
  <song> is the file's name without its extension (\"My Song.mp3\" -> DIR/My Song/); two files
  with the same name get <song>-2, <song>-3. Existing files are replaced; a file appears only
  once it is whole.

  Stem names are the model's (`dme status ID` lists a song's); an unknown name is an error.
  With --json, stdout is one JSON array with an object per FILE: music_id, name, folder, stems
  (name -> path), mix (path), keep, gains_db; or file, error and exit_code for a file that
  failed. Progress goes to stderr: a bar per file on a terminal, one line per step otherwise.

",
    exit_codes!()
);

/// `dme separate`.
#[derive(Args)]
pub struct SeparateArgs {
    /// Audio files to separate (MP3, WAV, FLAC, OGG, M4A, ...: whatever the server decodes).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Stems to mix, by name, comma-separated (e.g. vocals,drums); default: every stem. Every
    /// stem is written as a file either way.
    #[arg(long, value_delimiter = ',', value_name = "STEM,...")]
    keep: Vec<String>,
    /// Gain of a stem in the mix, in dB from -60 to +12 (e.g. vocals=-3); repeat the option or
    /// separate with commas. Default 0 dB. A mix that would clip is scaled down as a whole.
    #[arg(long, value_delimiter = ',', value_name = "STEM=DB", value_parser = parse_gain, allow_hyphen_values = true)]
    gain: Vec<StemGain>,
    /// Format of the files written: 16-bit WAV, 32-bit float WAV (the samples as separated),
    /// FLAC or MP3.
    #[arg(long, value_enum, default_value_t = Format::Wav)]
    format: Format,
    /// As soon as the first SECONDS of every stem are separated, write what is separated of
    /// each stem so far to DIR/<song>/preview/<stem>.wav (16-bit WAV), long before the whole
    /// stems: listen while the rest separates. A song separated before that writes no preview.
    #[arg(long, value_name = "SECONDS", value_parser = parse_preview)]
    preview: Option<f64>,
    /// Folder to write into, one sub-folder per song.
    #[arg(short = 'o', long = "out", value_name = "DIR", default_value = ".")]
    out: PathBuf,
    #[command(flatten)]
    server: Server,
}

/// A format of the files written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// 16-bit PCM WAV.
    Wav,
    /// 32-bit float WAV.
    Wav32f,
    /// FLAC (16-bit, lossless).
    Flac,
    /// MP3.
    Mp3,
}

impl Format {
    /// The download's `?format=`.
    fn query(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Wav32f => "wav32f",
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
        }
    }

    /// The extension of the files written.
    fn extension(self) -> &'static str {
        match self {
            Format::Wav | Format::Wav32f => "wav",
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
        }
    }
}

/// `--preview SECONDS`: a positive number of seconds.
fn parse_preview(raw: &str) -> Result<f64, String> {
    match raw.trim().trim_end_matches('s').parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(format!("`{raw}` is not a positive number of seconds")),
    }
}

/// `--gain STEM=DB`.
#[derive(Clone, Debug, PartialEq)]
pub struct StemGain {
    stem: String,
    db: f64,
}

fn parse_gain(raw: &str) -> Result<StemGain, String> {
    let (stem, db) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not STEM=DB (e.g. vocals=-3)"))?;
    let db: f64 = db
        .trim()
        .trim_end_matches("dB")
        .trim_end_matches("db")
        .trim()
        .parse()
        .map_err(|_| format!("`{db}` in `{raw}` is not a number of dB"))?;
    if !(MIN_GAIN_DB..=MAX_GAIN_DB).contains(&db) {
        return Err(format!(
            "{db} dB in `{raw}` is outside {MIN_GAIN_DB} to +{MAX_GAIN_DB} dB"
        ));
    }
    Ok(StemGain {
        stem: stem.trim().to_string(),
        db,
    })
}

/// What to mix: the stems named by `--keep` (every stem without it), at the `--gain`s.
struct Plan {
    keep: Option<Vec<String>>,
    gains: Vec<StemGain>,
}

/// A stem in the mix.
struct Kept {
    name: String,
    track_id: u64,
    gain_db: f64,
}

impl Plan {
    /// # Errors
    /// [`CliError::Usage`] for a stem given two gains, or a gain for a stem not kept.
    fn new(keep: &[String], gains: &[StemGain]) -> Result<Plan, CliError> {
        let keep = (!keep.is_empty()).then(|| {
            let mut seen = BTreeSet::new();
            keep.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| seen.insert(s.clone()))
                .collect::<Vec<_>>()
        });
        let mut unique: Vec<StemGain> = Vec::new();
        for g in gains {
            match unique.iter().find(|u| u.stem == g.stem) {
                Some(u) if u.db != g.db => {
                    return Err(CliError::Usage(format!(
                        "--gain gives stem `{}` two gains ({} and {} dB)",
                        g.stem, u.db, g.db
                    )))
                }
                Some(_) => {}
                None => unique.push(g.clone()),
            }
        }
        if let Some(keep) = &keep {
            if let Some(g) = unique.iter().find(|g| !keep.contains(&g.stem)) {
                return Err(CliError::Usage(format!(
                    "--gain {}={} is for a stem that --keep leaves out of the mix",
                    g.stem, g.db
                )));
            }
        }
        Ok(Plan {
            keep,
            gains: unique,
        })
    }

    /// # Errors
    /// [`CliError::Usage`] naming the first stem that is not one of `stems`, and listing them.
    fn check(&self, stems: &[String]) -> Result<(), CliError> {
        let named = self
            .keep
            .iter()
            .flatten()
            .map(|s| ("--keep", s))
            .chain(self.gains.iter().map(|g| ("--gain", &g.stem)));
        for (option, name) in named {
            if !stems.contains(name) {
                return Err(CliError::Usage(format!(
                    "unknown stem `{name}` in {option}: the stems are {}",
                    stems.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The stems of a song (`tracks`: name and id, in the model's order) to mix, in that order.
    ///
    /// # Errors
    /// As [`Plan::check`].
    fn resolve(&self, tracks: &[(String, u64)]) -> Result<Vec<Kept>, CliError> {
        let names: Vec<String> = tracks.iter().map(|(n, _)| n.clone()).collect();
        self.check(&names)?;
        Ok(tracks
            .iter()
            .filter(|(name, _)| self.keep.as_ref().is_none_or(|k| k.contains(name)))
            .map(|(name, id)| Kept {
                name: name.clone(),
                track_id: *id,
                gain_db: self
                    .gains
                    .iter()
                    .find(|g| &g.stem == name)
                    .map_or(0.0, |g| g.db),
            })
            .collect())
    }
}

/// One FILE and where its song goes.
struct Input {
    file: PathBuf,
    size: u64,
    /// The name shown for it.
    label: String,
    /// Its song's folder.
    folder: PathBuf,
}

/// What was written for one song.
struct Written {
    music_id: u64,
    name: String,
    stems: Vec<(String, PathBuf)>,
    mix: PathBuf,
    kept: Vec<Kept>,
    /// The preview's files, stem by stem (none when none was asked for or written).
    preview: Vec<(String, PathBuf)>,
}

/// `--preview`: the first seconds of every stem, written once that much is separated.
struct Preview {
    seconds: f64,
    folder: PathBuf,
    /// The song's stems: (name, track id).
    tracks: Vec<(String, u64)>,
    /// What was written, stem by stem.
    written: Vec<(String, PathBuf)>,
}

impl Preview {
    /// Writes what is separated of every stem, once `ready_s` reaches the seconds asked for
    /// (once per song).
    async fn write_when_ready(
        &mut self,
        client: &Client,
        music_id: u64,
        ready_s: f64,
        bar: &FileProgress,
    ) -> Result<(), CliError> {
        if !self.written.is_empty() || ready_s < self.seconds {
            return Ok(());
        }
        std::fs::create_dir_all(&self.folder).map_err(|e| CliError::local(&self.folder, e))?;
        let (files, _) = file_stems(self.tracks.iter().map(|(name, _)| name.as_str()));
        let of = self.tracks.len();
        for (n, ((name, track_id), file)) in self.tracks.iter().zip(files).enumerate() {
            let path = self.folder.join(format!("{file}.wav"));
            let link = format!(
                "{}/music/{music_id}/track/{track_id}/prefix?format=wav",
                client.base()
            );
            download(client, &link, &path, bar, n + 1, of).await?;
            self.written.push((name.clone(), path));
        }
        bar.step(&format!(
            "preview: the first {ready_s:.1} s of every stem in {}",
            self.folder.display()
        ));
        Ok(())
    }
}

/// Runs `dme separate`.
///
/// # Errors
/// [`CliError::Usage`] or [`CliError::Local`] before anything is uploaded, for an unreadable
/// FILE, a folder that cannot be made, or an unknown stem; the server's errors when it cannot
/// be asked what its stems are; [`CliError::Reported`] with the worst exit code when any file
/// failed (each failure is printed as it is known).
pub async fn run(args: SeparateArgs) -> Result<(), CliError> {
    let client = Client::new(&args.server.url)?.with_token(args.server.token.as_deref())?;
    let plan = Plan::new(&args.keep, &args.gain)?;
    let inputs = inputs(&args.files, &args.out)?;
    if let Some(stems) = model_stems(&client).await? {
        plan.check(&stems)?;
    }
    for input in &inputs {
        std::fs::create_dir_all(&input.folder).map_err(|e| CliError::local(&input.folder, e))?;
    }
    let progress = Progress::new(inputs.iter().map(|i| i.label.as_str()));
    let uploads = Semaphore::new(MAX_PARALLEL_UPLOADS);
    let songs = inputs.iter().map(|input| {
        let bar = progress.file(&input.label);
        let (client, plan, uploads) = (&client, &plan, &uploads);
        async move {
            let result = separate(
                client,
                plan,
                input,
                args.format,
                args.preview,
                &bar,
                uploads,
            )
            .await;
            match &result {
                Ok(w) => bar.done(&format!(
                    "{} stems and the mix in {}",
                    w.stems.len(),
                    input.folder.display()
                )),
                Err(e) => bar.failed(&e.to_string()),
            }
            result
        }
    });
    let results = futures::future::join_all(songs).await;
    drop(progress);

    let mut worst: Option<Exit> = None;
    let mut summary = Vec::new();
    for (input, result) in inputs.iter().zip(&results) {
        match result {
            Ok(w) => {
                summary.push(song_json(input, w, args.format));
                if !args.server.json {
                    output::line(&format!(
                        "{}: {} ({})",
                        input.folder.display(),
                        w.stems
                            .iter()
                            .map(|(_, p)| file_name(p))
                            .chain([file_name(&w.mix)])
                            .collect::<Vec<_>>()
                            .join(" "),
                        mix_text(&w.kept)
                    ))?;
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", input.file.display());
                worst = worst.max(Some(e.exit()));
                summary.push(json!({
                    "file": input.file.display().to_string(),
                    "error": e.to_string(),
                    "exit_code": e.exit() as u8,
                }));
            }
        }
    }
    if args.server.json {
        output::json(&Value::Array(summary))?;
    }
    worst.map_or(Ok(()), |exit| Err(CliError::Reported(exit)))
}

/// One song from upload to files.
async fn separate(
    client: &Client,
    plan: &Plan,
    input: &Input,
    format: Format,
    preview: Option<f64>,
    bar: &FileProgress,
    uploads: &Semaphore,
) -> Result<Written, CliError> {
    let song = {
        let _turn = uploads
            .acquire()
            .await
            .expect("the semaphore is never closed");
        upload(client, input, bar).await?
    };
    let music_id = song["music_id"]
        .as_u64()
        .ok_or_else(|| bad_answer("POST /music", "no music_id", &song))?;
    let tracks: Vec<(String, u64)> = song["tracks"]
        .as_array()
        .ok_or_else(|| bad_answer("POST /music", "no tracks", &song))?
        .iter()
        .filter_map(|t| Some((t["name"].as_str()?.to_string(), t["track_id"].as_u64()?)))
        .collect();
    let kept = plan.resolve(&tracks)?;
    bar.step(&format!(
        "song {music_id}, {:.1} s, stems {}",
        song["duration_s"].as_f64().unwrap_or(0.0),
        tracks
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let key = select(client, music_id, &kept, bar).await?;
    let preview = preview.map(|seconds| Preview {
        seconds,
        folder: input.folder.join("preview"),
        tracks: tracks.clone(),
        written: Vec::new(),
    });
    let (stems, mix_link, preview) = follow(client, music_id, &key, preview, bar).await?;

    let ext = format.extension();
    let total = stems.len() + 1;
    let (stem_files, mix_file) = file_stems(stems.iter().map(|(name, _)| name.as_str()));
    let mut written = Vec::with_capacity(stems.len());
    for (i, ((name, link), file)) in stems.iter().zip(stem_files).enumerate() {
        let path = input.folder.join(format!("{file}.{ext}"));
        download(client, &with_format(link, format), &path, bar, i + 1, total).await?;
        written.push((name.clone(), path));
    }
    let mix = input.folder.join(format!("{mix_file}.{ext}"));
    download(
        client,
        &with_format(&mix_link, format),
        &mix,
        bar,
        total,
        total,
    )
    .await?;
    Ok(Written {
        music_id,
        name: song["name"].as_str().unwrap_or_default().to_string(),
        stems: written,
        mix,
        kept,
        preview: preview.map(|p| p.written).unwrap_or_default(),
    })
}

/// Uploads the file, again while the server says it is busy.
async fn upload(client: &Client, input: &Input, bar: &FileProgress) -> Result<Value, CliError> {
    let name = input
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut busy = 0;
    loop {
        bar.uploading(
            input.size,
            &format!("uploading {} to {}", HumanBytes(input.size), client.base()),
        );
        match client
            .upload(&input.file, &name, input.size, bar.counter())
            .await
        {
            Err(CliError::Busy {
                message,
                retry_after_s,
                ..
            }) if busy < MAX_BUSY_RETRIES => {
                busy += 1;
                wait_busy(bar, &message, retry_after_s).await;
            }
            other => return other,
        }
    }
}

/// Asks for the mix of `kept`; answers the selection's key.
async fn select(
    client: &Client,
    music_id: u64,
    kept: &[Kept],
    bar: &FileProgress,
) -> Result<String, CliError> {
    let body = json!({
        "tracks": kept
            .iter()
            .map(|k| json!({"track_id": k.track_id, "gain_db": k.gain_db}))
            .collect::<Vec<_>>(),
    });
    let path = format!("/music/{music_id}");
    let mut busy = 0;
    let answer = loop {
        match client.post_json(&path, Some(&body)).await {
            Err(CliError::Busy {
                message,
                retry_after_s,
                ..
            }) if busy < MAX_BUSY_RETRIES => {
                busy += 1;
                wait_busy(bar, &message, retry_after_s).await;
            }
            other => break other?,
        }
    };
    bar.step(&format!("mix of {} asked", mix_text(kept)));
    answer["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| bad_answer(&format!("POST {path}"), "no key", &answer))
}

async fn wait_busy(bar: &FileProgress, message: &str, retry_after_s: Option<u64>) {
    let wait = retry_after_s
        .map_or(DEFAULT_BUSY_WAIT, Duration::from_secs)
        .min(MAX_BUSY_WAIT);
    bar.step(&format!(
        "server busy, trying again in {} s: {message}",
        wait.as_secs()
    ));
    tokio::time::sleep(wait).await;
}

/// A stem's name and link.
type StemLink = (String, String);

/// Follows the song's events until its stems and the mix `key` are ready; answers the stems'
/// links and the mix's.
///
/// # Errors
/// [`CliError::SongFailed`] when the song fails; the event stream's errors.
async fn follow(
    client: &Client,
    music_id: u64,
    key: &str,
    mut preview: Option<Preview>,
    bar: &FileProgress,
) -> Result<(Vec<StemLink>, String, Option<Preview>), CliError> {
    let mut events = SongEvents::new(client.clone(), music_id);
    loop {
        let event = events.next().await?;
        let song = &event.data;
        let state = song["state"].as_str().unwrap_or("unknown");
        if state == "failed" || event.kind == "failed" {
            return Err(CliError::SongFailed {
                music_id,
                error: song["error"]
                    .as_str()
                    .unwrap_or("the server gave no reason")
                    .to_string(),
            });
        }
        let stems: Vec<StemLink> = song["instruments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["name"].as_str()?.into(), i["track"].as_str()?.into())))
            .collect();
        if let (false, Some(mix)) = (stems.is_empty(), mix_link(song, key)) {
            return Ok((stems, mix, preview));
        }
        let ready_s = song["ready_s"].as_f64().unwrap_or(0.0);
        if let (Some(p), true) = (&mut preview, stems.is_empty()) {
            // A preview is a courtesy: one that cannot be written (the song assembled under
            // it, a network blip) is said, and the stems come all the same.
            if let Err(e) = p.write_when_ready(client, music_id, ready_s, bar).await {
                bar.step(&format!("preview not written: {e}"));
                preview = None;
            }
        }
        let percent = song["progress"].as_u64().unwrap_or(0).min(100) as u8;
        let (done, of) = (
            song["segments_done"].as_u64().unwrap_or(0),
            song["segments"].as_u64().unwrap_or(0),
        );
        let detail = match state {
            "separating" if of > 0 => format!(
                "separating, {done} of {of} segment{}",
                if of == 1 { "" } else { "s" }
            ),
            "stalled" => format!(
                "stalled: {}",
                song["error"].as_str().unwrap_or("no progress")
            ),
            "done" if stems.is_empty() => "assembling stems".into(),
            "done" | "mixing" => "mixing".into(),
            other => other.to_string(),
        };
        bar.percent(percent, state, &detail);
    }
}

/// The link of the mix `key` in an event, once it is ready: from `mixes` (every selection), or
/// from `final` (the latest) for a gateway that sends no `mixes`.
fn mix_link(song: &Value, key: &str) -> Option<String> {
    match song["mixes"].as_array() {
        Some(mixes) => mixes
            .iter()
            .find(|m| m["key"] == key && m["ready"] == true)
            .and_then(|m| m["mix"].as_str())
            .map(str::to_string),
        None => song["final"]
            .as_str()
            .filter(|link| link.ends_with(&format!("/mix/{key}")))
            .map(str::to_string),
    }
}

async fn download(
    client: &Client,
    link: &str,
    path: &Path,
    bar: &FileProgress,
    n: usize,
    of: usize,
) -> Result<(), CliError> {
    bar.activity(&format!("writing {} ({n} of {of})", file_name(path)));
    let bytes = client.download(link, path).await?;
    bar.written(&format!("wrote {} ({})", path.display(), HumanBytes(bytes)));
    Ok(())
}

/// `link` with `?format=`.
fn with_format(link: &str, format: Format) -> String {
    let join = if link.contains('?') { '&' } else { '?' };
    format!("{link}{join}format={}", format.query())
}

/// The stems asked to be mixed, for people: "vocals -3 dB, drums".
fn mix_text(kept: &[Kept]) -> String {
    kept.iter()
        .map(|k| {
            if k.gain_db == 0.0 {
                k.name.clone()
            } else {
                format!("{} {:+} dB", k.name, k.gain_db)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn song_json(input: &Input, w: &Written, format: Format) -> Value {
    let path = |p: &Path| Value::String(p.display().to_string());
    let stems: Map<String, Value> = w
        .stems
        .iter()
        .map(|(name, p)| (name.clone(), path(p)))
        .collect();
    let gains: Map<String, Value> = w
        .kept
        .iter()
        .map(|k| (k.name.clone(), json!(k.gain_db)))
        .collect();
    json!({
        "file": input.file.display().to_string(),
        "music_id": w.music_id,
        "name": w.name,
        "folder": path(&input.folder),
        "format": format.query(),
        "stems": stems,
        "mix": path(&w.mix),
        "keep": w.kept.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        "gains_db": gains,
        "preview": w
            .preview
            .iter()
            .map(|(name, p)| (name.clone(), path(p)))
            .collect::<Map<String, Value>>(),
    })
}

fn bad_answer(what: &str, why: &str, answer: &Value) -> CliError {
    CliError::Server {
        what: what.to_string(),
        status: 200,
        message: format!("an answer with {why}: {answer:.200}"),
    }
}

/// The stems of the model the server's separators run (`GET /healthz`), to check names before
/// anything is uploaded; `None` when the server does not say (no model registered yet, or a
/// gateway without `/healthz`).
///
/// # Errors
/// [`CliError::Unreachable`] when the server cannot be reached; its failures (5xx).
async fn model_stems(client: &Client) -> Result<Option<Vec<String>>, CliError> {
    match client.get_json("/healthz").await {
        Ok(health) => Ok(health["model"]["sources"].as_array().map(|sources| {
            sources
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })),
        Err(CliError::Refused { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every FILE, readable, with its label and its song's folder under `out`.
///
/// # Errors
/// [`CliError::Local`] for a file that cannot be opened, [`CliError::Usage`] for a folder.
fn inputs(files: &[PathBuf], out: &Path) -> Result<Vec<Input>, CliError> {
    let mut inputs: Vec<Input> = Vec::with_capacity(files.len());
    for file in files {
        let meta = std::fs::metadata(file).map_err(|e| CliError::local(file, e))?;
        if meta.is_dir() {
            return Err(CliError::Usage(format!(
                "{} is a folder, not an audio file",
                file.display()
            )));
        }
        std::fs::File::open(file).map_err(|e| CliError::local(file, e))?;
        let stem = file
            .file_stem()
            .map(|s| safe_file_stem(&s.to_string_lossy()))
            .unwrap_or_else(|| "song".into());
        let mut folder = out.join(&stem);
        let mut n = 1;
        while inputs.iter().any(|i| i.folder == folder) {
            n += 1;
            folder = out.join(format!("{stem}-{n}"));
        }
        // A file's name, unless another FILE has the same: then its path as given.
        let name = file_name(file);
        let label = if files.iter().filter(|f| file_name(f) == name).count() > 1 {
            file.display().to_string()
        } else {
            name
        };
        inputs.push(Input {
            file: file.clone(),
            size: meta.len(),
            label,
            folder,
        });
    }
    Ok(inputs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The names (without extension) of a song's files: each stem's, in order, then the mix's.
/// Each is its stem's name made safe ([`safe_file_stem`]), and the mix is [`MIX_FILE`]; a name
/// a file before it took (compared without case, as macOS and Windows file systems do) gets
/// `-2`, `-3`, ..., so no file of the song overwrites another: a model stem named `mix` keeps
/// `mix`, and the mix becomes `mix-2`.
fn file_stems<'a>(stems: impl IntoIterator<Item = &'a str>) -> (Vec<String>, String) {
    let mut taken: Vec<String> = Vec::new();
    let mut unique = |wanted: String| {
        let mut name = wanted.clone();
        let mut n = 1;
        while taken.contains(&name.to_lowercase()) {
            n += 1;
            name = format!("{wanted}-{n}");
        }
        taken.push(name.to_lowercase());
        name
    };
    let stems = stems
        .into_iter()
        .map(|stem| unique(safe_file_stem(stem)))
        .collect();
    let mix = unique(MIX_FILE.to_string());
    (stems, mix)
}

/// A name from the server or a file, safe as one file or folder name: no separators, no
/// control characters, not `.` or `..`.
fn safe_file_stem(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_matches('.');
    if trimmed.is_empty() {
        "untitled".into()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracks() -> Vec<(String, u64)> {
        ["drums", "bass", "other", "vocals"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i as u64 + 10))
            .collect()
    }

    fn gain(raw: &str) -> StemGain {
        parse_gain(raw).unwrap()
    }

    #[test]
    fn gains_are_stem_equals_decibels_within_the_servers_range() {
        assert_eq!(
            gain("vocals=-3"),
            StemGain {
                stem: "vocals".into(),
                db: -3.0
            }
        );
        assert_eq!(gain("drums=+1.5dB").db, 1.5);
        for bad in [
            "vocals",
            "vocals=loud",
            "vocals=13",
            "vocals=-61",
            "vocals=NaN",
        ] {
            assert!(parse_gain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plan_keeps_the_named_stems_in_the_models_order_at_their_gains() {
        let keep = ["vocals".to_string(), "drums".into(), "vocals".into()];
        let plan = Plan::new(&keep, &[gain("vocals=-3")]).unwrap();
        let kept = plan.resolve(&tracks()).unwrap();
        let got: Vec<(&str, u64, f64)> = kept
            .iter()
            .map(|k| (k.name.as_str(), k.track_id, k.gain_db))
            .collect();
        assert_eq!(got, [("drums", 10, 0.0), ("vocals", 13, -3.0)]);
        assert_eq!(mix_text(&kept), "drums, vocals -3 dB");
        // No --keep: every stem.
        let all = Plan::new(&[], &[]).unwrap().resolve(&tracks()).unwrap();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn unknown_or_contradictory_stems_are_usage_errors_that_list_the_stems() {
        let e = Plan::new(&["voice".into()], &[])
            .unwrap()
            .resolve(&tracks())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "unknown stem `voice` in --keep: the stems are drums, bass, other, vocals"
        );
        assert_eq!(e.exit(), Exit::BadInput);
        let e = Plan::new(&[], &[gain("piano=2")])
            .unwrap()
            .resolve(&tracks())
            .err()
            .unwrap();
        assert!(e.to_string().contains("`piano` in --gain"), "{e}");
        assert!(Plan::new(&["drums".into()], &[gain("vocals=1")]).is_err());
        assert!(Plan::new(&[], &[gain("vocals=1"), gain("vocals=2")]).is_err());
        assert!(Plan::new(&[], &[gain("vocals=1"), gain("vocals=1")]).is_ok());
    }

    #[test]
    fn no_file_of_a_song_overwrites_another() {
        let (stems, mix) = file_stems(["drums", "bass", "other", "vocals"]);
        assert_eq!(stems, ["drums", "bass", "other", "vocals"]);
        assert_eq!(mix, "mix");
        // A stem named mix keeps its name; the mix steps aside.
        let (stems, mix) = file_stems(["vocals", "mix"]);
        assert_eq!(stems, ["vocals", "mix"]);
        assert_eq!(mix, "mix-2");
        // Names equal once made safe, or but for case, and one already suffixed.
        let (stems, mix) = file_stems(["a/b", "a_b", "Mix", "MIX", "mix-2"]);
        assert_eq!(stems, ["a_b", "a_b-2", "Mix", "MIX-2", "mix-2-2"]);
        assert_eq!(mix, "mix-3");
    }

    #[test]
    fn names_from_anywhere_are_single_safe_file_names() {
        assert_eq!(safe_file_stem("vocals"), "vocals");
        assert_eq!(safe_file_stem("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_stem(".."), "untitled");
        assert_eq!(safe_file_stem("a\nb"), "a_b");
        assert_eq!(
            with_format("http://h/music/1/mix/0-1", Format::Flac),
            "http://h/music/1/mix/0-1?format=flac"
        );
        assert_eq!(
            with_format("http://h/x?a=1", Format::Wav),
            "http://h/x?a=1&format=wav"
        );
    }

    #[test]
    fn files_with_the_same_name_get_their_own_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for d in [&a, &b] {
            std::fs::write(d.join("song.wav"), b"x").unwrap();
        }
        let files = [a.join("song.wav"), b.join("song.wav")];
        let got = inputs(&files, Path::new("out")).unwrap();
        assert_eq!(got[0].folder, Path::new("out/song"));
        assert_eq!(got[1].folder, Path::new("out/song-2"));
        assert_ne!(got[0].label, got[1].label);
        let missing = inputs(&[dir.path().join("nope.wav")], Path::new("out"));
        assert_eq!(missing.err().unwrap().exit(), Exit::BadInput);
        assert!(inputs(&[a], Path::new("out")).is_err());
    }
}

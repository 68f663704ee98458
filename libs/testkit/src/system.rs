//! A whole dme system for one test: a real nats-server on a free port with a temporary store,
//! and the real service binaries (`dme gateway|splitter|mixer|separator`) as child processes,
//! with typed helpers for the HTTP API.
//!
//! Only a test of the `dme` package knows where its binary is (`env!("CARGO_BIN_EXE_dme")`), so
//! tests pass it to [`System::start`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::{free_port, wait_for, NatsServer, Process};

/// Where a song must be within this long in tests (the whole pipeline on a 2-core machine).
pub const SONG_DEADLINE: Duration = Duration::from_secs(120);

/// How long the gateway may take to come up with a registered model: on a loaded 2-core
/// machine, starting several ONNX Runtime sessions is slow.
const GATEWAY_START_DEADLINE: Duration = Duration::from_secs(180);

/// How often [`System::wait_music`] asks for a song's progress.
const PROGRESS_POLL: Duration = Duration::from_millis(50);

/// How to start a system.
#[derive(Clone, Debug)]
pub struct Options {
    /// Separator processes to start.
    pub separators: usize,
    /// `DME_MODEL` for every service; `None` runs the embedded model.
    pub model: Option<PathBuf>,
    /// Environment only the gateway gets.
    pub gateway_env: Vec<(String, String)>,
    /// Environment every service gets.
    pub env: Vec<(String, String)>,
    /// Configuration appended to the nats-server's `nats.conf` (an `authorization` block);
    /// `None` runs it as `nats.conf` says, without users.
    pub nats_config: Option<String>,
    /// Environment per service: `(service, key, value)`, `service` as in `dme <service>`
    /// (each service's NATS credentials, say).
    pub service_env: Vec<(String, String, String)>,
    /// A PEM file of the CA that signed the gateway's certificate (its `DME_TLS_*` in
    /// `gateway_env`): the gateway is then reached over HTTPS by a client that trusts only
    /// this CA. `None`: plain HTTP.
    pub https_ca: Option<PathBuf>,
    /// `DME_NATS_URL` of every service instead of the system's own nats-server (which then
    /// runs unused): the comma-separated URLs of a [`crate::cluster::NatsCluster`], say.
    pub nats_url: Option<String>,
    /// Model files offered with `dme models add FILE` before any service starts (so the
    /// gateway serves with a registered model even without separators).
    pub offer: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            separators: 1,
            model: None,
            gateway_env: Vec::new(),
            env: Vec::new(),
            nats_config: None,
            service_env: Vec::new(),
            https_ca: None,
            nats_url: None,
            offer: Vec::new(),
        }
    }
}

/// An HTTP answer: its status, and its body as JSON (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Value,
}

/// A downloaded file.
#[derive(Debug, Clone)]
pub struct Download {
    /// The status code.
    pub status: u16,
    /// The body.
    pub bytes: Vec<u8>,
    /// The response headers.
    pub headers: HeaderMap,
}

/// `GET /job/{id}`, the fields tests read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobView {
    /// Its id.
    pub job_id: u64,
    /// The song.
    pub music_id: u64,
    /// `queued`, `running`, `done` or `failed`.
    pub state: String,
    /// The separator that runs or ran it (`--worker-id`).
    pub worker: Option<String>,
    /// Deliveries so far.
    pub attempts: u64,
    /// Segment index within the song.
    pub segment: u32,
    /// Bytes of the model input.
    pub size: u64,
    /// Seconds of inference.
    pub time: u64,
    /// The tracks it produces stems for.
    pub track_id: Vec<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A running system; every process is killed when it is dropped.
pub struct System {
    /// The nats-server (tests kill and restart it).
    pub nats: NatsServer,
    /// What it was started with.
    pub options: Options,
    /// The gateway, when running.
    pub gateway: Option<Process>,
    /// The splitter, when running.
    pub splitter: Option<Process>,
    /// The mixer, when running.
    pub mixer: Option<Process>,
    /// The separators, in start order.
    pub separators: Vec<Process>,
    /// The gateway's HTTP port.
    pub port: u16,
    /// A client for the gateway.
    pub http: reqwest::Client,
    dme: PathBuf,
    separators_started: usize,
}

impl System {
    /// Starts nats-server, the separators, splitter, mixer and gateway (the `dme` binary at
    /// `dme`), and waits until the gateway serves with a registered model.
    ///
    /// # Panics
    /// When a process cannot start, or a separator exits at start-up.
    pub async fn start(dme: impl Into<PathBuf>, options: Options) -> System {
        let nats = match &options.nats_config {
            Some(extra) => NatsServer::start_with_config(extra),
            None => NatsServer::start(),
        };
        let http = http_client(options.https_ca.as_deref());
        let mut system = System {
            nats,
            options,
            gateway: None,
            splitter: None,
            mixer: None,
            separators: Vec::new(),
            port: free_port(),
            http,
            dme: dme.into(),
            separators_started: 0,
        };
        for model in system.options.offer.clone() {
            system.offer(&model);
        }
        for _ in 0..system.options.separators {
            system.add_separator();
        }
        system.splitter = Some(system.spawn("splitter", &[]));
        system.mixer = Some(system.spawn("mixer", &[]));
        system.start_gateway().await;
        system
    }

    /// `dme <service> <args>` with the system's NATS URL, model and environment.
    pub fn command(&self, service: &str, args: &[&str]) -> Command {
        let nats_url = match &self.options.nats_url {
            Some(url) => url.clone(),
            None => self.nats.url(),
        };
        let mut cmd = Command::new(&self.dme);
        cmd.arg(service).args(args).env("DME_NATS_URL", nats_url);
        cmd.env(
            "DME_LOG",
            std::env::var("DME_LOG").unwrap_or_else(|_| "warn".into()),
        );
        if let Some(model) = &self.options.model {
            cmd.env("DME_MODEL", model);
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        for (_, k, v) in self
            .options
            .service_env
            .iter()
            .filter(|(s, _, _)| s == service)
        {
            cmd.env(k, v);
        }
        cmd
    }

    /// Registers the model in `file` with `dme models add FILE` (as the separator's NATS user
    /// when the system has users), and waits for it to finish.
    ///
    /// # Panics
    /// When the command fails.
    pub fn offer(&self, file: &Path) {
        let path = file.to_str().expect("a UTF-8 model path");
        let mut command = self.command("models", &["add", path]);
        for (_, k, v) in self
            .options
            .service_env
            .iter()
            .filter(|(s, _, _)| s == "separator")
        {
            command.env(k, v);
        }
        let out = command.output().expect("dme models add runs");
        assert!(
            out.status.success(),
            "dme models add {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Spawns `dme <service> <args>`.
    pub fn spawn(&self, service: &str, args: &[&str]) -> Process {
        Process::spawn(service, self.command(service, args))
    }

    /// Starts one more separator, with a worker id no other separator of this system had
    /// (`sep-1`, `sep-2`, ... in start order), and returns that id.
    pub fn add_separator(&mut self) -> String {
        self.separators_started += 1;
        let id = format!("sep-{}", self.separators_started);
        let command = self.command("separator", &["--worker-id", &id]);
        self.separators
            .push(Process::spawn(&format!("separator {id}"), command));
        id
    }

    /// SIGKILLs the separator whose worker id is `worker` and forgets it; false when no running
    /// separator has that id.
    pub fn kill_separator(&mut self, worker: &str) -> bool {
        let name = format!("separator {worker}");
        match self.separators.iter().position(|p| p.name() == name) {
            Some(i) => {
                self.separators.remove(i).kill();
                true
            }
            None => false,
        }
    }

    /// Starts the gateway and waits until it serves with a registered model.
    ///
    /// # Panics
    /// When a separator exits meanwhile, or nothing serves within 180 s.
    pub async fn start_gateway(&mut self) {
        let mut cmd = self.command(
            "gateway",
            &["--http-addr", &format!("127.0.0.1:{}", self.port)],
        );
        for (k, v) in &self.options.gateway_env {
            cmd.env(k, v);
        }
        self.gateway = Some(Process::spawn("gateway", cmd));
        let http = self.http.clone();
        let url = self.url("/healthz");
        let separators: Vec<u32> = self.separators.iter().map(Process::id).collect();
        wait_for(
            "gateway with a registered model",
            GATEWAY_START_DEADLINE,
            || {
                let http = http.clone();
                let url = url.clone();
                let dead = separators.iter().any(|pid| {
                    !Path::new(&format!("/proc/{pid}")).exists()
                        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .is_ok_and(|s| s.contains(") Z "))
                });
                assert!(
                    !dead,
                    "a separator exited at start-up (see its error above)"
                );
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    let v: Value = r.json().await.ok()?;
                    (!v["model"].is_null()).then_some(())
                }
            },
        )
        .await;
    }

    /// `http://127.0.0.1:<port><path>` (`https` with [`Options::https_ca`]).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.options.https_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// `POST /music?name=<name>` with a raw body.
    ///
    /// # Panics
    /// When no answer comes.
    pub async fn upload(&self, bytes: Vec<u8>, name: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/music?name={name}")))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("an answer to the upload")
    }

    /// Uploads and returns the song's record.
    ///
    /// # Panics
    /// When the upload is refused.
    pub async fn upload_ok(&self, bytes: Vec<u8>, name: &str) -> Value {
        let r = self.upload(bytes, name).await;
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON answer");
        assert_eq!(status, 200, "upload failed: {body}");
        body
    }

    /// `GET <path>`.
    ///
    /// # Panics
    /// When no answer comes.
    pub async fn get(&self, path: &str) -> Response {
        let r = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        Response { status, body }
    }

    /// `POST <path>` with a JSON body.
    ///
    /// # Panics
    /// When no answer comes.
    pub async fn post_json(&self, path: &str, body: &str) -> Response {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        Response { status, body }
    }

    /// `GET <url>` (a full URL, as the API hands them out).
    ///
    /// # Panics
    /// When no answer or no whole body comes.
    pub async fn download(&self, url: &str) -> Download {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("the whole body").to_vec();
        Download {
            status,
            bytes,
            headers,
        }
    }

    /// Every job (`GET /job`, then `GET /job/{id}` for each).
    ///
    /// # Panics
    /// When the gateway answers something else than the jobs.
    pub async fn jobs(&self) -> Vec<JobView> {
        let ids = self.get("/job").await;
        assert_eq!(ids.status, 200, "{}", ids.body);
        let mut out = Vec::new();
        for id in ids.body.as_array().expect("a list of job ids") {
            let job = self.get(&format!("/job/{id}")).await;
            // A reset may remove a job between the list and the read.
            if job.status == 404 {
                continue;
            }
            assert_eq!(job.status, 200, "{}", job.body);
            out.push(serde_json::from_value(job.body).expect("a job"));
        }
        out
    }

    /// The jobs of song `music`.
    pub async fn jobs_of(&self, music: u64) -> Vec<JobView> {
        let mut jobs = self.jobs().await;
        jobs.retain(|j| j.music_id == music);
        jobs
    }

    /// Polls `GET /music/{id}` until `done` says so; checks progress never goes down and the
    /// song does not fail.
    ///
    /// # Panics
    /// When the song fails, its progress goes back, or [`SONG_DEADLINE`] passes.
    pub async fn wait_music<F>(&self, id: u64, what: &str, done: F) -> Value
    where
        F: Fn(&Value) -> bool,
    {
        let mut last = 0u64;
        let deadline = Instant::now() + SONG_DEADLINE;
        loop {
            let Response { status, body } = self.get(&format!("/music/{id}")).await;
            assert_eq!(status, 200, "{body}");
            let p = body["progress"].as_u64().expect("a progress");
            assert!(p >= last, "progress went back from {last} to {p}");
            last = p;
            assert_ne!(body["state"], "failed", "song failed: {body}");
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(PROGRESS_POLL).await;
        }
    }

    /// Waits until `GET /music/{id}` answers the same twice, 1.5 s apart (what was handed to
    /// the services is done), and returns that answer: a song whose separators are frozen stays
    /// part-way there.
    pub async fn at_rest(&self, id: u64) -> Value {
        let mut last = self.get(&format!("/music/{id}")).await.body;
        loop {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let now = self.get(&format!("/music/{id}")).await.body;
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Uploads `bytes` as `name` and asks for the mix of all its tracks; returns the music id.
    ///
    /// # Panics
    /// When the upload or the selection is refused.
    pub async fn upload_and_select_all(&self, bytes: Vec<u8>, name: &str) -> u64 {
        let music = self.upload_ok(bytes, name).await;
        self.select_all(&music).await
    }

    /// Selects every stem of an uploaded song (`music`: the upload's answer); returns its id.
    ///
    /// # Panics
    /// When the selection is refused.
    pub async fn select_all(&self, music: &Value) -> u64 {
        let all: Vec<&str> = music["tracks"]
            .as_array()
            .expect("tracks")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        self.select(music, &all).await
    }

    /// Waits until the song is at 100 with its `final` mix, and returns its answer.
    ///
    /// # Panics
    /// As [`System::wait_music`].
    pub async fn finished(&self, id: u64) -> Value {
        self.wait_music(id, "the song", |b| {
            b["progress"] == 100 && b["final"].is_string()
        })
        .await
    }

    /// A crash loop: kills the separator that is running song `id`'s only segment, and starts
    /// a new one, `rounds` times (each time once the job shows that delivery running), so with
    /// `rounds` deliveries allowed the segment's deliveries run out without a verdict.
    ///
    /// # Panics
    /// When a delivery does not start within [`SONG_DEADLINE`].
    pub async fn crash_loop(&mut self, id: u64, rounds: u64) {
        for round in 0..rounds {
            wait_for("the segment to be running", SONG_DEADLINE, || async {
                let jobs = self.jobs_of(id).await;
                jobs.iter()
                    .any(|j| j.state == "running" && j.attempts == round + 1)
                    .then_some(())
            })
            .await;
            for mut separator in self.separators.drain(..) {
                separator.kill();
            }
            self.add_separator();
        }
    }

    /// Waits until the song is `failed`, and returns its answer.
    ///
    /// # Panics
    /// When [`SONG_DEADLINE`] passes first.
    pub async fn failed(&self, id: u64) -> Value {
        wait_for("the song to fail", SONG_DEADLINE, || async {
            let b = self.get(&format!("/music/{id}")).await.body;
            (b["state"] == "failed").then_some(b)
        })
        .await
    }

    /// Asks for the mix of the tracks of `music` (an upload's answer) named in `select`;
    /// returns the music id.
    ///
    /// # Panics
    /// When the selection is refused.
    pub async fn select(&self, music: &Value, select: &[&str]) -> u64 {
        let id = music["music_id"].as_u64().expect("a music id");
        let ids: Vec<u64> = music["tracks"]
            .as_array()
            .expect("tracks")
            .iter()
            .filter(|t| select.contains(&t["name"].as_str().unwrap_or_default()))
            .filter_map(|t| t["track_id"].as_u64())
            .collect();
        let ids = serde_json::to_string(&ids).expect("ids serialise");
        let r = self.post_json(&format!("/music/{id}"), &ids).await;
        assert_eq!(r.status, 200, "{}", r.body);
        id
    }

    /// Uploads, selects `select` (stem names), and waits for the mix; returns the upload's
    /// answer and the finished song's progress.
    pub async fn separate_and_mix(
        &self,
        bytes: Vec<u8>,
        name: &str,
        select: &[&str],
    ) -> (Value, Value) {
        let music = self.upload_ok(bytes, name).await;
        let id = self.select(&music, select).await;
        let done = self
            .wait_music(id, "the mix", |b| {
                b["progress"] == 100 && b["final"].is_string()
            })
            .await;
        (music, done)
    }

    /// Downloads every stem of a finished song (its progress) as float WAV, as `S × 2` lanes.
    ///
    /// # Panics
    /// When a download fails or is not 44.1 kHz stereo float WAV.
    pub async fn stem_lanes(&self, done: &Value) -> Vec<Vec<f32>> {
        let mut lanes = Vec::new();
        for inst in done["instruments"].as_array().expect("instruments") {
            let url = format!("{}?format=wav32f", inst["track"].as_str().expect("a url"));
            let stem = self.download(&url).await;
            assert_eq!(stem.status, 200, "{url}");
            let (audio, rate) = dme_audio::read_wav(&stem.bytes).expect("a float WAV");
            assert_eq!(rate, 44_100);
            lanes.push(audio.left);
            lanes.push(audio.right);
        }
        lanes
    }
}

/// The client of a system's gateway: trusting only the CA in the PEM file `https_ca` when given.
///
/// # Panics
/// When the CA cannot be read or parsed.
fn http_client(https_ca: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        // A fresh connection per request: a kept-alive one the server has just closed
        // fails with IncompleteMessage, a client-side race, not a server error.
        .pool_max_idle_per_host(0);
    if let Some(ca) = https_ca {
        let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM CA"));
    }
    builder.build().expect("an HTTP client")
}

/// Stereo test audio as a float WAV: a few tones and a click train, different per channel
/// (`seed` shifts the tones). Cheap to make at any length, unlike [`crate::song`].
pub fn synth_wav(frames: usize, rate: u32, seed: f32) -> Vec<u8> {
    let left: Vec<f32> = (0..frames)
        .map(|i| {
            let t = i as f32 / rate as f32;
            0.3 * (2.0 * std::f32::consts::PI * (220.0 + seed) * t).sin()
                + 0.2 * (2.0 * std::f32::consts::PI * 57.0 * t).sin()
                + if i % 11025 < 30 { 0.4 } else { 0.0 }
        })
        .collect();
    let right: Vec<f32> = (0..frames)
        .map(|i| {
            let t = i as f32 / rate as f32;
            0.25 * (2.0 * std::f32::consts::PI * (330.0 + seed) * t).sin() + 0.1 * (t * 7.0).sin()
        })
        .collect();
    dme_audio::encode(&left, &right, rate, dme_audio::Format::Wav32f).expect("a float WAV")
}

/// Decodes downloaded bytes (a file with extension `ext`) to 44.1 kHz stereo.
///
/// # Panics
/// When they do not decode.
pub fn decode_bytes(bytes: &[u8], ext: &str) -> dme_audio::Stereo {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join(format!("x.{ext}"));
    std::fs::write(&path, bytes).expect("a temporary file");
    dme_audio::decode_path(&path, Some(ext), dme_audio::MODEL_SAMPLE_RATE).expect("audio")
}

/// `KEY=value` pairs for [`Options::env`] or [`Options::gateway_env`].
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Separators that give a segment whose worker stopped answering to another after 2 s, and give
/// it up after `max_deliver` deliveries.
pub fn quick_redelivery(max_deliver: u32) -> Vec<(String, String)> {
    env(&[
        ("DME_SEPARATOR_ACK_WAIT_MS", "2000"),
        ("DME_SEPARATOR_MAX_DELIVER", &max_deliver.to_string()),
    ])
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
///
/// # Panics
/// When the process or the field does not exist.
pub fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the field");
    kb * 1024
}

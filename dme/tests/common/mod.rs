//! A whole dme system for one test: a real nats-server on a free port with a temporary store,
//! and the real service binaries (`dme gateway|splitter|mixer|separator`) as child processes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dme_model::{Model, ModelOptions, ModelSource};
use dme_testkit::{free_port, wait_for, NatsServer, Process};
use serde_json::Value;

/// Where a song must be within this long in tests (the whole pipeline on a 2-core machine).
pub const SONG_DEADLINE: Duration = Duration::from_secs(120);

/// How to start a system.
#[derive(Clone)]
pub struct Options {
    pub separators: usize,
    pub model: Option<PathBuf>,
    pub gateway_env: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            separators: 1,
            model: None,
            gateway_env: Vec::new(),
            env: Vec::new(),
        }
    }
}

pub struct System {
    pub nats: NatsServer,
    pub options: Options,
    pub gateway: Option<Process>,
    pub splitter: Option<Process>,
    pub mixer: Option<Process>,
    pub separators: Vec<Process>,
    pub port: u16,
    pub http: reqwest::Client,
}

fn dme() -> &'static str {
    env!("CARGO_BIN_EXE_dme")
}

impl System {
    pub async fn start(options: Options) -> System {
        let nats = NatsServer::start();
        let mut system = System {
            nats,
            options,
            gateway: None,
            splitter: None,
            mixer: None,
            separators: Vec::new(),
            port: free_port(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                // A fresh connection per request: a kept-alive one the server has just closed
                // fails with IncompleteMessage, a client-side race, not a server error.
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        };
        for _ in 0..system.options.separators {
            system.add_separator();
        }
        system.splitter = Some(system.spawn("splitter", &[]));
        system.mixer = Some(system.spawn("mixer", &[]));
        system.start_gateway().await;
        system
    }

    pub fn command(&self, service: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(dme());
        cmd.arg(service)
            .args(args)
            .env("DME_NATS_URL", self.nats.url());
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
        cmd
    }

    pub fn spawn(&self, service: &str, args: &[&str]) -> Process {
        Process::spawn(service, self.command(service, args))
    }

    pub fn add_separator(&mut self) {
        let id = format!("sep-{}", self.separators.len() + 1);
        let p = self.spawn("separator", &["--worker-id", &id]);
        self.separators.push(p);
    }

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
        let separators: Vec<u32> = self.separators.iter().map(|p| p.id()).collect();
        // Generous: on a loaded 2-core machine, starting several ONNX Runtime sessions is slow.
        wait_for(
            "gateway with a registered model",
            Duration::from_secs(180),
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

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn upload(&self, bytes: Vec<u8>, name: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/music?name={name}")))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    pub async fn upload_ok(&self, bytes: Vec<u8>, name: &str) -> Value {
        let r = self.upload(bytes, name).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "upload failed: {body}");
        body
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn post_json(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn download(&self, url: &str) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
        let r = self.http.get(url).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.bytes().await.unwrap().to_vec(), headers)
    }

    /// Polls `GET /music/{id}` until `done` says so; checks progress never goes down.
    pub async fn wait_music<F>(&self, id: u64, what: &str, done: F) -> Value
    where
        F: Fn(&Value) -> bool,
    {
        let mut last = 0u64;
        let deadline = std::time::Instant::now() + SONG_DEADLINE;
        loop {
            let (status, body) = self.get(&format!("/music/{id}")).await;
            assert_eq!(status, 200, "{body}");
            let p = body["progress"].as_u64().unwrap();
            assert!(p >= last, "progress went back from {last} to {p}");
            last = p;
            assert_ne!(body["state"], "failed", "song failed: {body}");
            if done(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks for the mix of the tracks of `music` (an upload's answer) named in `select`;
    /// returns the music id.
    pub async fn select(&self, music: &Value, select: &[&str]) -> u64 {
        let id = music["music_id"].as_u64().unwrap();
        let ids: Vec<u64> = music["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| select.contains(&t["name"].as_str().unwrap()))
            .map(|t| t["track_id"].as_u64().unwrap())
            .collect();
        let (status, body) = self
            .post_json(
                &format!("/music/{id}"),
                &serde_json::to_string(&ids).unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        id
    }

    /// Uploads, selects `select` (stem names), and waits for the mix.
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
}

/// A single-process implementation of `shared/reference/segmenting.md`, written from the text
/// (not from `dme_segment`): segments in offset order, centred padding for a fixed-length model,
/// triangular weights, weighted sum divided by the sum of weights. Returns `S × 2` lanes.
pub fn reference(model: &ModelSource, left: &[f32], right: &[f32]) -> Vec<Vec<f32>> {
    let mut model = Model::load(model, &ModelOptions::default()).unwrap();
    let info = model.info().clone();
    let seg = info.segment as usize;
    let len = left.len();
    let stride = ((1.0 - 0.25) * seg as f64) as usize;
    let m = (seg / 2) as f32;
    let weight = |i: usize| {
        if i < seg / 2 {
            (i + 1) as f32 / m
        } else {
            (seg - i) as f32 / m
        }
    };
    let lanes = 2 * info.sources.len();
    let mut out = vec![vec![0.0f32; len]; lanes];
    let mut sum_w = vec![0.0f32; len];
    let mut offset = 0;
    while offset < len {
        let n = seg.min(len - offset);
        let (start, width) = if info.fixed {
            (offset as i64 - ((seg - n) / 2) as i64, seg)
        } else {
            (offset as i64, n)
        };
        let mut input = vec![0.0f32; 2 * width];
        for i in 0..width {
            let t = start + i as i64;
            if t >= 0 && (t as usize) < len {
                input[i] = left[t as usize];
                input[width + i] = right[t as usize];
            }
        }
        let stems = model.separate(&input).unwrap();
        let crop = (offset as i64 - start) as usize;
        for i in 0..n {
            sum_w[offset + i] += weight(i);
        }
        for (lane, acc) in out.iter_mut().enumerate() {
            for i in 0..n {
                acc[offset + i] += weight(i) * stems[lane * width + crop + i];
            }
        }
        offset += stride;
    }
    for acc in &mut out {
        for (v, w) in acc.iter_mut().zip(&sum_w) {
            *v /= w;
        }
    }
    out
}

/// Downloads every stem of a finished song as float WAV, as `S × 2` lanes.
pub async fn stem_lanes(sys: &System, done: &Value) -> Vec<Vec<f32>> {
    let mut lanes = Vec::new();
    for inst in done["instruments"].as_array().unwrap() {
        let url = format!("{}?format=wav32f", inst["track"].as_str().unwrap());
        let (status, bytes, _) = sys.download(&url).await;
        assert_eq!(status, 200);
        let (audio, rate) = dme_audio::read_wav(&bytes).unwrap();
        assert_eq!(rate, 44_100);
        lanes.push(audio.left);
        lanes.push(audio.right);
    }
    lanes
}

/// Stereo test audio as a 44.1 kHz float WAV: a few tones and a click train, different per channel.
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
    dme_audio::encode(&left, &right, rate, dme_audio::Format::Wav32f).unwrap()
}

pub fn fixture_bytes() -> Vec<u8> {
    std::fs::read(dme_testkit::fixture("wildblood.mp3")).unwrap()
}

pub fn fixture_path() -> PathBuf {
    dme_testkit::fixture("wildblood.mp3")
}

pub fn model_path(rel: &str) -> PathBuf {
    dme_testkit::model(rel)
}

/// Decodes downloaded bytes through a temporary file.
pub fn decode_bytes(bytes: &[u8], ext: &str) -> dme_audio::Stereo {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("x.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    dme_audio::decode_path(&path, Some(ext), 44_100).unwrap()
}

pub fn write_temp(bytes: &[u8], ext: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("song.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

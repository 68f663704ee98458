//! Hostile input against a real system (a real nats-server and the real service binaries): every
//! case is its own test with its own system, so a case that wedges or kills a service cannot hide
//! behind another.
//!
//! Every answer must be a 2xx or a 4xx (never a 500, never a hang: each request has a timeout),
//! every error a JSON `{"error": "..."}`, and a rejected upload must leave nothing behind: no
//! record, no object in the file store, no file in the gateway's spool folder. At the end of every
//! case every service is still running.
//!
//! The systems run `test/conv_dynamic.onnx` (a FIR per stem, 1 s segments), so separating a
//! few seconds of synthetic audio takes a moment.

mod common;

use std::time::{Duration, Instant};

use dme_testkit::model as model_path;
use dme_testkit::song::{id3v2_frame, id3v2_text_frame, id3v2_wrap, test_song_mp3};
use dme_testkit::system::{decode_bytes, Options, System};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a single request may take before the case counts as a hang; the largest upload here
/// (57 MB) takes about a second on loopback.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the gateway may take to remove a spooled upload after answering: it is deleted when
/// the handler returns, so this only covers scheduling delays on a loaded machine.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(10);

/// How long the splitter may take to cut an hour of audio into segments: 120 to 205 s measured on
/// 2 cores shared with other builds, with room for a slower machine.
const HOUR_SPLIT_DEADLINE: Duration = Duration::from_secs(480);

/// Size of an object-store chunk (dme_storage's): the file store of a song holds its original in
/// chunks of this many bytes (the last shorter) plus one metadata message.
const OBJECT_CHUNK: u64 = 512 * 1024;

/// One case: a system of its own, its gateway spooling into a folder the test watches.
struct Hostile {
    case: &'static str,
    sys: System,
    spool: tempfile::TempDir,
    http: reqwest::Client,
}

/// An answer: status and body (JSON when it parses, else `Null`), and the request it answers (for
/// assertion messages).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    request: String,
}

impl Hostile {
    async fn with_gateway_env(case: &'static str, env: &[(&str, &str)]) -> Hostile {
        let spool = tempfile::tempdir().unwrap();
        let mut gateway_env = vec![(
            "DME_SPOOL_DIR".to_string(),
            spool.path().display().to_string(),
        )];
        gateway_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let sys = System::start(
            env!("CARGO_BIN_EXE_dme"),
            Options {
                model: Some(model_path("test/conv_dynamic.onnx")),
                gateway_env,
                ..Options::default()
            },
        )
        .await;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // A fresh connection per request: a kept-alive one the server has just closed fails
            // on the client's side, which is no fault of the gateway.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Hostile {
            case,
            sys,
            spool,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        self.sys.url(path)
    }

    /// Sends a request and checks the invariants every answer must keep.
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let case = self.case;
        let request = request.build().unwrap();
        let description = describe(&request);
        let response =
            self.http.execute(request).await.unwrap_or_else(|e| {
                panic!("[{case}] {description}: no answer (hang or crash?): {e}")
            });
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("[{case}] body of the {status} answer: {e}"));
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        check_reply(case, &description, status, &body, &bytes);
        Reply {
            status,
            body,
            request: description,
        }
    }

    /// `POST /music?name=` with a raw body and a content type.
    async fn upload_as(&self, bytes: Vec<u8>, name: &str, content_type: &str) -> Reply {
        let request = self
            .http
            .post(self.url("/music"))
            .query(&[("name", name)])
            .header("content-type", content_type)
            .body(bytes);
        self.send(request).await
    }

    async fn upload(&self, bytes: Vec<u8>, name: &str) -> Reply {
        self.upload_as(bytes, name, "application/octet-stream")
            .await
    }

    /// `POST /music` with a hand-built multipart body (reqwest would escape hostile file names).
    async fn upload_multipart(&self, content_type: &str, body: Vec<u8>) -> Reply {
        let request = self
            .http
            .post(self.url("/music"))
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post_json(&self, path: &str, body: &str) -> Reply {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    /// Asserts an upload was accepted and returns the song.
    fn accepted(&self, reply: Reply) -> Value {
        let case = self.case;
        assert_eq!(
            reply.status, 200,
            "[{case}] {}: upload refused: {}",
            reply.request, reply.body
        );
        let id = reply.body["music_id"].as_u64();
        assert!(
            id.is_some_and(|id| id > 0 && id < 1 << 53),
            "[{case}] no music_id: {}",
            reply.body
        );
        reply.body
    }

    /// Asserts a rejection with `status` and returns its error message.
    fn rejected(&self, reply: Reply, status: u16) -> String {
        let case = self.case;
        assert_eq!(
            reply.status, status,
            "[{case}] {}: expected {status}, got {}: {}",
            reply.request, reply.status, reply.body
        );
        reply.body["error"].as_str().unwrap().to_string()
    }

    /// Asserts a rejection with any of `statuses`.
    fn rejected_with_one_of(&self, reply: Reply, statuses: &[u16]) -> String {
        let case = self.case;
        assert!(
            statuses.contains(&reply.status),
            "[{case}] {}: expected one of {statuses:?}, got {}: {}",
            reply.request,
            reply.status,
            reply.body
        );
        reply.body["error"].as_str().unwrap().to_string()
    }

    /// Waits until the song's stems are assembled; returns its progress body.
    async fn separated(&self, song: &Value) -> Value {
        let id = song["music_id"].as_u64().unwrap();
        let body = self
            .sys
            .wait_music(id, self.case, |b| {
                b["progress"] == 100 && b["instruments"].as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
        assert_eq!(body["state"], "done", "[{}] {body}", self.case);
        body
    }

    /// Downloads the first stem of a separated song as 16-bit WAV and checks it lasts as long as
    /// the upload said.
    async fn check_first_stem(&self, progress: &Value, duration_s: f64) {
        let case = self.case;
        let url = progress["instruments"][0]["track"].as_str().unwrap();
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("[{case}] stem download: {e}"));
        assert_eq!(response.status(), 200, "[{case}] stem download");
        let bytes = response.bytes().await.unwrap();
        let stem = decode_bytes(&bytes, "wav");
        let expected = (duration_s * 44_100.0).round();
        assert!(
            (stem.frames() as f64 - expected).abs() <= 2.0,
            "[{case}] stem has {} frames, the song {expected}",
            stem.frames()
        );
        assert!(
            stem.left.iter().chain(&stem.right).all(|s| s.is_finite()),
            "[{case}] stem has non-finite samples"
        );
    }

    /// Uploads, expects acceptance with a duration within `tolerance_s` of `duration_s`, waits for
    /// the stems and checks one. Returns the song as the upload answered it.
    async fn separates(
        &self,
        bytes: Vec<u8>,
        name: &str,
        duration_s: f64,
        tolerance_s: f64,
    ) -> Value {
        let song = self.accepted(self.upload(bytes, name).await);
        let d = song["duration_s"].as_f64().unwrap();
        assert!(
            (d - duration_s).abs() <= tolerance_s,
            "[{}] duration {d} s, expected {duration_s} ± {tolerance_s}: {song}",
            self.case
        );
        let progress = self.separated(&song).await;
        self.check_first_stem(&progress, d).await;
        song
    }

    /// Uploads a short valid song and returns it (for cases about selections and downloads).
    async fn song(&self) -> Value {
        self.accepted(self.upload(wav_pcm16(2, 44_100, 22_050), "song.wav").await)
    }

    /// Messages in the file store's stream (chunks and metadata of every object).
    async fn object_store_state(&self) -> (u64, u64) {
        let store = dme_storage::Store::connect(
            &self.sys.nats.url(),
            "hostile-test",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let name = format!("OBJ_{}", dme_protocol::streams::FILE_BUCKET);
        let mut stream = store.jetstream().get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        (info.state.messages, info.state.bytes)
    }

    /// Nothing of a rejected upload is left: no record, no object, no spooled file.
    async fn nothing_stored(&self) {
        let case = self.case;
        let list = self.get("/music").await;
        assert_eq!(list.status, 200, "[{case}]");
        assert_eq!(list.body, json!([]), "[{case}] a record was left behind");
        let (messages, bytes) = self.object_store_state().await;
        assert_eq!(
            messages, 0,
            "[{case}] {messages} messages ({bytes} bytes) left in the file store"
        );
        self.spool_is_empty().await;
    }

    async fn spool_is_empty(&self) {
        let deadline = Instant::now() + CLEANUP_DEADLINE;
        loop {
            let left = common::spooled(self.spool.path());
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] spooled files left behind: {left:?}",
                self.case
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every service is still running and the gateway still answers.
    async fn still_serving(mut self) {
        let case = self.case;
        let sys = &mut self.sys;
        for p in [&mut sys.gateway, &mut sys.splitter, &mut sys.mixer]
            .into_iter()
            .flatten()
            .chain(sys.separators.iter_mut())
        {
            assert!(p.is_running(), "[{case}] the {} exited", p.name());
        }
        let health = self.get("/healthz").await;
        assert_eq!(health.status, 200, "[{case}] {}", health.body);
    }

    /// Sends bytes as they are on a fresh connection and returns the status of the answer (the
    /// client side of requests `reqwest` refuses to make).
    async fn raw_request(&self, request: &[u8]) -> Reply {
        let case = self.case;
        let exchange = async {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.sys.port))
                .await
                .unwrap();
            conn.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.unwrap();
            answer
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("[{case}] no answer to a raw request"));
        let text = String::from_utf8_lossy(&answer);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("[{case}] not an HTTP answer: {text:?}"));
        let body_at = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
        let raw_body = &answer[body_at.min(answer.len())..];
        let body: Value = serde_json::from_slice(raw_body).unwrap_or(Value::Null);
        let description = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
        check_reply(case, &description, status, &body, raw_body);
        Reply {
            status,
            body,
            request: description,
        }
    }
}

/// What every answer must be: not a 5xx, and a JSON `{"error": "..."}` when it is an error.
fn check_reply(case: &str, request: &str, status: u16, body: &Value, raw: &[u8]) {
    assert!(
        (200..500).contains(&status),
        "[{case}] {request}: answered {status}: {}",
        String::from_utf8_lossy(raw)
    );
    if status >= 400 {
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "[{case}] {request}: the {status} answer is not a JSON error: {}",
            String::from_utf8_lossy(raw)
        );
    }
}

/// A request in a line: method, URL, the headers that matter here, and the start of a small body.
fn describe(request: &reqwest::Request) -> String {
    let mut out = format!("{} {}", request.method(), request.url());
    for name in ["content-type", "range"] {
        if let Some(v) = request.headers().get(name) {
            out.push_str(&format!(
                " [{name}: {}]",
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
    }
    if let Some(body) = request.body().and_then(|b| b.as_bytes()) {
        if body.len() <= 64 {
            out.push_str(&format!(" body `{}`", String::from_utf8_lossy(body)));
        } else {
            out.push_str(&format!(" ({} bytes)", body.len()));
        }
    }
    out
}

// ---- synthetic audio ----------------------------------------------------------------------

/// Deterministic pseudo-random bytes (a 64-bit LCG), so garbage is the same in every run.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// `frames` of a different tone per channel, interleaved, in -0.5..0.5.
fn tones(channels: u16, rate: u32, frames: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(frames * channels as usize);
    for i in 0..frames {
        let t = i as f32 / rate as f32;
        for c in 0..channels {
            let f = 110.0 * (c as f32 + 1.0);
            out.push(0.4 * (2.0 * std::f32::consts::PI * f * t).sin());
        }
    }
    out
}

/// A RIFF/WAVE file with a plain `fmt ` chunk (16 bytes) and a `data` chunk.
fn wav_file(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block_align = channels * bits.div_ceil(8);
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&format_tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Offset of the `data` size field in files from [`wav_file`].
const WAV_DATA_SIZE_AT: usize = 40;
/// Offset of the RIFF size field.
const WAV_RIFF_SIZE_AT: usize = 4;

fn wav_pcm16(channels: u16, rate: u32, frames: usize) -> Vec<u8> {
    let data: Vec<u8> = tones(channels, rate, frames)
        .iter()
        .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
        .collect();
    wav_file(1, channels, rate, 16, &data)
}

fn wav_pcm24(channels: u16, rate: u32, frames: usize) -> Vec<u8> {
    let data: Vec<u8> = tones(channels, rate, frames)
        .iter()
        .flat_map(|s| {
            let v = (s * 8_388_607.0) as i32;
            let b = v.to_le_bytes();
            [b[0], b[1], b[2]]
        })
        .collect();
    wav_file(1, channels, rate, 24, &data)
}

fn wav_float(channels: u16, rate: u32, frames: usize) -> Vec<u8> {
    let data: Vec<u8> = tones(channels, rate, frames)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    wav_file(3, channels, rate, 32, &data)
}

fn with_u32_at(mut bytes: Vec<u8>, at: usize, value: u32) -> Vec<u8> {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    bytes
}

fn with_u16_at(mut bytes: Vec<u8>, at: usize, value: u16) -> Vec<u8> {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// `seconds` of stereo 44.1 kHz tones as an MP3 (dme's own encoder; LAME adds a gapless tag).
fn mp3(seconds: f64) -> Vec<u8> {
    let frames = (seconds * 44_100.0) as usize;
    let samples = tones(2, 44_100, frames);
    let left: Vec<f32> = samples.iter().step_by(2).copied().collect();
    let right: Vec<f32> = samples.iter().skip(1).step_by(2).copied().collect();
    dme_audio::encode(&left, &right, 44_100, dme_audio::Format::Mp3).unwrap()
}

/// An ID3v2.3 tag with a title, an artist and a private frame of `private_len` random bytes.
fn id3v2_tag(title: &str, artist: &str, private_len: usize) -> Vec<u8> {
    let mut private = b"dme-hostile\0".to_vec();
    private.extend(noise(private_len, 7));
    id3v2_wrap(
        &[
            id3v2_text_frame(b"TIT2", title),
            id3v2_text_frame(b"TPE1", artist),
            id3v2_frame(b"PRIV", &private),
        ]
        .concat(),
    )
}

/// A `multipart/form-data` body with one part per `(headers, content)`, and its content type.
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "dme-hostile-boundary-7d9c";
    let mut body = Vec::new();
    for (headers, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Peak resident memory of a process in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// One test per case: `case!(name, |h| { ... })` starts a system with `h` in scope and, when the
/// body is done, checks every service still runs. `case!(name, env [(K, V), ...], |h| ...)` sets
/// gateway environment variables.
macro_rules! case {
    ($(#[$attr:meta])* $name:ident, |$h:ident| $body:block) => {
        case!($(#[$attr])* $name, env [], |$h| $body);
    };
    ($(#[$attr:meta])* $name:ident, env [$(($k:expr, $v:expr)),*], |$h:ident| $body:block) => {
        #[tokio::test]
        $(#[$attr])*
        async fn $name() {
            #[allow(unused_mut)]
            let mut $h = Hostile::with_gateway_env(stringify!($name), &[$(($k, $v)),*]).await;
            $body
            $h.still_serving().await;
        }
    };
}

// ---- not audio ---------------------------------------------------------------------------

case!(empty_body_is_400, |h| {
    let msg = h.rejected(h.upload(Vec::new(), "empty.mp3").await, 400);
    assert!(msg.contains("empty"), "{msg}");
    h.nothing_stored().await;
});

case!(one_byte_is_415, |h| {
    h.rejected(h.upload(vec![0xFF], "one.mp3").await, 415);
    h.nothing_stored().await;
});

case!(text_is_415, |h| {
    let text = b"Lorem ipsum dolor sit amet, this is not music at all.\n".repeat(200);
    h.rejected(h.upload(text, "lyrics.mp3").await, 415);
    h.nothing_stored().await;
});

case!(png_is_415, |h| {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0".to_vec();
    png.extend(noise(50_000, 1)); // compressed image data: random enough to hold MPEG syncs
    h.rejected(h.upload(png, "cover.mp3").await, 415);
    h.nothing_stored().await;
});

case!(random_bytes_are_415, |h| {
    h.rejected(h.upload(noise(200_000, 2), "noise.mp3").await, 415);
    h.nothing_stored().await;
});

// ---- damaged audio -----------------------------------------------------------------------

// A download cut short is still music: everything before the cut is separated (its LAME tag
// still claims the whole song).
case!(truncated_mp3_is_separated_up_to_the_cut, |h| {
    let full = test_song_mp3();
    let cut = full[..full.len() * 3 / 10].to_vec();
    // 30 s at a constant 320 kbit/s (40 kB a second), minus the tags at the front: 9 s survive.
    h.separates(cut, "cut.mp3", 9.0, 0.4).await;
});

// Random bytes over 0.75 s of frames in the middle: the decoder resyncs after them. The song
// lasts 30 s with those frames concealed, 29.25 s with them dropped.
case!(mp3_with_garbage_in_the_middle_is_separated, |h| {
    let mut bytes = test_song_mp3().to_vec();
    let start = bytes.len() / 2;
    let garbage = noise(30_000, 3);
    bytes[start..start + garbage.len()].copy_from_slice(&garbage);
    let song = h.separates(bytes, "damaged.mp3", 29.6, 0.5).await;
    assert_eq!(song["codec"], "mp3");
});

// Frames with valid MPEG headers and random payloads, inserted between real frames.
case!(mp3_with_fake_frames_in_the_middle_is_separated, |h| {
    let full = test_song_mp3();
    let at = full.len() / 2;
    let mut bytes = full[..at].to_vec();
    for i in 0..40 {
        // MPEG-1 layer III, 192 kbit/s, 44.1 kHz, no padding: 626 bytes a frame.
        bytes.extend_from_slice(&[0xFF, 0xFB, 0xB0, 0x44]);
        bytes.extend(noise(622, 100 + i));
    }
    bytes.extend_from_slice(&full[at..]);
    // Each fake frame is 26 ms if the decoder takes it, nothing if it drops it.
    h.separates(bytes, "fake-frames.mp3", 30.0 + 0.5, 0.6).await;
});

case!(
    wav_data_size_past_the_end_of_the_file_is_read_to_the_end,
    |h| {
        let wav = wav_pcm16(2, 44_100, 44_100);
        let wav = with_u32_at(wav, WAV_DATA_SIZE_AT, 10 * 176_400);
        let wav = with_u32_at(wav, WAV_RIFF_SIZE_AT, 10 * 176_400 + 36);
        h.separates(wav, "long-header.wav", 1.0, 0.001).await;
    }
);

case!(wav_data_size_zero_is_read_to_the_end, |h| {
    let wav = wav_pcm16(2, 44_100, 44_100);
    let wav = with_u32_at(wav, WAV_DATA_SIZE_AT, 0);
    let wav = with_u32_at(wav, WAV_RIFF_SIZE_AT, 0);
    h.separates(wav, "streamed.wav", 1.0, 0.001).await;
});

case!(wav_data_size_all_ones_is_read_to_the_end, |h| {
    let wav = wav_pcm16(2, 44_100, 44_100);
    let wav = with_u32_at(wav, WAV_DATA_SIZE_AT, u32::MAX);
    let wav = with_u32_at(wav, WAV_RIFF_SIZE_AT, u32::MAX);
    h.separates(wav, "streamed.wav", 1.0, 0.001).await;
});

case!(wav_with_zero_frames_is_415, |h| {
    let msg = h.rejected(h.upload(wav_pcm16(2, 44_100, 0), "silence.wav").await, 415);
    assert!(msg.contains("no audio"), "{msg}");
    h.nothing_stored().await;
});

case!(wav_with_sample_rate_zero_is_415, |h| {
    let wav = with_u32_at(wav_pcm16(2, 44_100, 4_410), 24, 0);
    h.rejected(h.upload(wav, "zero-rate.wav").await, 415);
    h.nothing_stored().await;
});

case!(wav_with_absurd_sample_rate_is_415, |h| {
    let wav = with_u32_at(wav_pcm16(2, 44_100, 4_410), 24, 4_000_000_000);
    h.rejected(h.upload(wav, "fast.wav").await, 415);
    h.nothing_stored().await;
});

case!(wav_with_zero_channels_is_415, |h| {
    let wav = with_u16_at(wav_pcm16(2, 44_100, 4_410), 22, 0);
    h.rejected(h.upload(wav, "no-channels.wav").await, 415);
    h.nothing_stored().await;
});

case!(wav_with_zero_bits_per_sample_is_415, |h| {
    let wav = with_u16_at(wav_pcm16(2, 44_100, 4_410), 34, 0);
    h.rejected(h.upload(wav, "no-bits.wav").await, 415);
    h.nothing_stored().await;
});

case!(wav_header_cut_in_the_middle_is_415, |h| {
    let wav = wav_pcm16(2, 44_100, 4_410)[..30].to_vec();
    h.rejected(h.upload(wav, "cut-header.wav").await, 415);
    h.nothing_stored().await;
});

// ---- unusual but valid audio -------------------------------------------------------------

// Shorter than one segment of the model (1 s): one short segment.
case!(a_tenth_of_a_second_is_separated, |h| {
    h.separates(wav_pcm16(2, 44_100, 4_410), "blip.wav", 0.1, 1e-9)
        .await;
});

case!(a_single_frame_is_separated, |h| {
    h.separates(
        wav_pcm16(2, 44_100, 1),
        "one-frame.wav",
        1.0 / 44_100.0,
        1e-9,
    )
    .await;
});

case!(mono_8khz_is_separated, |h| {
    let song = h
        .separates(wav_pcm16(1, 8_000, 20_000), "phone.wav", 2.5, 1e-9)
        .await;
    assert_eq!(song["sample_rate"], 8_000);
    assert_eq!(song["channels"], 1);
});

case!(six_channels_at_96khz_are_separated, |h| {
    let song = h
        .separates(wav_pcm16(6, 96_000, 144_000), "surround.wav", 1.5, 1e-9)
        .await;
    assert_eq!(song["sample_rate"], 96_000);
    assert_eq!(song["channels"], 6);
});

case!(wav_24_bit_is_separated, |h| {
    let song = h
        .separates(wav_pcm24(2, 48_000, 72_000), "studio.wav", 1.5, 1e-9)
        .await;
    assert_eq!(song["codec"], "pcm_s24le");
});

case!(wav_float_is_separated, |h| {
    let song = h
        .separates(wav_float(2, 48_000, 72_000), "float.wav", 1.5, 1e-9)
        .await;
    assert_eq!(song["codec"], "pcm_f32le");
});

// A 5 MB ID3v2 tag (cover art, say) in front of the audio: skipped, its title read.
case!(mp3_behind_a_5_mb_id3_tag_is_accepted_with_its_title, |h| {
    let mut bytes = id3v2_tag("Hostile Title", "Hostile Band", 5 << 20);
    bytes.extend(mp3(2.0));
    let song = h.separates(bytes, "tagged.mp3", 2.0, 0.001).await;
    assert_eq!(song["name"], "Hostile Title", "{song}");
    assert_eq!(song["band"], "Hostile Band", "{song}");
});

// The content decides, not the name.
case!(mp3_named_wav_is_accepted, |h| {
    let song = h.accepted(h.upload(mp3(1.0), "not-really.wav").await);
    assert_eq!(song["codec"], "mp3");
});

// The content decides, not the Content-Type.
case!(audio_sent_as_text_plain_is_accepted, |h| {
    let wav = wav_pcm16(2, 44_100, 11_025);
    h.accepted(h.upload_as(wav, "plain.wav", "text/plain").await);
});

case!(audio_sent_as_json_is_accepted, |h| {
    let wav = wav_pcm16(2, 44_100, 11_025);
    h.accepted(h.upload_as(wav, "json.wav", "application/json").await);
});

// An hour of 8 kHz mono (57.6 MB): accepted with bounded memory in the gateway, and cut into
// 4800 segments (one second each, 25 % overlap) by the splitter with bounded memory. Measured on
// 2 shared cores: the upload takes under a second, the split 120 to 205 s (1.7 GB of segment
// inputs written to JetStream); separating 4800 segments would take far longer than a test may, so the case
// stops once the splitter has cut the song and released its first segments.
case!(an_hour_long_file_is_accepted_and_split, |h| {
    let frames = 3600 * 8_000;
    let mut data = Vec::with_capacity(frames * 2);
    for (i, s) in tones(1, 8_000, 8_000)
        .iter()
        .cycle()
        .take(frames)
        .enumerate()
    {
        // A tone that changes every second, so no two seconds are the same.
        let v = (s * (0.5 + (i / 8_000 % 7) as f32 / 14.0) * 32767.0) as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    let wav = wav_file(1, 1, 8_000, 16, &data);
    drop(data);
    let started = Instant::now();
    let song = h.accepted(h.upload(wav, "hour.wav").await);
    let upload_s = started.elapsed().as_secs_f64();
    assert_eq!(song["duration_s"], 3600.0, "{song}");
    let gateway_peak = peak_rss(h.sys.gateway.as_ref().unwrap().id());
    assert!(
        gateway_peak < 150 << 20,
        "the gateway peaked at {} MiB for a 57 MB upload",
        gateway_peak >> 20
    );
    let id = song["music_id"].as_u64().unwrap();
    let deadline = Instant::now() + HOUR_SPLIT_DEADLINE;
    let progress = loop {
        let p = h.get(&format!("/music/{id}")).await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert_ne!(p.body["state"], "failed", "{}", p.body);
        // "stalled" only means the record has not changed for a while: the splitter writes it
        // once, when the whole song is cut.
        if !["queued", "stalled"].contains(&p.body["state"].as_str().unwrap_or("")) {
            break p.body;
        }
        assert!(Instant::now() < deadline, "never split: {}", p.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let split_s = started.elapsed().as_secs_f64();
    assert_eq!(progress["segments"], 4800, "{progress}");
    let splitter_peak = peak_rss(h.sys.splitter.as_ref().unwrap().id());
    assert!(
        splitter_peak < 300 << 20,
        "the splitter peaked at {} MiB for an hour of audio",
        splitter_peak >> 20
    );
    eprintln!(
        "hour-long file: upload {upload_s:.1} s, split after {split_s:.1} s, gateway peak {} MiB, \
         splitter peak {} MiB",
        gateway_peak >> 20,
        splitter_peak >> 20
    );
});

// ---- limits ------------------------------------------------------------------------------

case!(
    over_the_duration_limit_is_413,
    env[("DME_MAX_DURATION_S", "5")],
    |h| {
        let msg = h.rejected(h.upload(wav_pcm16(1, 8_000, 48_000), "six.wav").await, 413);
        assert!(msg.contains("limit"), "{msg}");
        h.nothing_stored().await;
        // Exactly at the limit is fine.
        h.accepted(h.upload(wav_pcm16(1, 8_000, 40_000), "five.wav").await);
    }
);

case!(
    over_the_size_limit_is_413,
    env[("DME_MAX_UPLOAD_BYTES", "100000")],
    |h| {
        let msg = h.rejected(h.upload(wav_pcm16(2, 44_100, 44_100), "big.wav").await, 413);
        assert!(msg.contains("limit"), "{msg}");
        h.nothing_stored().await;
        // A form field before the file counts too.
        let text = vec![b'a'; 150_000];
        let wav = wav_pcm16(2, 44_100, 4_410);
        let (ct, body) = multipart(&[
            ("Content-Disposition: form-data; name=\"notes\"", &text),
            (
                "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"",
                &wav,
            ),
        ]);
        h.rejected(h.upload_multipart(&ct, body).await, 413);
        h.nothing_stored().await;
    }
);

// A client that goes away halfway through its upload leaves nothing behind.
case!(an_upload_cut_off_by_the_client_leaves_nothing, |h| {
    let wav = wav_pcm16(2, 44_100, 441_000);
    let head = format!(
        "POST /music?name=cut.wav HTTP/1.1\r\nHost: localhost\r\nContent-Type: audio/wav\r\n\
         Content-Length: {}\r\n\r\n",
        wav.len()
    );
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", h.sys.port))
        .await
        .unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&wav[..wav.len() / 3]).await.unwrap();
    conn.flush().await.unwrap();
    // Hang up once the gateway has started spooling the upload.
    dme_testkit::wait_for("the upload in the spool", CLEANUP_DEADLINE, || async {
        let spooled = std::fs::read_dir(h.spool.path()).unwrap().next().is_some();
        spooled.then_some(())
    })
    .await;
    drop(conn);
    h.nothing_stored().await;
});

// ---- multipart ---------------------------------------------------------------------------

case!(
    multipart_with_a_hundred_fields_before_the_file_is_400,
    |h| {
        let value = b"x".to_vec();
        let mut parts: Vec<(String, &[u8])> = (0..100)
            .map(|i| {
                (
                    format!("Content-Disposition: form-data; name=\"f{i}\""),
                    &value[..],
                )
            })
            .collect();
        let wav = wav_pcm16(2, 44_100, 4_410);
        parts.push((
            "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"".into(),
            &wav,
        ));
        let parts: Vec<(&str, &[u8])> = parts.iter().map(|(h, c)| (h.as_str(), *c)).collect();
        let (ct, body) = multipart(&parts);
        let msg = h.rejected(h.upload_multipart(&ct, body).await, 400);
        assert!(msg.contains("fields"), "{msg}");
        h.nothing_stored().await;
    }
);

case!(multipart_without_a_file_field_is_400, |h| {
    let (ct, body) = multipart(&[("Content-Disposition: form-data; name=\"title\"", b"my song")]);
    let msg = h.rejected(h.upload_multipart(&ct, body).await, 400);
    assert!(msg.contains("no file"), "{msg}");
    h.nothing_stored().await;
});

case!(malformed_multipart_is_400, |h| {
    let body = b"this is not a multipart body at all".to_vec();
    let ct = "multipart/form-data; boundary=dme-hostile-boundary-7d9c";
    h.rejected(h.upload_multipart(ct, body).await, 400);
    h.nothing_stored().await;
});

case!(multipart_without_a_boundary_is_400, |h| {
    let (_, body) = multipart(&[(
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"",
        &wav_pcm16(2, 44_100, 4_410),
    )]);
    h.rejected(h.upload_multipart("multipart/form-data", body).await, 400);
    h.nothing_stored().await;
});

case!(multipart_cut_off_before_its_end_is_400, |h| {
    let wav = wav_pcm16(2, 44_100, 44_100);
    let (ct, body) = multipart(&[(
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"",
        &wav,
    )]);
    let cut = body[..body.len() / 2].to_vec();
    h.rejected(h.upload_multipart(&ct, cut).await, 400);
    h.nothing_stored().await;
});

// ---- selections --------------------------------------------------------------------------

case!(malformed_json_selection_is_400, |h| {
    let id = h.song().await["music_id"].as_u64().unwrap();
    for body in [
        "[1, 2",
        "{\"tracks\": [null]}",
        "",
        "null",
        "\"drums\"",
        "[]",
    ] {
        let r = h.post_json(&format!("/music/{id}"), body).await;
        h.rejected(r, 400);
    }
    // A track the song does not have, by id or by name, is the contract's 405.
    let r = h
        .post_json(&format!("/music/{id}"), "{\"tracks\": [1]}")
        .await;
    h.rejected(r, 405);
});

case!(
    track_ids_as_strings_are_names_and_unknown_names_are_405,
    |h| {
        let song = h.song().await;
        let id = song["music_id"].as_u64().unwrap();
        let track = song["tracks"][0]["track_id"].as_u64().unwrap();
        let r = h
            .post_json(&format!("/music/{id}"), &format!("[\"{track}\"]"))
            .await;
        let error = h.rejected(r, 405);
        assert!(
            error.contains("no track named") && error.contains("drums"),
            "{error}"
        );
    }
);

case!(negative_track_ids_are_400, |h| {
    let id = h.song().await["music_id"].as_u64().unwrap();
    h.rejected(h.post_json(&format!("/music/{id}"), "[-1]").await, 400);
});

case!(huge_track_ids_are_400, |h| {
    let id = h.song().await["music_id"].as_u64().unwrap();
    for body in [
        "[1e30]",
        "[18446744073709551616]",
        "[99999999999999999999999999999999]",
    ] {
        h.rejected(h.post_json(&format!("/music/{id}"), body).await, 400);
    }
    // Fits a u64 but is no track of the song: the API contract's 405.
    h.rejected(
        h.post_json(&format!("/music/{id}"), "[18446744073709551615]")
            .await,
        405,
    );
});

case!(float_track_ids_are_400, |h| {
    let song = h.song().await;
    let id = song["music_id"].as_u64().unwrap();
    let track = song["tracks"][0]["track_id"].as_u64().unwrap();
    for body in [
        format!("[{track}.5]"),
        format!("[{track}.0]"),
        "[0.5]".to_string(),
    ] {
        h.rejected(h.post_json(&format!("/music/{id}"), &body).await, 400);
    }
});

case!(duplicated_track_ids_are_mixed_once, |h| {
    let song = h.song().await;
    let id = song["music_id"].as_u64().unwrap();
    let track = song["tracks"][0]["track_id"].as_u64().unwrap();
    let r = h
        .post_json(
            &format!("/music/{id}"),
            &format!("[{track}, {track}, {track}]"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tracks"], json!([track]));
    let done = h
        .sys
        .wait_music(id, "the mix", |b| {
            b["progress"] == 100 && b["final"].is_string()
        })
        .await;
    assert_eq!(done["selection"], json!([track]));
});

// A body far larger than any selection gets a JSON 413 instead of being buffered.
case!(an_oversized_selection_is_413, |h| {
    let song = h.song().await;
    let id = song["music_id"].as_u64().unwrap();
    let track = song["tracks"][0]["track_id"].as_u64().unwrap();
    let ids = vec![track.to_string(); 30_000].join(",");
    let r = h
        .post_json(&format!("/music/{id}"), &format!("[{ids}]"))
        .await;
    h.rejected(r, 413);
    // A long but reasonable selection is fine.
    let ids = vec![track.to_string(); 1_000].join(",");
    let r = h
        .post_json(&format!("/music/{id}"), &format!("[{ids}]"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
});

case!(a_track_of_another_song_is_405, |h| {
    let song = h.song().await;
    let id = song["music_id"].as_u64().unwrap();
    h.rejected(h.post_json(&format!("/music/{id}"), "[12345]").await, 405);
});

case!(unknown_music_ids_are_404, |h| {
    h.rejected(h.get("/music/12345").await, 404);
    h.rejected(h.post_json("/music/12345", "[1]").await, 404);
    h.rejected(h.get("/music/12345/track/1").await, 404);
    h.rejected(h.get("/music/12345/mix/0-1").await, 404);
    h.rejected(h.get("/music/9007199254740991").await, 404);
});

// Methods no route takes: a 405 with a JSON error, never a 5xx (the invariants are checked by
// `send`).
case!(unsupported_methods_are_4xx, |h| {
    let song = h.song().await;
    let id = song["music_id"].as_u64().unwrap();
    for (method, path) in [
        ("PUT", format!("/music/{id}")),
        ("DELETE", "/music".to_string()),
        ("PATCH", format!("/music/{id}/track/1")),
        ("DELETE", "/reset".to_string()),
        ("GET", "/reset".to_string()),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = h.send(h.http.request(method, h.url(&path))).await;
        assert!(r.status == 405, "{}: {} {}", r.request, r.status, r.body);
    }
});

// ---- paths and names ---------------------------------------------------------------------

case!(
    path_traversal_in_the_name_parameter_stores_a_plain_name,
    |h| {
        let song = h.accepted(
            h.upload(wav_pcm16(2, 44_100, 4_410), "../../etc/passwd.mp3")
                .await,
        );
        assert_eq!(song["name"], "passwd", "{song}");
        let song = h.accepted(
            h.upload(wav_pcm16(2, 44_100, 4_411), "..\\..\\windows\\win.ini")
                .await,
        );
        assert_eq!(song["name"], "win", "{song}");
        let song = h.accepted(h.upload(wav_pcm16(2, 44_100, 4_412), "../..").await);
        assert_eq!(song["name"], "untitled", "{song}");
    }
);

case!(
    path_traversal_in_the_multipart_file_name_stores_a_plain_name,
    |h| {
        let (ct, body) = multipart(&[(
            "Content-Disposition: form-data; name=\"file\"; filename=\"../../etc/passwd.mp3\"",
            &wav_pcm16(2, 44_100, 4_410),
        )]);
        let song = h.accepted(h.upload_multipart(&ct, body).await);
        assert_eq!(song["name"], "passwd", "{song}");
        let (ct, body) = multipart(&[(
            "Content-Disposition: form-data; name=\"file\"; filename=\"/\"",
            &wav_pcm16(2, 44_100, 4_411),
        )]);
        let song = h.accepted(h.upload_multipart(&ct, body).await);
        assert_eq!(song["name"], "untitled", "{song}");
    }
);

case!(path_traversal_in_ids_is_400_or_404, |h| {
    let song = h.song().await;
    let id = song["music_id"].as_u64().unwrap();
    for path in [
        "/music/..%2F..%2Fetc".to_string(),
        "/music/1%2F2/track/3".to_string(),
        "/music/%2e%2e/track/1".to_string(),
        format!("/music/{id}/track/..%2F..%2Fetc%2Fpasswd"),
        format!("/music/{id}/mix/..%2F..%2Forig%2F{id}"),
        format!("/music/{id}/mix/..%2F{id}"),
        format!("/music/{id}%00"),
        format!("/music/{id}/track/1%00"),
    ] {
        h.rejected_with_one_of(h.get(&path).await, &[400, 404]);
    }
    h.rejected_with_one_of(
        h.post_json("/music/..%2F..%2Fetc", "[1]").await,
        &[400, 404],
    );
    // Dot segments as sent, not resolved by a client.
    for target in [
        "/music/../../etc/passwd",
        "/music/1/../../../etc/passwd",
        &format!("/music/{id}/mix/../../orig/{id}"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        h.rejected_with_one_of(h.raw_request(request.as_bytes()).await, &[400, 404]);
    }
});

// ---- concurrency -------------------------------------------------------------------------

// Ten clients upload the same file at once: one record, one stored original, the same answer.
// The splitter is stopped first, so the file store holds nothing but originals.
case!(the_same_file_from_ten_clients_is_stored_once, |h| {
    drop(h.sys.splitter.take());
    let wav = wav_pcm16(2, 44_100, 441_000); // 1.76 MB: 14 object chunks
    let size = wav.len() as u64;
    let uploads = (0..10).map(|i| {
        let request = h
            .http
            .post(h.url("/music"))
            .query(&[("name", format!("client-{i}.wav"))])
            .body(wav.clone());
        h.send(request)
    });
    let replies = futures_join_all(uploads).await;
    let first = replies[0].body["music_id"].clone();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}: {}", r.body);
        assert_eq!(r.body["music_id"], first, "client {i}");
    }
    let list = h.get("/music").await.body;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (messages, bytes) = h.object_store_state().await;
    let chunks = size.div_ceil(OBJECT_CHUNK);
    assert!(
        bytes < size + size / 2,
        "the file store holds {bytes} bytes in {messages} messages for one {size}-byte original"
    );
    assert!(
        messages <= chunks * 3 / 2 + 1,
        "{messages} messages for one original of {chunks} chunks"
    );
    // The splitter comes back (as a new process) and separates the one song.
    h.sys.splitter = Some(h.sys.spawn("splitter", &[]));
    h.separated(&replies[0].body).await;
});

/// Polls `futures` concurrently on the current task until all are done (the test has no `futures`
/// crate to do it).
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<T>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

// ---- downloads ---------------------------------------------------------------------------

case!(unknown_download_format_is_400, |h| {
    let song = h.song().await;
    let progress = h.separated(&song).await;
    let url = progress["instruments"][0]["track"].as_str().unwrap();
    for format in ["ogg", "", "../wav", "wav%00", "opus"] {
        let r = h.send(h.http.get(format!("{url}?format={format}"))).await;
        h.rejected(r, 400);
    }
    let r = h.send(h.http.get(format!("{url}?format=flac"))).await;
    assert_eq!(r.status, 200);
});

case!(range_out_of_bounds_is_416, |h| {
    let song = h.song().await;
    let progress = h.separated(&song).await;
    let url = progress["instruments"][0]["track"].as_str().unwrap();
    for range in [
        "bytes=999999999-",
        "bytes=5-2",
        "bytes=-0",
        "bytes=18446744073709551616-",
    ] {
        let r = h.send(h.http.get(url).header("range", range)).await;
        h.rejected(r, 416);
    }
    let r = h.send(h.http.get(url).header("range", "bytes=0-9")).await;
    assert_eq!(r.status, 206);
});

#[test]
fn synthetic_files_are_what_they_claim() {
    // The generators above, checked against the decoder once, so a failing case points at the
    // gateway rather than at a broken test file.
    let dir = tempfile::tempdir().unwrap();
    let check = |bytes: &[u8], ext: &str, rate: u32, channels: u16, frames: u64| {
        let path = dir.path().join(format!("x.{ext}"));
        std::fs::write(&path, bytes).unwrap();
        let p = dme_audio::probe_path(&path, Some(ext)).unwrap();
        assert_eq!(
            (p.sample_rate, p.channels, p.frames),
            (rate, channels, frames)
        );
    };
    check(&wav_pcm16(6, 96_000, 1_000), "wav", 96_000, 6, 1_000);
    check(&wav_pcm24(2, 48_000, 1_000), "wav", 48_000, 2, 1_000);
    check(&wav_float(1, 8_000, 1_000), "wav", 8_000, 1, 1_000);
    let tagged = [id3v2_tag("T", "A", 1000), mp3(0.5)].concat();
    check(&tagged, "mp3", 44_100, 2, 22_050);
    let song = dme_testkit::song::TEST_SONG;
    check(test_song_mp3(), "mp3", 44_100, 2, song.frames() as u64);
}

//! Downloads over real sockets from the real gateway: HTTP semantics (ranges, conditional
//! requests, HEAD, file names), one encoding for concurrent first requests, bytes equal to
//! `dme_audio::encode` of the track, and bounded memory for long tracks in every format.
//!
//! The songs here are not separated: each test writes its tracks (float WAV, as the mixer
//! stores them) and a record marking them ready straight into the store with the storage API,
//! then downloads them through the gateway. That is what a download reads, and it lets a test
//! use an hour-long track without separating an hour of audio on a 2-core machine.

use dme_testkit::system::memory;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dme_audio::Format;
use dme_protocol::records::{MixRecord, MusicRecord, MusicState, TrackRecord};
use dme_protocol::{now_ms, objects, streams, Incarnation, MusicId};
use dme_storage::Store;
use dme_testkit::system::{Options, System};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Sample rate of every track here, as dme stores tracks.
const RATE: u32 = 44_100;

/// The stems of every song here (the default model's).
const STEMS: [&str; 4] = ["drums", "bass", "other", "vocals"];

/// Length of the songs of the HTTP tests: long enough to span more than one stored chunk
/// (512 KiB) as WAV or MP3, short enough to encode in a blink.
const SHORT_FRAMES: u64 = 20 * RATE as u64;

/// Length of the song ten clients ask for at once: FLAC of it takes long enough (two passes)
/// that all ten requests arrive while the first encoding runs.
const CONCURRENT_FRAMES: u64 = 120 * RATE as u64;

/// Length of the long song whose WAV downloads are measured: an hour (1.27 GB of float WAV
/// per stem). Measured on 2 cores, debug build: stored in 15 s; each client's float WAV in
/// 11 s; its 16-bit WAV in 70 s (the encoding stored as it is made, then streamed).
const LONG_FRAMES: u64 = 60 * 60 * RATE as u64;

/// Stems of the long song downloaded.
const LONG_STEMS: usize = 1;

/// Length of the song whose FLAC and MP3 downloads are measured: both encoders read the track
/// twice, and 3 minutes of them took 15 s (FLAC) and 20 s (MP3) here, so an hour would take
/// minutes; the memory they use does not grow with the track (dme-audio's streaming encoder).
const LONG_ENCODED_FRAMES: u64 = 2 * 60 * RATE as u64;

/// Stems of that song downloaded.
const LONG_ENCODED_STEMS: usize = 1;

/// The gateway's peak memory while long tracks stream in every format to two clients.
const PEAK_RSS_BOUND: u64 = 100 << 20;

/// A whole download may take this long (a long track encoded on a loaded 2-core machine).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// A client that opens a connection per request and waits long enough for long encodings.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DOWNLOAD_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
}

/// A deterministic stereo float WAV of `frames`, generated as it is read (an hour of it would
/// be 1.3 GB in memory): the bytes `dme_audio::encode(.., Format::Wav32f)` makes of
/// [`synth_sample`].
struct SynthWav {
    head: Vec<u8>,
    head_sent: usize,
    frames: u64,
    /// Bytes of samples read so far.
    sent: u64,
    seed: u64,
    /// One period of the samples, made on first read.
    period: Vec<u8>,
}

impl SynthWav {
    fn new(frames: u64, seed: u64) -> SynthWav {
        // hound's header of an empty float WAV, its sizes set as dme_audio sets them.
        let mut head = dme_audio::encode(&[], &[], RATE, Format::Wav32f).expect("a header");
        let data_len = u32::try_from(frames * 8).expect("under 4 GiB");
        let riff_len = head.len() as u32 - 8 + data_len;
        let end = head.len();
        head[4..8].copy_from_slice(&riff_len.to_le_bytes());
        head[end - 4..].copy_from_slice(&data_len.to_le_bytes());
        SynthWav {
            head,
            head_sent: 0,
            frames,
            sent: 0,
            seed,
            period: Vec::new(),
        }
    }

    /// The whole file, for short songs.
    fn bytes(mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.head);
        for i in 0..self.frames {
            let (l, r) = synth_sample(i, self.seed);
            out.extend_from_slice(&l.to_le_bytes());
            out.extend_from_slice(&r.to_le_bytes());
        }
        out
    }
}

/// Frames after which [`synth_sample`] repeats: 20 s.
const PERIOD_FRAMES: u64 = 20 * RATE as u64;

/// Frame `i` of stem `seed`: two tones, a slow sweep in level and a click every quarter second,
/// loud enough that 16-bit rounding, FLAC and MP3 all have work to do; it repeats every
/// [`PERIOD_FRAMES`], so an hour of it is made by copying one period.
fn synth_sample(i: u64, seed: u64) -> (f32, f32) {
    let i = i % PERIOD_FRAMES;
    let t = i as f32 / RATE as f32;
    let tau = std::f32::consts::TAU;
    let level = 0.5 + 0.4 * (tau * 0.05 * t).sin();
    let click = if i % 11_025 < 20 { 0.3 } else { 0.0 };
    let l = level * (tau * (110.0 + 55.0 * seed as f32) * (t % 1.0)).sin() * 0.6 + click;
    let r = level * (tau * (165.0 + 40.0 * seed as f32) * (t % 1.0)).sin() * 0.5 - click;
    (l, r)
}

impl AsyncRead for SynthWav {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_sent < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.head_sent);
            buf.put_slice(&this.head[this.head_sent..this.head_sent + n]);
            this.head_sent += n;
            return Poll::Ready(Ok(()));
        }
        if this.period.is_empty() {
            let seed = this.seed;
            this.period = (0..PERIOD_FRAMES)
                .flat_map(|i| {
                    let (l, r) = synth_sample(i, seed);
                    [l.to_le_bytes(), r.to_le_bytes()]
                })
                .flatten()
                .collect();
        }
        let total = this.frames * 8;
        let offset = (this.sent % (PERIOD_FRAMES * 8)) as usize;
        let n = buf
            .remaining()
            .min(this.period.len() - offset)
            .min((total - this.sent) as usize);
        buf.put_slice(&this.period[offset..offset + n]);
        this.sent += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A song written straight into the store: its four tracks of `frames` each, the mix of the
/// first two, and a record saying all of it is ready.
struct Song {
    id: MusicId,
    tracks: Vec<TrackRecord>,
    mix_key: String,
}

impl Song {
    async fn write(store: &Store, name: &str, frames: u64, id: u64) -> Song {
        Song::write_stems(store, name, frames, id, STEMS.len()).await
    }

    /// A song whose first `stored` stems (and mix) are in the store: the rest are never
    /// downloaded.
    async fn write_stems(store: &Store, name: &str, frames: u64, id: u64, stored: usize) -> Song {
        let id = MusicId(id);
        let names: Vec<String> = STEMS.iter().map(|s| s.to_string()).collect();
        let tracks = TrackRecord::for_sources(id, &names);
        for (seed, stem) in STEMS.iter().enumerate().take(stored) {
            let mut wav = SynthWav::new(frames, seed as u64);
            store
                .put_compressed_from(&objects::track(id, Incarnation::default(), stem), &mut wav)
                .await
                .expect("a track stored");
        }
        let mix_key = objects::selection_key(&[0, 1]);
        let mut mix = SynthWav::new(frames, 9);
        store
            .put_compressed_from(
                &objects::mix(id, Incarnation::default(), &mix_key),
                &mut mix,
            )
            .await
            .expect("a mix stored");
        let now = now_ms();
        let record = MusicRecord {
            music_id: id,
            content_hash: format!("{:064x}", id.0),
            name: name.to_string(),
            band: String::new(),
            file_name: format!("{name}.wav"),
            size: 0,
            codec: "pcm_f32le".into(),
            sample_rate: RATE,
            channels: 2,
            duration_s: frames as f64 / f64::from(RATE),
            tracks: tracks.clone(),
            model: "test".into(),
            created_ms: now,
            updated_ms: now,
            state: MusicState::Done,
            error: None,
            plan: None,
            separated: Vec::new(),
            parts: 0,
            tracks_ready: true,
            mixes: vec![MixRecord {
                key: mix_key.clone(),
                tracks: vec![tracks[0].track_id, tracks[1].track_id],
                gains: Vec::new(),
                ready: true,
            }],
            incarnation: Incarnation::default(),
            client: None,
        };
        assert!(store.create_music(&record).await.expect("a record"));
        Song {
            id,
            tracks,
            mix_key,
        }
    }

    fn track_path(&self, stem: usize, format: Format) -> String {
        format!(
            "/music/{}/track/{}?format={format}",
            self.id, self.tracks[stem].track_id
        )
    }

    fn mix_path(&self, format: Format) -> String {
        format!("/music/{}/mix/{}?format={format}", self.id, self.mix_key)
    }
}

/// A system (with one separator: the gateway serves once a model is registered) and a store
/// client of its NATS.
async fn start() -> (System, Store) {
    let system = System::start(DME, Options::default()).await;
    let store = Store::connect(
        &system.nats.url(),
        "downloads-test",
        Duration::from_secs(10),
    )
    .await
    .expect("the store");
    (system, store)
}

/// One answer, its body read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .to_str()
            .expect("an ASCII header")
    }

    fn content_length(&self) -> u64 {
        self.header(header::CONTENT_LENGTH)
            .parse()
            .expect("a number")
    }
}

async fn send(
    system: &System,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> Answer {
    let mut request = client().request(method, system.url(path));
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let r = request.send().await.expect("an answer");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("the whole body").to_vec();
    Answer {
        status,
        headers,
        bytes,
    }
}

async fn get(system: &System, path: &str, headers: &[(header::HeaderName, &str)]) -> Answer {
    send(system, Method::GET, path, headers).await
}

/// What `dme_audio::encode` makes of a stored float WAV in `format`.
fn encoded(float_wav: &[u8], format: Format) -> Vec<u8> {
    let (audio, rate) = dme_audio::read_wav(float_wav).expect("a float WAV");
    dme_audio::encode(&audio.left, &audio.right, rate, format).expect("an encoding")
}

#[tokio::test]
async fn downloads_follow_rfc_9110() {
    let (system, store) = start().await;
    let song = Song::write(&store, "Ünïcode \"song\"", SHORT_FRAMES, 101).await;
    let drums = SynthWav::new(SHORT_FRAMES, 0).bytes();

    for format in Format::ALL {
        let path = song.track_path(0, format);
        let expected = encoded(&drums, format);
        let total = expected.len() as u64;

        // 200: the whole file, equal to the whole-file encoder's, with every header.
        let whole = get(&system, &path, &[]).await;
        assert_eq!(whole.status, StatusCode::OK, "{path}");
        assert!(
            whole.bytes == expected,
            "{path}: bytes differ from dme_audio::encode"
        );
        assert_eq!(whole.content_length(), total);
        assert_eq!(whole.header(header::ACCEPT_RANGES), "bytes");
        assert_eq!(whole.header(header::CONTENT_TYPE), format.content_type());
        let etag = whole.header(header::ETAG).to_string();
        assert!(
            etag.starts_with("\"sha256-") && etag.ends_with('"'),
            "{etag}"
        );
        let disposition = whole.header(header::CONTENT_DISPOSITION);
        let ext = format.extension();
        assert!(
            disposition.starts_with("attachment; ")
                && disposition.contains(&format!("filename=\"_n_code _song_ - drums.{ext}\""))
                && disposition.contains(&format!(
                    "filename*=UTF-8''%C3%9Cn%C3%AFcode%20_song_%20%2D%20drums.{ext}"
                )),
            "{disposition}"
        );

        // HEAD: the same headers, no body, the reader never read.
        let head = send(&system, Method::HEAD, &path, &[]).await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(head.bytes.is_empty());
        assert_eq!(head.content_length(), total);
        assert_eq!(head.header(header::ETAG), etag);
        assert_eq!(head.header(header::ACCEPT_RANGES), "bytes");
        assert_eq!(head.header(header::CONTENT_DISPOSITION), disposition);

        // 206: one range, its bytes and Content-Range.
        for (range, start, end) in [
            ("bytes=0-99", 0, 99),
            ("bytes=1000-", 1000, total - 1),
            ("bytes=-500", total - 500, total - 1),
            ("bytes=200000-999999999", 200_000, total - 1),
        ] {
            let part = get(&system, &path, &[(header::RANGE, range)]).await;
            assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{path} {range}");
            assert_eq!(
                part.header(header::CONTENT_RANGE),
                format!("bytes {start}-{end}/{total}")
            );
            assert_eq!(part.content_length(), end - start + 1);
            assert!(
                part.bytes == expected[start as usize..=end as usize],
                "{path} {range}"
            );
            assert_eq!(part.header(header::ETAG), etag);
        }

        // 416: a range past the end, with Content-Range: bytes */size and a JSON error.
        for range in ["bytes=999999999-", &format!("bytes={total}-"), "bytes=-0"] {
            let refused = get(&system, &path, &[(header::RANGE, range)]).await;
            assert_eq!(
                refused.status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{path} {range}"
            );
            assert_eq!(
                refused.header(header::CONTENT_RANGE),
                format!("bytes */{total}")
            );
            let body: serde_json::Value = serde_json::from_slice(&refused.bytes).unwrap();
            assert!(body["error"].is_string(), "{body}");
        }

        // Malformed ranges, other units and several ranges: 200 with the whole file.
        for range in [
            "bytes=abc",
            "items=0-9",
            "bytes=0-9,20-29",
            "bytes",
            "bytes=0x10-",
        ] {
            let ignored = get(&system, &path, &[(header::RANGE, range)]).await;
            assert_eq!(ignored.status, StatusCode::OK, "{path} {range}");
            assert!(ignored.bytes == expected, "{path} {range}");
            assert!(!ignored.headers.contains_key(header::CONTENT_RANGE));
        }

        // ETag: 304 for the current tag (weak comparison, in a list, or *), 200 for another.
        for matching in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".to_string(),
        ] {
            let unchanged = get(&system, &path, &[(header::IF_NONE_MATCH, &matching)]).await;
            assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED, "{matching}");
            assert!(unchanged.bytes.is_empty());
            assert_eq!(unchanged.header(header::ETAG), etag);
        }
        let changed = get(
            &system,
            &path,
            &[(header::IF_NONE_MATCH, "\"sha256-other\"")],
        )
        .await;
        assert_eq!(changed.status, StatusCode::OK);
        assert!(changed.bytes == expected);

        // If-Range: the range only when the tag matches (strongly); else the whole file.
        let resumed = get(
            &system,
            &path,
            &[(header::RANGE, "bytes=10-19"), (header::IF_RANGE, &etag)],
        )
        .await;
        assert_eq!(resumed.status, StatusCode::PARTIAL_CONTENT);
        assert!(resumed.bytes == expected[10..20]);
        for stale in [
            "\"sha256-other\"".to_string(),
            format!("W/{etag}"),
            "Sat, 01 Jan 2000 00:00:00 GMT".to_string(),
        ] {
            let restarted = get(
                &system,
                &path,
                &[(header::RANGE, "bytes=10-19"), (header::IF_RANGE, &stale)],
            )
            .await;
            assert_eq!(restarted.status, StatusCode::OK, "If-Range: {stale}");
            assert!(restarted.bytes == expected, "If-Range: {stale}");
        }
    }

    // A mix: the same, its file named after its stems.
    let mix_wav = SynthWav::new(SHORT_FRAMES, 9).bytes();
    for format in [Format::Wav32f, Format::Mp3] {
        let path = song.mix_path(format);
        let expected = encoded(&mix_wav, format);
        let head = send(&system, Method::HEAD, &path, &[]).await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(head.bytes.is_empty());
        assert_eq!(head.content_length(), expected.len() as u64);
        let name = format!(
            "filename=\"_n_code _song_ - drums+bass.{}\"",
            format.extension()
        );
        assert!(
            head.header(header::CONTENT_DISPOSITION).contains(&name),
            "{}",
            head.header(header::CONTENT_DISPOSITION)
        );
        let whole = get(&system, &path, &[]).await;
        assert_eq!(whole.status, StatusCode::OK);
        assert!(whole.bytes == expected, "{path}");
        assert_eq!(whole.header(header::ETAG), head.header(header::ETAG));
        let tail = get(&system, &path, &[(header::RANGE, "bytes=-100")]).await;
        assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
        assert!(tail.bytes == expected[expected.len() - 100..]);
    }

    // Missing things are still 404 for HEAD and GET.
    let other = Song {
        id: MusicId(999),
        ..song
    };
    for method in [Method::GET, Method::HEAD] {
        let r = send(
            &system,
            method.clone(),
            &other.track_path(0, Format::Wav16),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}");
    }
}

/// Messages in the object store's stream so far: every chunk and every object's metadata is
/// one, so an encoding stored twice shows as twice its chunks.
async fn object_messages(store: &Store) -> u64 {
    let mut stream = store
        .jetstream()
        .get_stream(format!("OBJ_{}", streams::FILE_BUCKET))
        .await
        .expect("the object stream");
    stream.info().await.expect("its info").state.last_sequence
}

#[tokio::test]
async fn ten_concurrent_first_requests_encode_once() {
    let (system, store) = start().await;
    let song = Song::write(&store, "concurrent", CONCURRENT_FRAMES, 202).await;
    let vocals = SynthWav::new(CONCURRENT_FRAMES, 3).bytes();
    let expected = encoded(&vocals, Format::Flac);
    let path = song.track_path(3, Format::Flac);
    let before = object_messages(&store).await;

    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let url = system.url(&path);
        requests.spawn(async move {
            let r = client().get(url).send().await.expect("an answer");
            (
                r.status(),
                r.bytes().await.expect("the whole body").to_vec(),
            )
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, bytes) = done.expect("a request task");
        assert_eq!(status, StatusCode::OK);
        assert!(
            bytes == expected,
            "a download differs from dme_audio::encode"
        );
    }
    let elapsed = started.elapsed();

    // One stored encoding: its chunks and its metadata, nothing more.
    let cached = objects::encoded(
        &objects::track(song.id, Incarnation::default(), "vocals"),
        "flac",
    );
    let info = store
        .jetstream()
        .get_object_store(streams::FILE_BUCKET)
        .await
        .expect("the bucket")
        .info(&cached)
        .await
        .expect("the cached encoding");
    let written = object_messages(&store).await - before;
    eprintln!(
        "10 concurrent first FLAC requests of {} s: {:.1} s, {} bytes in {} chunks, {written} \
         messages stored",
        CONCURRENT_FRAMES / u64::from(RATE),
        elapsed.as_secs_f64(),
        info.size,
        info.chunks,
    );
    assert_eq!(info.size as usize, expected.len());
    assert_eq!(
        written,
        info.chunks as u64 + 1,
        "the encoding was stored more than once"
    );
}

/// Downloads `path` to nowhere; returns its status and length.
async fn download_len(url: String) -> (StatusCode, u64) {
    let mut r = client().get(&url).send().await.expect("an answer");
    let status = r.status();
    let mut len = 0;
    while let Some(chunk) = r.chunk().await.expect("the body") {
        len += chunk.len() as u64;
    }
    (status, len)
}

#[tokio::test]
async fn long_tracks_stream_in_bounded_memory() {
    let (system, store) = start().await;
    let started = Instant::now();
    let long = Song::write_stems(&store, "long", LONG_FRAMES, 303, LONG_STEMS).await;
    let encoded = Song::write_stems(
        &store,
        "long encoded",
        LONG_ENCODED_FRAMES,
        304,
        LONG_ENCODED_STEMS,
    )
    .await;
    eprintln!("stored in {:.1} s", started.elapsed().as_secs_f64());
    let mut paths = Vec::new();
    for stem in 0..LONG_STEMS {
        for format in [Format::Wav32f, Format::Wav16] {
            paths.push(long.track_path(stem, format));
        }
    }
    for stem in 0..LONG_ENCODED_STEMS {
        for format in [Format::Flac, Format::Mp3] {
            paths.push(encoded.track_path(stem, format));
        }
    }
    let pid = system.gateway.as_ref().expect("a gateway").id();
    let peak_before = memory(pid, "VmHWM");

    let started = Instant::now();
    let client = |paths: Vec<String>| {
        let urls: Vec<String> = paths.iter().map(|p| system.url(p)).collect();
        async move {
            let mut lens = Vec::new();
            for url in urls {
                let at = Instant::now();
                let (status, len) = download_len(url.clone()).await;
                assert_eq!(status, StatusCode::OK, "{url}");
                eprintln!(
                    "{url}: {len} bytes in {:.1} s, gateway peak {} MiB",
                    at.elapsed().as_secs_f64(),
                    memory(pid, "VmHWM") >> 20
                );
                lens.push(len);
            }
            lens
        }
    };
    let (first, second) = tokio::join!(client(paths.clone()), client(paths.clone()));
    let elapsed = started.elapsed();
    assert_eq!(first, second);
    let peak = memory(pid, "VmHWM");
    eprintln!(
        "two clients, {} downloads each, {} MB each, in {:.1} s; gateway peak RSS {} -> {} MiB",
        paths.len(),
        first.iter().sum::<u64>() >> 20,
        elapsed.as_secs_f64(),
        peak_before >> 20,
        peak >> 20
    );
    // The float WAV is the track as stored; the others are as long as their headers say.
    let float_len = 68 + LONG_FRAMES * 8;
    assert_eq!(first[0], float_len);
    assert_eq!(first[1], 44 + LONG_FRAMES * 4);
    assert!(
        peak < PEAK_RSS_BOUND,
        "the gateway peaked at {} MiB",
        peak >> 20
    );
}

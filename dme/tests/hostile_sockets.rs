//! Hostile clients over real sockets: requests that never end, bodies that trickle, headers that
//! never stop, bodies the gateway refuses while they still arrive, forwarded headers from anyone,
//! and files that made decoders panic. Each test starts a real system (nats-server and the
//! service binaries) and talks to its gateway through `tokio::net::TcpStream`, byte by byte as
//! a hostile client would.
//!
//! The gateways here run with short body timeouts (1 s of silence, 2 s in all), so a case that
//! would hang shows within seconds.

mod common;

use dme_testkit::system::memory;
use std::path::Path;
use std::time::{Duration, Instant};

use dme_testkit::model as model_path;
use dme_testkit::system::{Options, System};
use dme_testkit::wait_for;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Longest any single exchange may take before the test calls it a hang: the gateways here time
/// a body out after 2 s at most.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the gateway may take to close what a flood left open (it closes each at once; this
/// covers scheduling on a loaded 2-core machine).
const RELEASE_DEADLINE: Duration = Duration::from_secs(15);

/// Requests sent at once in a flood: enough to keep both HTTP workers busy, few enough for the
/// test process's own descriptors.
const BATCH: usize = 200;

/// Body timeouts of the gateways here (seconds): a second of silence, two in all.
const IDLE_S: &str = "1";
const TOTAL_S: &str = "2";

/// A system whose gateway spools into a folder the test watches.
struct Case {
    sys: System,
    spool: tempfile::TempDir,
}

impl Case {
    async fn start(env: &[(&str, &str)]) -> Case {
        let spool = tempfile::tempdir().unwrap();
        let mut gateway_env = vec![
            (
                "DME_SPOOL_DIR".to_string(),
                spool.path().display().to_string(),
            ),
            ("DME_BODY_IDLE_TIMEOUT_S".to_string(), IDLE_S.to_string()),
            ("DME_BODY_TIMEOUT_S".to_string(), TOTAL_S.to_string()),
        ];
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
        Case { sys, spool }
    }

    fn gateway_pid(&self) -> u32 {
        self.sys.gateway.as_ref().expect("a gateway").id()
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.sys.port))
            .await
            .expect("the gateway accepts connections")
    }

    /// Sends `request` on a fresh connection and reads until the gateway closes it.
    async fn exchange(&self, request: &[u8]) -> Answer {
        let mut conn = self.connect().await;
        let sent = conn.write_all(request).await;
        read_all(&mut conn, sent.is_ok()).await
    }

    fn spooled(&self) -> Vec<std::path::PathBuf> {
        common::spooled(self.spool.path())
    }

    /// Waits until the spool folder is empty and the gateway holds at most `fds` descriptors.
    async fn released(&self, fds: usize, what: &str) {
        let pid = self.gateway_pid();
        wait_for(what, RELEASE_DEADLINE, || async {
            (self.spooled().is_empty() && open_fds(pid) <= fds).then_some(())
        })
        .await;
    }

    /// The median time of five `GET /healthz` on fresh connections, each answered 200.
    async fn health_latency(&self) -> Duration {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let answer = self
                .exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            times.push(started.elapsed());
            assert_eq!(answer.status, Some(200), "{answer:?}");
        }
        times.sort();
        times[2]
    }
}

/// What came back on a connection: the first answer's status and body, how many answers, and
/// whether the gateway closed the connection.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    body: Value,
    answers: usize,
    raw: String,
}

/// Reads until EOF, a reset, or [`EXCHANGE_TIMEOUT`] (a panic: the gateway left the connection
/// hanging).
async fn read_all(conn: &mut (impl AsyncRead + Unpin), must_answer: bool) -> Answer {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        read.is_ok(),
        "the connection was neither answered and closed within {EXCHANGE_TIMEOUT:?}: {raw:?}"
    );
    let status = raw
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    assert!(status.is_some() || !must_answer, "no HTTP answer: {raw:?}");
    let body_at = raw.find("\r\n\r\n").map_or(raw.len(), |i| i + 4);
    let first = raw[body_at..].split("HTTP/1.1 ").next().unwrap_or("");
    Answer {
        status,
        body: serde_json::from_str(first.trim()).unwrap_or(Value::Null),
        answers: raw.matches("HTTP/1.1 ").count(),
        raw,
    }
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// Asserts a JSON error with `status` that names no library internals.
fn refused(answer: &Answer, status: u16) -> String {
    assert_eq!(answer.status, Some(status), "{}", answer.raw);
    let message = answer.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {}", answer.raw))
        .to_string();
    for leak in ["panick", "TimeBase", "overflow", "riff:", "unwrap"] {
        assert!(!message.contains(leak), "{message}");
    }
    message
}

/// The reproduction of the issue: a form whose last part never ends.
fn unterminated_multipart() -> Vec<u8> {
    let body = "--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.ogg\"\r\n\r\n\
                not audio\r\n";
    format!(
        "POST /music HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=X\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A 16-bit PCM WAV of `frames` of a tone with these header fields.
fn wav(
    channels: u16,
    rate: u32,
    block_align: u16,
    data_len: Option<u32>,
    frames: usize,
) -> Vec<u8> {
    let data: Vec<u8> = (0..frames * usize::from(channels.clamp(1, 8)))
        .flat_map(|i| (((i as f32 * 0.05).sin() * 8_000.0) as i16).to_le_bytes())
        .collect();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.wrapping_mul(u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.unwrap_or(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

fn raw_upload(name: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /music?name={name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

// 2,000 forms that never end and 200 bodies that never arrive: each is answered within the
// body timeouts, and afterwards the gateway holds no socket or spool file more than before and
// answers at once.
#[tokio::test]
async fn floods_of_unterminated_and_slow_bodies_leave_nothing_behind() {
    let case = Case::start(&[]).await;
    let pid = case.gateway_pid();
    case.health_latency().await;
    let fds_before = open_fds(pid);
    let started = Instant::now();

    let request = unterminated_multipart();
    let mut sent = 0;
    while sent < 2_000 {
        let mut batch = JoinSet::new();
        for _ in 0..BATCH {
            let port = case.sys.port;
            let request = request.clone();
            batch.spawn(async move {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                conn.write_all(&request).await.unwrap();
                read_all(&mut conn, true).await
            });
        }
        while let Some(answer) = batch.join_next().await {
            let answer = answer.unwrap();
            let message = refused(&answer, 400);
            assert!(message.contains("closing boundary"), "{message}");
        }
        sent += BATCH;
    }
    let unterminated_s = started.elapsed().as_secs_f64();

    // Three kinds of slow body, concurrently: a Content-Length larger than the body, a byte
    // every 300 ms (past the 2 s deadline), and a client that sends half a body and leaves.
    let started = Instant::now();
    let mut batch = JoinSet::new();
    for i in 0..200 {
        let port = case.sys.port;
        batch.spawn(async move {
            let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let head = "POST /music?name=slow.wav HTTP/1.1\r\nHost: x\r\n\
                        Content-Type: audio/wav\r\nContent-Length: 100000\r\n\r\n";
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(&[0u8; 1000]).await.unwrap();
            match i % 3 {
                0 => Some(read_all(&mut conn, true).await),
                1 => {
                    // A byte every 300 ms until the answer comes, while the client still sends.
                    let (mut reader, mut writer) = conn.into_split();
                    let trickle = async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = writer.write_all(b"x").await;
                        }
                    };
                    tokio::select! {
                        answer = read_all(&mut reader, true) => Some(answer),
                        () = trickle => None,
                    }
                }
                _ => None, // dropped: the client leaves
            }
        });
    }
    let mut timed_out = 0;
    while let Some(answer) = batch.join_next().await {
        if let Some(answer) = answer.unwrap() {
            let message = refused(&answer, 408);
            assert!(message.contains(" s"), "{message}");
            timed_out += 1;
        }
    }
    let slow_s = started.elapsed().as_secs_f64();
    assert_eq!(timed_out, 134);

    case.released(fds_before, "every socket and spool file released")
        .await;
    let fds_after = open_fds(pid);
    let latency = case.health_latency().await;
    eprintln!(
        "2000 unterminated forms answered in {unterminated_s:.1} s, 200 slow bodies in \
         {slow_s:.1} s; descriptors {fds_before} before, {fds_after} after; /healthz in {} ms",
        latency.as_millis()
    );
    assert!(
        latency < Duration::from_millis(50),
        "/healthz took {latency:?} after the flood"
    );
}

/// Bytes of the hostile part header: 200 MiB.
const HUGE_HEADER_BYTES: usize = 200 << 20;

/// How much the gateway's peak memory may grow while refusing it: the framing limit (1 MiB) plus
/// the parser's and the socket's buffers, with room for allocator slack.
const HUGE_HEADER_RSS_BOUND: u64 = 32 << 20;

// A multipart part whose header never ends is cut off at the framing limit, not buffered whole;
// sent with a Content-Length within the upload limit and chunked (no length at all). The body
// timeouts here are long, since what is tested is the framing limit: this test failed once in
// CI on a machine so loaded that JetStream requests timed out, and with the suite's 2 s body
// deadline both the 413s and the legitimate 20 MB form at the end race that deadline.
#[tokio::test]
async fn a_200_mib_part_header_is_refused_in_bounded_memory() {
    let case = Case::start(&[
        ("DME_MAX_UPLOAD_BYTES", "300000000"),
        ("DME_BODY_IDLE_TIMEOUT_S", "30"),
        ("DME_BODY_TIMEOUT_S", "120"),
    ])
    .await;
    let pid = case.gateway_pid();
    case.health_latency().await;
    for chunked in [false, true] {
        let peak_before = memory(pid, "VmHWM");
        let started = Instant::now();
        let mut conn = case.connect().await;
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", HUGE_HEADER_BYTES + 100)
        };
        let head = format!(
            "POST /music HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
             {framing}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let opening =
            b"--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nX-Pad: ";
        let (mut reader, mut writer) = conn.into_split();
        let send = tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0;
            let mut first = true;
            while sent < HUGE_HEADER_BYTES {
                let data: Vec<u8> = if first {
                    [&opening[..], &chunk[opening.len()..]].concat()
                } else {
                    chunk.clone()
                };
                first = false;
                let framed = if chunked {
                    [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat()
                } else {
                    data
                };
                if writer.write_all(&framed).await.is_err() {
                    break; // the gateway closed the connection
                }
                sent += chunk.len();
            }
            sent
        });
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, reader.read_to_end(&mut bytes)).await;
        let elapsed = started.elapsed();
        let sent = send.await.unwrap();
        let raw = String::from_utf8_lossy(&bytes);
        assert!(
            raw.starts_with("HTTP/1.1 413"),
            "chunked {chunked}: {raw:?}"
        );
        assert!(raw.contains("part headers"), "{raw}");
        let peak_after = memory(pid, "VmHWM");
        eprintln!(
            "200 MiB part header (chunked: {chunked}): 413 after {:.2} s, {} MiB sent; gateway \
             peak {} -> {} MiB, now {} MiB",
            elapsed.as_secs_f64(),
            sent >> 20,
            peak_before >> 20,
            peak_after >> 20,
            memory(pid, "VmRSS") >> 20
        );
        assert!(
            peak_after - peak_before < HUGE_HEADER_RSS_BOUND,
            "the gateway's peak grew by {} MiB",
            (peak_after - peak_before) >> 20
        );
        // The gateway may read the rest and discard it (it lingers a second after answering),
        // but the answer comes after the framing limit, long before the header ends.
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
    // A legitimate form of 20 MB still goes through the same limits.
    let audio = wav(2, 44_100, 4, None, 5 * 44_100);
    let mut body =
        b"--X\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nsong\r\n".to_vec();
    body.extend_from_slice(
        b"--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n",
    );
    body.extend_from_slice(&audio);
    body.extend(std::iter::repeat_n(0u8, 20_000_000 - audio.len())); // a long trailing silence
    body.extend_from_slice(b"\r\n--X--\r\n");
    let mut request = format!(
        "POST /music HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=X\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = case.exchange(&request).await;
    assert_eq!(answer.status, Some(200), "{}", answer.raw);
}

// A body refused while it still arrives is never read as requests of its own: the connection
// closes after the refusal. A chunked body is drained instead, and the next request is served.
// A request head larger than the gateway takes is refused the same way.
#[tokio::test]
async fn a_refused_body_is_not_parsed_as_a_new_request() {
    let case = Case::start(&[("DME_MAX_UPLOAD_BYTES", "100000")]).await;
    let smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(8_000); // 264 KB
                                                                              // Announced over the limit: refused before a byte is read.
    let mut conn = case.connect().await;
    let head = format!(
        "POST /music?name=a.wav HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n\
         Content-Length: {}\r\n\r\n",
        smuggled.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&smuggled);
    request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = conn.write_all(&request).await;
    let answer = read_all(&mut conn, true).await;
    refused(&answer, 413);
    assert_eq!(answer.answers, 1, "{}", answer.raw);

    // Unannounced (chunked), over the limit once read: refused, and nothing in it answered.
    let mut conn = case.connect().await;
    let mut request = b"POST /music?name=a.wav HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for piece in smuggled.chunks(16 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = conn.write_all(&request).await;
    let answer = read_all(&mut conn, true).await;
    refused(&answer, 413);
    assert!(
        answer.answers <= 2,
        "a request inside the refused body was answered: {} answers",
        answer.answers
    );

    // A head of 1 MiB of headers.
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    request.extend_from_slice(format!("X-Pad: {}\r\n", "a".repeat(1 << 20)).as_bytes());
    request.extend_from_slice(b"\r\n");
    let answer = case.exchange(&request).await;
    assert!(
        answer.status.is_none_or(|s| s == 431 || s == 400),
        "{:?}",
        answer.status
    );
    // A head that never ends is cut off (actix's client_request_timeout).
    let mut conn = case.connect().await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let answer = read_all(&mut conn, false).await;
    assert!(
        answer.status.is_none_or(|s| s == 408),
        "{:?}",
        answer.status
    );
    // The gateway still serves.
    case.health_latency().await;
}

// Links in answers follow forwarded headers only from configured proxies, only to http(s), and
// DME_PUBLIC_URL wins. Files that made decoders panic get a clear message, and extreme header
// values neither panic nor overflow.
#[tokio::test]
async fn links_trust_only_configured_proxies_and_errors_name_no_internals() {
    let mut case = Case::start(&[]).await;

    // Extreme values first (this gateway's spool must stay clean).
    for (name, file, expected) in [
        ("rate0.wav", wav(2, 0, 4, None, 4_410), "sample rate is 0"),
        ("ratemax.wav", wav(2, u32::MAX, 4, None, 4_410), "Hz"),
        (
            "channels0.wav",
            wav(0, 44_100, 4, None, 4_410),
            "0 channels",
        ),
        (
            "channelsmax.wav",
            wav(u16::MAX, 44_100, u16::MAX, None, 4_410),
            "channel",
        ),
        (
            "align0.wav",
            wav(2, 44_100, 0, None, 4_410),
            "frames of 0 bytes",
        ),
    ] {
        let answer = case.exchange(&raw_upload(name, &file)).await;
        let message = refused(&answer, 415);
        assert!(message.contains(expected), "{name}: {message}");
    }
    // A data size of 4 GiB over a tenth of a second: the tenth of a second.
    let answer = case
        .exchange(&raw_upload(
            "huge.wav",
            &wav(2, 44_100, 4, Some(u32::MAX), 4_410),
        ))
        .await;
    assert_eq!(answer.status, Some(200), "{}", answer.raw);
    assert_eq!(answer.body["duration_s"], 0.1, "{}", answer.raw);
    let id = answer.body["music_id"].as_u64().unwrap();
    // JSON nested far deeper than serde_json's recursion limit, inside the size limit.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let request = format!(
        "POST /music/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{deep}",
        deep.len()
    );
    refused(&case.exchange(request.as_bytes()).await, 400);
    assert!(case.spooled().is_empty());

    case.sys
        .wait_music(id, "the stems", |b| {
            b["instruments"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let port = case.sys.port;
    let own = format!("http://127.0.0.1:{port}");
    let hostile = [
        "X-Forwarded-Host: evil.example\r\n",
        "X-Forwarded-Proto: https\r\n",
        "X-Forwarded-Proto: javascript\r\n",
        "Forwarded: host=evil.example;proto=https\r\n",
        "Forwarded: proto=javascript;host=evil.example\r\n",
        "X-Forwarded-Host: evil.example/x?\r\n",
    ];
    // Nobody trusted (the default), and a proxy list the peer is not on.
    for trusted in [None, Some("10.0.0.0/8,192.168.1.1")] {
        if let Some(list) = trusted {
            restart_gateway(&mut case, &[("DME_TRUSTED_PROXIES", list)]).await;
        }
        for headers in hostile {
            assert_eq!(link(&case, id, headers).await, own, "{trusted:?} {headers}");
        }
    }
    // The peer (127.0.0.1) trusted: its forwarded values, http(s) and well-formed hosts only.
    restart_gateway(&mut case, &[("DME_TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    let expected = [
        "http://evil.example".to_string(),
        format!("https://127.0.0.1:{port}"),
        own.clone(),
        "https://evil.example".to_string(),
        "http://evil.example".to_string(),
        own.clone(),
    ];
    for (headers, expected) in hostile.iter().zip(expected) {
        assert_eq!(link(&case, id, headers).await, expected, "{headers}");
    }
    // The configured public URL wins over everything.
    restart_gateway(
        &mut case,
        &[
            ("DME_TRUSTED_PROXIES", "127.0.0.0/8"),
            ("DME_PUBLIC_URL", "https://dme.example.com/"),
        ],
    )
    .await;
    for headers in hostile {
        assert_eq!(link(&case, id, headers).await, "https://dme.example.com");
    }
}

/// The base of the first stem's link in `GET /music/{id}` sent with `headers`.
async fn link(case: &Case, id: u64, headers: &str) -> String {
    let port = case.sys.port;
    let request = format!(
        "GET /music/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    );
    let answer = case.exchange(request.as_bytes()).await;
    assert_eq!(answer.status, Some(200), "{}", answer.raw);
    let track = answer.body["instruments"][0]["track"].as_str().unwrap();
    track.split("/music/").next().unwrap().to_string()
}

/// Restarts the gateway (it keeps nothing of its own) with `env` on top of the case's settings.
async fn restart_gateway(case: &mut Case, env: &[(&str, &str)]) {
    drop(case.sys.gateway.take());
    let spool = case.spool.path().display().to_string();
    let mut gateway_env = vec![("DME_SPOOL_DIR".to_string(), spool)];
    gateway_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    case.sys.options.gateway_env = gateway_env;
    case.sys.start_gateway().await;
    assert!(Path::new(&format!("/proc/{}", case.gateway_pid())).exists());
}

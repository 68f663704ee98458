//! Observability against real processes: every worker is a NATS micro service (`$SRV.PING`,
//! `$SRV.INFO`, `$SRV.STATS`, a `status` endpoint), `GET /workers` lists them, and the gateway
//! and every worker serve Prometheus metrics, `/healthz` and `/readyz`.
//!
//! The workers get `DME_METRICS_ADDR=127.0.0.1:0`: each takes a free port and announces it in
//! its micro service's metadata (`metrics`), which is how this test (and an operator) finds it.

use std::collections::BTreeMap;

use dme_protocol::subjects;
use dme_testkit::system::{env, synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::wait_for;
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The `kind` labels of `dme_queue_depth`.
const WORK_KINDS: [&str; 4] = ["uploaded", "segment", "separated", "mix"];

/// One sample of a Prometheus text exposition: a name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (version 0.0.4): `# HELP`/`# TYPE` lines and blank lines
/// skipped, each other line `name{label="value",...} value`. Label values may hold escaped
/// quotes and backslashes.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample line has a value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels end with }}: {line}"));
                (name.to_string(), parse_labels(body, line))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "a quoted label value in {line}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("an escape at the end of {line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("an unterminated label value in {line}"),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The samples named `name` whose labels include every pair of `with`.
fn samples<'a>(all: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample named `name` with labels `with`.
fn value(all: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    let found = samples(all, name, with);
    assert_eq!(found.len(), 1, "one {name} {with:?} in {all:#?}");
    found[0].value
}

/// `GET url`: its status and body.
async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.expect("a body"))
}

/// Scrapes and parses `url`'s metrics.
async fn scrape(http: &reqwest::Client, url: &str) -> Vec<Sample> {
    let (status, text) = get(http, url).await;
    assert_eq!(status, 200, "{url}: {text}");
    parse_prometheus(&text)
}

/// The `GET /workers` item of `service`'s one instance.
fn only<'a>(workers: &'a [Value], service: &str) -> &'a Value {
    let found: Vec<&Value> = workers.iter().filter(|w| w["service"] == service).collect();
    assert_eq!(found.len(), 1, "one {service} in {workers:#?}");
    found[0]
}

#[test]
fn the_parser_reads_labels_escapes_and_special_values() {
    let text = "# HELP x y\n# TYPE x counter\nx 3\n\
                h_bucket{route=\"/music/{music_id}\",le=\"+Inf\"} 2\n\
                g{a=\"q\\\"uote\",b=\"back\\\\slash\"} -1.5\n";
    let all = parse_prometheus(text);
    assert_eq!(value(&all, "x", &[]), 3.0);
    assert_eq!(
        value(
            &all,
            "h_bucket",
            &[("route", "/music/{music_id}"), ("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(
        value(&all, "g", &[("a", "q\"uote"), ("b", "back\\slash")]),
        -1.5
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_shows_itself_on_nats_and_serves_metrics_health_and_readiness() {
    let mut sys = System::start(
        DME,
        Options {
            env: env(&[("DME_METRICS_ADDR", "127.0.0.1:0")]),
            ..Options::default()
        },
    )
    .await;
    let http = sys.http.clone();

    // The gateway: alive, and ready (NATS connected, a model registered).
    let health = sys.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "ok");
    assert!(
        health.body["model"]["fingerprint"].is_string(),
        "{}",
        health.body
    );
    let ready = sys.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["checks"]["nats"], true, "{}", ready.body);
    assert_eq!(ready.body["checks"]["model"], true, "{}", ready.body);

    // Every worker answers discovery on the bus, to a client that is not dme's code.
    let nats = async_nats::connect(sys.nats.url())
        .await
        .expect("a raw NATS client connects");
    let mut ids = BTreeMap::new();
    for name in [
        subjects::SERVICE_SPLITTER,
        subjects::SERVICE_MIXER,
        subjects::SERVICE_SEPARATOR,
    ] {
        let ping = nats
            .request(format!("{}.{name}", subjects::SERVICE_PING), "".into())
            .await
            .unwrap_or_else(|e| panic!("{name} answers $SRV.PING: {e}"));
        let ping: Value = serde_json::from_slice(&ping.payload).expect("JSON");
        assert_eq!(ping["name"], name, "{ping}");
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response", "{ping}");
        let info = nats
            .request(format!("{}.{name}", subjects::SERVICE_INFO), "".into())
            .await
            .unwrap_or_else(|e| panic!("{name} answers $SRV.INFO: {e}"));
        let info: Value = serde_json::from_slice(&info.payload).expect("JSON");
        assert_eq!(info["name"], name, "{info}");
        assert_eq!(info["id"], ping["id"], "{info}");
        let id = info["id"].as_str().expect("an id").to_string();
        let status_subject = subjects::status(name, &id);
        assert!(
            info["endpoints"]
                .as_array()
                .expect("endpoints")
                .iter()
                .any(|e| e["name"] == "status" && e["subject"] == status_subject.as_str()),
            "{info}"
        );
        assert!(info["metadata"]["metrics"].is_string(), "{info}");
        ids.insert(name, (id, info));
    }
    let (separator_id, separator_info) = &ids[subjects::SERVICE_SEPARATOR];
    assert_eq!(separator_info["metadata"]["worker"], "sep-1");
    assert_eq!(
        separator_info["metadata"]["fingerprint"],
        health.body["model"]["fingerprint"]
    );

    // Each worker's metrics address: alive and ready.
    let metrics_url = |name: &str, path: &str| {
        let addr = ids[name].1["metadata"]["metrics"]
            .as_str()
            .expect("an address");
        format!("http://{addr}{path}")
    };
    for name in [
        subjects::SERVICE_SPLITTER,
        subjects::SERVICE_MIXER,
        subjects::SERVICE_SEPARATOR,
    ] {
        let (status, body) = get(&http, &metrics_url(name, "/healthz")).await;
        assert_eq!(status, 200, "{name}: {body}");
        let (status, body) = get(&http, &metrics_url(name, "/readyz")).await;
        assert_eq!(status, 200, "{name}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["checks"]["nats"], true, "{name}: {body}");
    }
    let (_, body) = get(&http, &metrics_url(subjects::SERVICE_SEPARATOR, "/readyz")).await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["checks"]["model"], true, "{body}");

    // A short song, separated and mixed; one of its stems downloaded.
    // 6 s at the embedded model's segment: several segments, one window.
    let song = synth_wav(6 * 44_100, 44_100, 3.0);
    let uploaded = song.len() as f64;
    let id = sys.upload_and_select_all(song, "observed.wav").await;
    let done = sys.finished(id).await;
    let segments = sys.jobs_of(id).await.len();
    assert!(segments > 1, "a song of several segments: {segments}");
    let stem_url = done["instruments"][0]["track"]
        .as_str()
        .expect("a stem link");
    let stem = sys.download(&format!("{stem_url}?format=wav32f")).await;
    assert_eq!(stem.status, 200);

    // The separator's own metrics: each segment separated once, each timed.
    let separator = scrape(&http, &metrics_url(subjects::SERVICE_SEPARATOR, "/metrics")).await;
    assert_eq!(
        value(&separator, "dme_segments_separated_total", &[]),
        segments as f64
    );
    assert!(value(&separator, "dme_inference_seconds_count", &[]) >= segments as f64);
    assert_eq!(
        value(
            &separator,
            "dme_inference_seconds_bucket",
            &[("le", "+Inf")]
        ),
        value(&separator, "dme_inference_seconds_count", &[]),
        "a histogram with buckets"
    );
    assert!(
        samples(&separator, "dme_failures_total", &[]).is_empty(),
        "nothing failed: {separator:#?}"
    );

    // Its status on the bus says the same, on its status endpoint and in its stats.
    let status = nats
        .request(
            subjects::status(subjects::SERVICE_SEPARATOR, separator_id),
            "".into(),
        )
        .await
        .expect("the status endpoint answers");
    let status: Value = serde_json::from_slice(&status.payload).expect("JSON");
    assert_eq!(status["segments_done"], segments, "{status}");
    assert_eq!(status["failures"], 0, "{status}");
    assert!(status["mean_inference_ms"].as_f64().is_some(), "{status}");
    assert_eq!(
        status["model"]["fingerprint"],
        health.body["model"]["fingerprint"]
    );

    // GET /workers: the fleet, sorted by service, the separator's work in its stats.
    let workers = sys.get("/workers").await;
    assert_eq!(workers.status, 200, "{}", workers.body);
    let list = workers.body.as_array().expect("a list").clone();
    let services: Vec<&str> = list.iter().filter_map(|w| w["service"].as_str()).collect();
    let mut sorted = services.clone();
    sorted.sort_unstable();
    assert_eq!(services, sorted, "sorted by service");
    for service in ["mixer", "separator", "splitter"] {
        assert!(services.contains(&service), "{service} in {list:#?}");
    }
    let sep = only(&list, "separator");
    assert_eq!(sep["name"], subjects::SERVICE_SEPARATOR);
    assert_eq!(sep["id"], separator_id.as_str());
    assert_eq!(sep["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(sep["metadata"]["worker"], "sep-1");
    assert_eq!(sep["stats"]["segments_done"], segments, "{sep}");
    assert_eq!(sep["stats"]["model"]["name"], health.body["model"]["name"]);
    let mixer = only(&list, "mixer");
    assert!(
        mixer["stats"]["messages_handled"].as_u64() >= Some(segments as u64),
        "{mixer}"
    );
    let splitter = only(&list, "splitter");
    assert_eq!(splitter["stats"]["messages_handled"], 1, "{splitter}");

    // The gateway's metrics: latency by route pattern, bytes in and out, gauges from NATS.
    let gateway = scrape(&http, &sys.url("/metrics")).await;
    let song_route = [
        ("route", "/music/{music_id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert!(
        value(
            &gateway,
            "dme_http_request_duration_seconds_count",
            &song_route
        ) >= 1.0,
        "the progress polls are timed under their pattern"
    );
    assert!(
        !samples(
            &gateway,
            "dme_http_request_duration_seconds_bucket",
            &song_route
        )
        .is_empty(),
        "a histogram with buckets"
    );
    assert!(
        gateway.iter().all(|s| s
            .labels
            .get("route")
            .is_none_or(|r| !r.contains(&id.to_string()))),
        "no raw path /music/{id} as a route label"
    );
    assert_eq!(
        value(&gateway, "dme_uploaded_bytes_total", &[("route", "/music")]),
        uploaded
    );
    let stem_route = [("route", "/music/{music_id}/track/{track_id}")];
    assert!(value(&gateway, "dme_served_bytes_total", &stem_route) >= stem.bytes.len() as f64);
    assert_eq!(value(&gateway, "dme_songs", &[("state", "done")]), 1.0);
    assert_eq!(value(&gateway, "dme_songs", &[("state", "failed")]), 0.0);
    // Every kind of work has its gauge; with the song done, each drains to 0 (its last acks may
    // land just after the song is marked done, and a census serves scrapes for a few seconds).
    for kind in WORK_KINDS {
        value(&gateway, "dme_queue_depth", &[("kind", kind)]);
    }
    wait_for("the work stream drained", SONG_DEADLINE, || async {
        let all = scrape(&http, &sys.url("/metrics")).await;
        WORK_KINDS
            .iter()
            .all(|kind| value(&all, "dme_queue_depth", &[("kind", kind)]) == 0.0)
            .then_some(())
    })
    .await;

    // With no separator, a second song's segments wait in the queue, and the gauges show it
    // (at a census after the upload: scrapes are polled past the census's age).
    assert!(sys.kill_separator("sep-1"));
    let waiting = sys
        .upload_ok(synth_wav(6 * 44_100, 44_100, 5.0), "waiting.wav")
        .await;
    assert!(waiting["music_id"].as_u64() != Some(id));
    let queued = wait_for(
        "the second song's segments queued",
        SONG_DEADLINE,
        || async {
            let all = scrape(&http, &sys.url("/metrics")).await;
            let depth = value(&all, "dme_queue_depth", &[("kind", "segment")]);
            (depth >= 1.0).then_some(all)
        },
    )
    .await;
    assert_eq!(value(&queued, "dme_songs", &[("state", "separating")]), 1.0);
    assert_eq!(value(&queued, "dme_songs", &[("state", "done")]), 1.0);

    // Without NATS the gateway is alive but not ready, and says why.
    sys.nats.kill();
    let not_ready = wait_for(
        "the gateway to notice NATS is gone",
        SONG_DEADLINE,
        || async {
            let r = sys.get("/readyz").await;
            (r.status == 503).then_some(r.body)
        },
    )
    .await;
    assert_eq!(not_ready["status"], "not ready", "{not_ready}");
    assert_eq!(not_ready["checks"]["nats"], false, "{not_ready}");
    let health = sys.get("/healthz").await;
    assert_eq!(health.status, 200, "alive without NATS: {}", health.body);
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    assert!(
        health.body.get("model").is_some_and(Value::is_null),
        "no model named while NATS cannot tell it: {}",
        health.body
    );
    let (status, _) = get(&http, &metrics_url(subjects::SERVICE_SPLITTER, "/healthz")).await;
    assert_eq!(status, 200, "alive without NATS");
    let splitter_ready = wait_for("the splitter to notice NATS is gone", SONG_DEADLINE, || {
        let url = metrics_url(subjects::SERVICE_SPLITTER, "/readyz");
        let http = http.clone();
        async move {
            let (status, body) = get(&http, &url).await;
            (status == 503).then_some(body)
        }
    })
    .await;
    assert!(
        splitter_ready.contains(r#""nats":false"#),
        "{splitter_ready}"
    );
}

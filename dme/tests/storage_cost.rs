//! What a song costs in the object store, at its peak, through the whole pipeline (cut,
//! separation, assembly, mix): the bytes of the file bucket's stream, sampled while the song is
//! processed. Intermediate audio is stored compressed (zstd) and deleted once used, so an hour of
//! silence costs almost nothing.
//!
//! `an_hour_of_silence_costs_little_store` separates a whole hour (616 segments of the embedded
//! model): minutes of CPU, so it runs under `make test-long`; `make test` runs the same for five
//! minutes against a twelfth of the bound.
//! `a_songs_store_cost` measures any file named by `DME_COST_SONG` (skipped without it), played
//! `DME_COST_REPEAT` times over (default 1) and uploaded as FLAC when repeated, to measure a
//! song of a given length from a short recording.

use std::time::{Duration, Instant};

use dme_audio::Format;
use dme_protocol::streams;
use dme_testkit::song::silence_flac;
use dme_testkit::system::{decode_bytes, Options, System};

/// The dme binary to measure: `DME_COST_BIN` (e.g. a build of an older commit), else this one.
fn dme() -> String {
    std::env::var("DME_COST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dme").to_string())
}

/// How long an hour-long song may take end to end on a small machine.
const HOUR_DEADLINE: Duration = Duration::from_secs(3600);

/// Most store bytes an hour of silence may cost at its peak (issue 11): its original is 618 KB.
const SILENT_HOUR_PEAK: u64 = 200_000_000;

/// Uploads `bytes`, selects every stem and samples the file bucket's stream bytes until the song
/// is done; returns (peak, bytes at the end, seconds taken).
async fn store_cost(
    sys: &System,
    bytes: Vec<u8>,
    name: &str,
    deadline: Duration,
) -> (u64, u64, f64) {
    let store = dme_storage::Store::connect(&sys.nats.url(), "cost", Duration::from_secs(5))
        .await
        .expect("NATS");
    let stream_name = format!("OBJ_{}", streams::FILE_BUCKET);
    let bucket_bytes = || async {
        let mut stream = store
            .jetstream()
            .get_stream(&stream_name)
            .await
            .expect("the file bucket's stream");
        stream.info().await.expect("stream info").state.bytes
    };
    let started = Instant::now();
    let id = sys.upload_and_select_all(bytes, name).await;
    let mut peak = 0;
    loop {
        peak = peak.max(bucket_bytes().await);
        let body = sys.get(&format!("/music/{id}")).await.body;
        assert_ne!(body["state"], "failed", "{body}");
        if body["progress"] == 100 && body["final"].is_string() {
            break;
        }
        assert!(started.elapsed() < deadline, "not done in time: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (peak, bucket_bytes().await, started.elapsed().as_secs_f64())
}

#[tokio::test]
#[ignore = "separates a whole hour: minutes of CPU; run by make test-long"]
async fn an_hour_of_silence_costs_little_store() {
    let flac = silence_flac(3600);
    let size = flac.len();
    let sys = System::start(dme(), Options::default()).await;
    let (peak, end, secs) = store_cost(&sys, flac, "silence.flac", HOUR_DEADLINE).await;
    eprintln!(
        "an hour of silence ({size} bytes of FLAC): store peak {peak} bytes, {end} bytes when \
         done, {secs:.0} s end to end"
    );
    assert!(
        peak < SILENT_HOUR_PEAK,
        "an hour of silence cost {peak} bytes of store at its peak"
    );
}

/// The same as the hour in `make test`, in proportion: five minutes of silence (52 segments of
/// the embedded model) may cost a twelfth of the hour's bound at its peak.
#[tokio::test]
async fn five_minutes_of_silence_cost_a_twelfth_of_the_hours_bound() {
    let flac = silence_flac(300);
    let size = flac.len();
    let sys = System::start(dme(), Options::default()).await;
    let (peak, end, secs) = store_cost(&sys, flac, "silence.flac", HOUR_DEADLINE).await;
    eprintln!(
        "five minutes of silence ({size} bytes of FLAC): store peak {peak} bytes, {end} bytes \
         when done, {secs:.0} s end to end"
    );
    assert!(
        peak < SILENT_HOUR_PEAK / 12,
        "five minutes of silence cost {peak} bytes of store at its peak"
    );
}

#[tokio::test]
async fn a_songs_store_cost() {
    let Ok(path) = std::env::var("DME_COST_SONG") else {
        eprintln!("DME_COST_SONG not set: nothing to measure");
        return;
    };
    let mut bytes = std::fs::read(&path).expect("DME_COST_SONG names a readable file");
    let repeat: usize = std::env::var("DME_COST_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    if repeat > 1 {
        let ext = std::path::Path::new(&path)
            .extension()
            .map_or("mp3".into(), |e| e.to_string_lossy().into_owned());
        // decode_bytes gives the model rate, 44.1 kHz.
        let once = decode_bytes(&bytes, &ext);
        let left = once.left.repeat(repeat);
        let right = once.right.repeat(repeat);
        bytes = dme_audio::encode(&left, &right, 44_100, Format::Flac).expect("a FLAC");
        eprintln!(
            "{path} played {repeat} times: {:.0} s",
            left.len() as f64 / 44_100.0
        );
    }
    let size = bytes.len();
    let name = std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "song".into());
    let name = if repeat > 1 {
        format!("{name}.flac")
    } else {
        name
    };
    let sys = System::start(dme(), Options::default()).await;
    let (peak, end, secs) = store_cost(&sys, bytes, &name, HOUR_DEADLINE).await;
    eprintln!(
        "a song of {size} bytes: store peak {peak} bytes, {end} bytes when done, {secs:.0} s"
    );
}

//! Writes the seed inputs of the `message_decode` and `message_use` fuzz targets: one CBOR
//! encoding of every message and record type, with typical values.
//!
//! `cargo run --example message_seeds -- seeds/message_decode` (in `fuzz/`)

use std::path::PathBuf;

use dme_protocol::messages::{
    EventKind, MixRequest, MusicUploaded, ProgressEvent, SegmentDone, SegmentWork,
};
use dme_protocol::records::{
    JobRecord, JobState, MixRecord, ModelInfo, MusicRecord, MusicState, TrackRecord,
};
use dme_protocol::{encode, Incarnation, JobId, MusicId, SegmentPlan};

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: message_seeds <output folder>"),
    );
    std::fs::create_dir_all(&out).unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(out.join(name), bytes).unwrap();

    let music = MusicId(4_503_599_627_370_495);
    let incarnation = Incarnation(0x0123_4567_89ab_cdef);
    let plan = SegmentPlan::new(1_514_880, 343_980, false);
    let tracks = TrackRecord::for_sources(
        music,
        &["drums", "bass", "other", "vocals"].map(String::from),
    );
    let work = SegmentWork {
        music_id: music,
        job_id: JobId::of(music, 2),
        index: 2,
        plan,
        window: 16,
        model: "0123456789abcdef".into(),
        incarnation,
    };
    write("music-uploaded", encode(&MusicUploaded {
            music_id: music,
            incarnation,
        }));
    write("segment-work", encode(&work));
    write(
        "segment-done",
        encode(&SegmentDone {
            music_id: music,
            index: 2,
            job_id: work.job_id,
            incarnation,
        }),
    );
    write(
        "mix-request",
        encode(&MixRequest {
            music_id: music,
            tracks: tracks.iter().map(|t| t.track_id).take(2).collect(),
            incarnation,
            gains: Vec::new(),
        }),
    );
    write(
        "progress-event",
        encode(&ProgressEvent {
            music_id: music,
            state: MusicState::Failed,
            progress: 42,
            segments_done: 2,
            segments: 5,
            error: Some("the model failed".into()),
            incarnation,
            ready_frames: 0,
            tracks_ready: true,
            tracks: tracks.clone(),
            mixes: vec![MixRecord {
                key: "0-1".into(),
                tracks: tracks.iter().map(|t| t.track_id).take(2).collect(),
                gains: Vec::new(),
                ready: true,
            }],
            kind: EventKind::Failed,
        }),
    );
    write("music-state", encode(&MusicState::Mixing));
    write("track-record", encode(&tracks[0]));
    let mix = MixRecord {
        key: "0-3".into(),
        tracks: vec![tracks[0].track_id, tracks[3].track_id],
        gains: Vec::new(),
        ready: true,
    };
    write("mix-record", encode(&mix));
    write(
        "music-record",
        encode(&MusicRecord {
            music_id: music,
            content_hash: "ab".repeat(32),
            name: "bensound-wildblood".into(),
            band: "Bensound".into(),
            file_name: "wildblood.mp3".into(),
            size: 824_675,
            codec: "mp3".into(),
            sample_rate: 44_100,
            channels: 2,
            duration_s: 34.351,
            tracks: tracks.clone(),
            model: "0123456789abcdef".into(),
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_500,
            state: MusicState::Separating,
            error: None,
            plan: Some(plan),
            separated: vec![true, true, false, false, false],
            parts: 2,
            tracks_ready: false,
            mixes: vec![mix],
            incarnation,
            client: Some("192.0.2.1".into()),
        }),
    );
    write("job-state", encode(&JobState::Running));
    write(
        "job-record",
        encode(&JobRecord {
            job_id: work.job_id,
            music_id: music,
            index: 2,
            offset: 515_970,
            len: 343_980,
            size: 2_751_840,
            state: JobState::Done,
            worker: Some("sep-1".into()),
            attempts: 1,
            time_ms: 812,
            tracks: tracks.iter().map(|t| t.track_id).collect(),
            error: None,
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_900,
            incarnation,
        }),
    );
    write(
        "model-info",
        encode(&ModelInfo {
            name: "dme-hpss-dsp".into(),
            fingerprint: "0123456789abcdef".into(),
            sources: vec![
                "drums".into(),
                "bass".into(),
                "other".into(),
                "vocals".into(),
            ],
            segment: 343_980,
            fixed: false,
            sample_rate: 44_100,
        }),
    );
    eprintln!("seeds written to {}", out.display());
}

//! What the storage tests share.

use dme_protocol::records::{MusicRecord, MusicState, TrackRecord};
use dme_protocol::{Incarnation, MusicId, SegmentPlan};

/// A 10 s song of two stems, cut into its segments and separating, none of them separated yet;
/// its original is `size` bytes.
pub fn song(music: MusicId, size: u64) -> MusicRecord {
    let plan = SegmentPlan::new(10 * 44_100, 44_100, true);
    MusicRecord {
        music_id: music,
        content_hash: "ab".into(),
        name: "song".into(),
        band: String::new(),
        file_name: "song.wav".into(),
        size,
        codec: "pcm_s16le".into(),
        sample_rate: 44_100,
        channels: 2,
        duration_s: 10.0,
        tracks: TrackRecord::for_sources(music, &["drums".into(), "bass".into()]),
        model: "m".into(),
        created_ms: 1,
        updated_ms: 1,
        state: MusicState::Separating,
        error: None,
        plan: Some(plan),
        separated: vec![false; plan.count() as usize],
        parts: 0,
        tracks_ready: false,
        mixes: Vec::new(),
        incarnation: Incarnation::fresh(),
        client: None,
    }
}

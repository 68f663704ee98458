//! Any bytes as a wire message or a stored record: `dme_protocol::decode::<T>` must return for
//! every message and record type, and what decodes must survive a round trip (encode, decode,
//! encode gives the same bytes).

#![no_main]

use dme_protocol::messages::{MixRequest, MusicUploaded, ProgressEvent, SegmentDone, SegmentWork};
use dme_protocol::records::{
    JobRecord, JobState, MixRecord, ModelInfo, MusicRecord, MusicState, TrackRecord,
};
use dme_protocol::{decode, encode};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(value) = decode::<T>(data) else {
        return;
    };
    let bytes = encode(&value);
    let again: T = decode(&bytes).expect("what was encoded decodes");
    assert_eq!(encode(&again), bytes, "round trip changed the encoding");
}

fuzz_target!(init: dme_fuzz::install_panic_hook(), |data: &[u8]| {
    dme_fuzz::run(|| {
        round_trip::<MusicUploaded>(data);
        round_trip::<SegmentWork>(data);
        round_trip::<SegmentDone>(data);
        round_trip::<MixRequest>(data);
        round_trip::<ProgressEvent>(data);
        round_trip::<MusicState>(data);
        round_trip::<TrackRecord>(data);
        round_trip::<MixRecord>(data);
        round_trip::<MusicRecord>(data);
        round_trip::<JobState>(data);
        round_trip::<JobRecord>(data);
        round_trip::<ModelInfo>(data);
    });
});

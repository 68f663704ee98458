//! Decoded messages and records put to use the way the services use them: a segment work item's
//! plan, segment and successor, a record's progress. Decoding checks types, not meaning, so this
//! finds values that decode but break the code that trusts them.

#![no_main]

use dme_protocol::decode;
use dme_protocol::messages::SegmentWork;
use dme_protocol::records::MusicRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: dme_fuzz::install_panic_hook(), |data: &[u8]| {
    dme_fuzz::run(|| {
        if let Ok(work) = decode::<SegmentWork>(data) {
            // The separator: its segment, then the work item it releases.
            if let Some(seg) = work.plan.segment(work.index) {
                assert!(seg.len <= work.plan.segment);
                let _ = seg.crop_start();
            }
            let _ = work.successor();
            let _ = work.msg_id();
            // The mixer and the splitter: the number of segments.
            let _ = work.plan.count();
        }
        if let Ok(record) = decode::<MusicRecord>(data) {
            assert!(record.progress() <= 100);
            let _ = record.segments_done();
            let _ = record.latest_mix();
            if let Some(plan) = record.plan {
                let _ = plan.count();
            }
        }
    });
});

//! The reconciler: a song whose record says work is pending, but for which nothing is queued,
//! is driven again. Redelivery covers every message that is in the queue; what it cannot cover
//! is a step whose message never made it there, or whose follow-up was lost: a publish that
//! timed out while the server went down, a state change written before the server crashed and
//! the message that should have followed it not. Every pass reads each song in work that has
//! not changed for [`MixerConfig::reconcile_after`]; if the work stream holds no message of the
//! song (none waiting, none in a worker's hands), the step the record says comes next is
//! published again. Every handler is idempotent, so a step published twice costs at most a
//! repeated check; a song that is merely slow always has a message in the queue and is left
//! alone. So "stalled" is a state the system repairs, not only one it reports.
//!
//! [`MixerConfig::reconcile_after`]: crate::MixerConfig::reconcile_after

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dme_protocol::messages::{
    segment_window, MixRequest, MusicUploaded, SegmentDone, SegmentWork, DEFAULT_SEGMENT_WINDOW,
};
use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{now_ms, subjects, Incarnation, JobId, MusicId};
use dme_storage::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// The reconciler of one mixer. Several mixers each running one is harmless: a step published
/// twice is handled once.
pub(crate) struct Reconciler {
    pub(crate) store: Store,
    /// How long a song in work must go without a change before it is looked at.
    pub(crate) after: Duration,
}

/// The step a song's record says comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Cutting the uploaded song (no plan yet).
    Cut,
    /// Separating these segments (the lowest not yet separated, at most a window of them, the
    /// window adapted to the model's pool like the splitter's and the separators').
    Segments(Vec<u32>),
    /// Assembling the stems (every segment is separated, the tracks are not there).
    Assembly { last: u32 },
    /// Mixing the selection with this key.
    Mix(String),
    /// Nothing: every step is done, only the state was not moved on to `done`.
    Finish,
}

impl Next {
    /// What comes next for `record`, a song in work whose segments are released `window` at a
    /// time.
    fn of(record: &MusicRecord, window: u32) -> Next {
        let Some(plan) = record.plan else {
            return Next::Cut;
        };
        let waiting: Vec<u32> = (0..plan.count())
            .filter(|k| record.separated.get(*k as usize) != Some(&true))
            .take(window.max(1) as usize)
            .collect();
        if !waiting.is_empty() {
            return Next::Segments(waiting);
        }
        if !record.tracks_ready {
            return Next::Assembly {
                last: plan.count().saturating_sub(1),
            };
        }
        match record.mixes.iter().rev().find(|m| !m.ready) {
            Some(mix) => Next::Mix(mix.key.clone()),
            None => Next::Finish,
        }
    }
}

impl Reconciler {
    /// Passes over the songs until `shutdown`, every quarter of [`Reconciler::after`] (between
    /// one and thirty seconds).
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let every = (self.after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut driven: HashMap<(MusicId, Incarnation), Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            // Forget what was driven long ago, so the map stays as small as the songs in work.
            driven.retain(|_, at| at.elapsed() < self.after * 4);
            if let Err(e) = self.pass(&mut driven).await {
                tracing::debug!(error = %e, "reconciliation pass failed; next pass retries");
            }
        }
    }

    /// One look at every song in work. A song driven again is not driven again before
    /// [`Reconciler::after`] has passed once more, whatever its record says.
    async fn pass(
        &self,
        driven: &mut HashMap<(MusicId, Incarnation), Instant>,
    ) -> Result<(), StoreError> {
        let after_ms = u64::try_from(self.after.as_millis()).unwrap_or(u64::MAX);
        for record in self.store.list_music().await? {
            let in_work = matches!(
                record.state,
                MusicState::Queued | MusicState::Separating | MusicState::Mixing
            );
            if !in_work || now_ms().saturating_sub(record.updated_ms) < after_ms {
                continue;
            }
            let key = (record.music_id, record.incarnation);
            if driven.get(&key).is_some_and(|at| at.elapsed() < self.after) {
                continue;
            }
            // One song that cannot be looked at or driven (its record refused, NATS busy) does
            // not hold up the others: it is tried again next pass.
            let queued = match self.store.queued_work(record.music_id).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(music = %record.music_id, error = %e, "queued work not counted");
                    continue;
                }
            };
            if queued > 0 {
                continue;
            }
            if let Err(e) = self.drive(&record).await {
                tracing::warn!(music = %record.music_id, error = %e, "song not driven again");
                continue;
            }
            driven.insert(key, Instant::now());
        }
        Ok(())
    }

    /// Publishes the step that comes next for `record` (without message ids: the earlier
    /// message of the same step may still be in JetStream's duplicate window, and this one must
    /// not be dropped as its duplicate).
    async fn drive(&self, record: &MusicRecord) -> Result<(), StoreError> {
        let (music, incarnation) = (record.music_id, record.incarnation);
        let window = match self.store.pool_load(&record.model).await {
            Ok(load) => segment_window(DEFAULT_SEGMENT_WINDOW, load.workers, load.songs.max(1)),
            Err(_) => DEFAULT_SEGMENT_WINDOW,
        };
        let next = Next::of(record, window);
        tracing::warn!(
            %music, state = record.state.as_str(), ?next,
            "song in work with nothing queued: driving its next step again"
        );
        match next {
            Next::Cut => {
                let uploaded = MusicUploaded {
                    music_id: music,
                    incarnation,
                };
                self.store
                    .publish(subjects::WORK_UPLOADED, &uploaded, None)
                    .await
            }
            Next::Segments(indices) => {
                let Some(plan) = record.plan else {
                    return Ok(());
                };
                for index in indices {
                    let work = SegmentWork {
                        music_id: music,
                        job_id: JobId::of(music, index),
                        index,
                        plan,
                        window,
                        model: record.model.clone(),
                        incarnation,
                    };
                    self.store
                        .publish(&subjects::work_segment(&work.model), &work, None)
                        .await?;
                }
                Ok(())
            }
            Next::Assembly { last } => {
                let done = SegmentDone {
                    music_id: music,
                    index: last,
                    job_id: JobId::of(music, last),
                    incarnation,
                };
                self.store
                    .publish(subjects::WORK_SEPARATED, &done, None)
                    .await
            }
            Next::Mix(key) => {
                let Some(mix) = record.mixes.iter().find(|m| m.key == key) else {
                    return Ok(());
                };
                let request = MixRequest {
                    music_id: music,
                    tracks: mix.tracks.clone(),
                    incarnation,
                    gains: mix.gains.clone(),
                };
                self.store.publish(subjects::WORK_MIX, &request, None).await
            }
            Next::Finish => {
                self.store
                    .update_music(music, |m| {
                        let finished = m.incarnation == incarnation
                            && m.state == MusicState::Mixing
                            && m.tracks_ready
                            && m.mixes.iter().all(|x| x.ready);
                        if finished {
                            m.state = MusicState::Done;
                            m.updated_ms = now_ms();
                        }
                        finished
                    })
                    .await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dme_protocol::records::MixRecord;
    use dme_protocol::{SegmentPlan, TrackId};

    fn record() -> MusicRecord {
        MusicRecord {
            music_id: MusicId(7),
            content_hash: String::new(),
            name: "n".into(),
            band: String::new(),
            file_name: String::new(),
            size: 1,
            codec: "pcm".into(),
            sample_rate: 44_100,
            channels: 2,
            duration_s: 1.0,
            tracks: Vec::new(),
            model: "m".into(),
            created_ms: 0,
            updated_ms: 0,
            state: MusicState::Queued,
            error: None,
            plan: None,
            separated: Vec::new(),
            parts: 0,
            tracks_ready: false,
            mixes: Vec::new(),
            incarnation: Incarnation(1),
            client: None,
        }
    }

    #[test]
    fn the_record_names_the_next_step() {
        let mut r = record();
        assert_eq!(Next::of(&r, DEFAULT_SEGMENT_WINDOW), Next::Cut);
        let plan = SegmentPlan::new(100 * 40, 40, true);
        let count = plan.count() as usize;
        r.plan = Some(plan);
        r.separated = vec![false; count];
        r.separated[0] = true;
        r.separated[2] = true;
        let Next::Segments(waiting) = Next::of(&r, DEFAULT_SEGMENT_WINDOW) else {
            panic!("segments wait");
        };
        assert_eq!(waiting.len(), DEFAULT_SEGMENT_WINDOW as usize);
        assert_eq!(&waiting[..3], &[1, 3, 4]);
        r.separated = vec![true; count];
        assert_eq!(
            Next::of(&r, DEFAULT_SEGMENT_WINDOW),
            Next::Assembly {
                last: count as u32 - 1
            }
        );
        r.tracks_ready = true;
        assert_eq!(Next::of(&r, DEFAULT_SEGMENT_WINDOW), Next::Finish);
        r.mixes = vec![
            MixRecord {
                key: "0".into(),
                tracks: vec![TrackId(1)],
                gains: Vec::new(),
                ready: false,
            },
            MixRecord {
                key: "0-1".into(),
                tracks: vec![TrackId(1), TrackId(2)],
                gains: Vec::new(),
                ready: false,
            },
        ];
        assert_eq!(
            Next::of(&r, DEFAULT_SEGMENT_WINDOW),
            Next::Mix("0-1".into())
        );
        r.mixes[1].ready = true;
        assert_eq!(Next::of(&r, DEFAULT_SEGMENT_WINDOW), Next::Mix("0".into()));
    }
}

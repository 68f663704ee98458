//! Assembly: counts separated segments on the song's record and, once every one is in, blends
//! them into one float WAV track per stem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dme_protocol::messages::{ProgressEvent, SegmentDone};
use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{now_ms, objects, Incarnation, MusicId, Segment, SegmentPlan};
use dme_segment::Blender;
use dme_storage::work::{Delivery, Handler};
use dme_storage::{Spool, Store};

use crate::mixdown::Mixdown;
use crate::{float_wav_spec, MixError};

/// One spooled float WAV writer per stem.
type TrackWriters = Vec<hound::WavWriter<std::io::BufWriter<std::fs::File>>>;

/// The handler of [`dme_protocol::subjects::WORK_SEPARATED`].
pub(crate) struct Assembler {
    pub(crate) store: Store,
    pub(crate) spool: Spool,
    /// Mixes the selections that waited for the tracks.
    pub(crate) mixdown: Mixdown,
}

impl Handler for Assembler {
    type Message = SegmentDone;
    type Error = MixError;
    /// Transient failures are NATS hiccups: soon is fine.
    const RETRY_DELAY: Duration = Duration::from_secs(1);

    async fn handle(&self, done: &SegmentDone, delivery: Delivery) -> Result<(), MixError> {
        self.segment_done(done, delivery.attempt > 1).await
    }

    async fn give_up(&self, done: &SegmentDone, _: Delivery, reason: &str) {
        let reason = format!("assembling the stems failed: {reason}");
        let (music, incarnation) = (done.music_id, done.incarnation);
        if let Err(e) = dme_storage::song::fail(&self.store, music, incarnation, &reason).await {
            tracing::warn!(error = %e, "could not record the failure");
        }
    }
}

impl Assembler {
    /// Marks the segment separated (once) and assembles the song when it was the last one. A
    /// `redelivered` event of a song whose stems are assembled mixes its pending selections: the
    /// delivery before may have assembled them and failed (NATS going down) before the mixes.
    async fn segment_done(&self, done: &SegmentDone, redelivered: bool) -> Result<(), MixError> {
        let index = done.index as usize;
        let mut changed = false;
        let record = self
            .store
            .update_music(done.music_id, |m| {
                changed = false;
                if m.incarnation != done.incarnation {
                    return false;
                }
                match m.separated.get_mut(index) {
                    Some(flag) if !*flag => {
                        *flag = true;
                        m.updated_ms = now_ms();
                        changed = true;
                        true
                    }
                    _ => false,
                }
            })
            .await?;
        let stale = match &record {
            None => true,
            Some(r) if r.incarnation != done.incarnation => {
                tracing::info!(music = %done.music_id, "separated segment from before a reset; dropped");
                true
            }
            Some(_) => false,
        };
        let Some(record) = record.filter(|_| !stale) else {
            // Deleted, or reset and uploaded again, while the segment was in flight: drop its
            // leftovers. Their names carry the old incarnation; the new song's are not touched.
            self.delete_segment(done.music_id, done.incarnation, done.index)
                .await;
            return Ok(());
        };
        if changed {
            self.store
                .publish_progress(&ProgressEvent::of(&record))
                .await;
        }
        // Separated on the record: a redelivered work item now finds it done and never reads
        // its input again, so the input goes at once (a segment's largest object after its
        // stems). Only the event that marked it does this: a copy of the event changes nothing,
        // and an input whose deletion failed goes with the other segments after assembly.
        if changed {
            let input = objects::segment_input(done.music_id, done.incarnation, done.index);
            let _ = self.store.delete_object(&input).await;
        }
        let all_in = !record.separated.is_empty() && record.separated.iter().all(|d| *d);
        if all_in && !record.tracks_ready && record.state != MusicState::Failed {
            if let Err(e) = self.assemble(record).await {
                // A copy of the last segment's event, handled at the same time, may have
                // assembled the song and deleted its segments under this assembly's feet:
                // then there is nothing left to do, and nothing failed.
                if self.assembled_elsewhere(done).await {
                    tracing::info!(music = %done.music_id, "assembled by a copy of this event meanwhile");
                    return Ok(());
                }
                return Err(e);
            }
        } else if redelivered
            && record.tracks_ready
            && record.state != MusicState::Failed
            && record.mixes.iter().any(|m| !m.ready)
        {
            self.mixdown.make_pending(&record).await?;
        }
        Ok(())
    }

    /// Whether the song's tracks of `done`'s life are ready now (another delivery assembled them).
    async fn assembled_elsewhere(&self, done: &SegmentDone) -> bool {
        matches!(
            self.store.music(done.music_id).await,
            Ok(Some(r)) if r.incarnation == done.incarnation && r.tracks_ready
        )
    }

    /// Blends every segment into one track per stem, stores the tracks, marks them ready,
    /// removes the segments and mixes the selections that waited for the tracks.
    async fn assemble(&self, record: MusicRecord) -> Result<(), MixError> {
        let (music, incarnation) = (record.music_id, record.incarnation);
        let plan = record.plan.ok_or(MixError::NoPlan)?;
        let spool = self.spool.tempdir().map_err(MixError::Spool)?;
        let paths = self.blend_to_files(&record, plan, spool.path()).await?;
        let names: Vec<String> = record
            .tracks
            .iter()
            .map(|t| objects::track(music, incarnation, &t.name))
            .collect();
        for (name, path) in names.iter().zip(&paths) {
            self.store.put_compressed_file(name, path).await?;
        }
        let updated = self.mark_tracks_ready(&record).await?;
        let current = updated.filter(|r| r.incarnation == incarnation);
        let Some(record) = current else {
            // Deleted, or reset and uploaded again, meanwhile: what this life of the song left
            // goes (only it: the names carry its incarnation).
            for name in &names {
                let _ = self.store.delete_object(name).await;
            }
            self.delete_segments(music, incarnation, plan).await;
            return Ok(());
        };
        tracing::info!(%music, stems = paths.len(), frames = plan.frames, "stems assembled");
        self.delete_segments(music, incarnation, plan).await;
        self.store
            .publish_progress(&ProgressEvent::of(&record))
            .await;
        self.mixdown.make_pending(&record).await?;
        Ok(())
    }

    /// Blends the song's segments in offset order into one float WAV per stem in `dir`. The
    /// blending and writing run on a blocking thread, a segment at a time, while the next
    /// segment's stems are fetched: an hour-long song is minutes of arithmetic and gigabytes
    /// of writes, and the executor must stay free for the in-progress acks meanwhile.
    async fn blend_to_files(
        &self,
        record: &MusicRecord,
        plan: SegmentPlan,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, MixError> {
        let lanes = 2 * record.tracks.len();
        let paths: Vec<PathBuf> = (0..record.tracks.len())
            .map(|s| dir.join(format!("{s}.wav")))
            .collect();
        let create = paths.clone();
        let mut tracks = blocking(move || TrackBlend::create(&create, plan, lanes)).await?;
        let mut segments = plan.segments();
        let mut next = match segments.next() {
            Some(seg) => Some(self.load_stems(record, seg).await?),
            None => None,
        };
        while let Some(stems) = next.take() {
            let blending = blocking(move || {
                tracks.push(&stems)?;
                Ok(tracks)
            });
            let fetching = async {
                match segments.next() {
                    Some(seg) => self.load_stems(record, seg).await.map(Some),
                    None => Ok(None),
                }
            };
            let (blended, fetched) = tokio::join!(blending, fetching);
            tracks = blended?;
            next = fetched?;
        }
        blocking(move || tracks.finish()).await?;
        Ok(paths)
    }

    /// Segment `seg`'s stems object, as stored (unpacked and checked by [`TrackBlend::push`]).
    async fn load_stems(&self, record: &MusicRecord, seg: Segment) -> Result<Stems, MixError> {
        let name = objects::segment_stems(record.music_id, record.incarnation, seg.index);
        match self.store.get_object(&name).await? {
            Some(bytes) => Ok(Stems { seg, name, bytes }),
            None => Err(MixError::StemsMissing(name)),
        }
    }

    /// Marks the song's tracks ready: done, or mixing while selections wait for a mix. The
    /// record as it is now is returned (of another incarnation when the song was reset and
    /// uploaded again meanwhile; then nothing is changed).
    async fn mark_tracks_ready(
        &self,
        assembled: &MusicRecord,
    ) -> Result<Option<MusicRecord>, MixError> {
        let updated = self
            .store
            .update_music(assembled.music_id, |m| {
                if m.tracks_ready || m.incarnation != assembled.incarnation {
                    return false;
                }
                m.tracks_ready = true;
                if m.state != MusicState::Failed {
                    m.state = if m.mixes.iter().all(|x| x.ready) {
                        MusicState::Done
                    } else {
                        MusicState::Mixing
                    };
                }
                m.updated_ms = now_ms();
                true
            })
            .await?;
        Ok(updated)
    }

    /// Deletes the segment inputs and stems of one life of a song: the tracks hold everything
    /// now (or the song is gone).
    async fn delete_segments(&self, music: MusicId, incarnation: Incarnation, plan: SegmentPlan) {
        for seg in plan.segments() {
            self.delete_segment(music, incarnation, seg.index).await;
        }
    }

    /// Deletes segment `index`'s input and stems of one life of a song.
    async fn delete_segment(&self, music: MusicId, incarnation: Incarnation, index: u32) {
        for name in [
            objects::segment_input(music, incarnation, index),
            objects::segment_stems(music, incarnation, index),
        ] {
            let _ = self.store.delete_object(&name).await;
        }
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MixError> + Send + 'static,
) -> Result<T, MixError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(MixError::Task)?
}

/// A song's tracks being blended: the blender and one spooled float WAV writer per stem. Its
/// methods block (arithmetic and file writes): call them through [`blocking`].
struct TrackBlend {
    blender: Blender,
    writers: TrackWriters,
    lanes: usize,
}

impl TrackBlend {
    /// Creates the track files `paths` (one per stem, `lanes / 2` of them).
    fn create(paths: &[PathBuf], plan: SegmentPlan, lanes: usize) -> Result<Self, MixError> {
        let writers = paths
            .iter()
            .map(|p| hound::WavWriter::create(p, float_wav_spec()))
            .collect::<Result<TrackWriters, _>>()
            .map_err(MixError::Wav)?;
        Ok(TrackBlend {
            blender: Blender::new(plan, lanes),
            writers,
            lanes,
        })
    }

    /// Blends the next segment's stems and appends what is finished to the tracks.
    fn push(&mut self, stems: &Stems) -> Result<(), MixError> {
        let lanes = stems.unpack(self.lanes)?;
        let views: Vec<&[f32]> = lanes.iter().map(|l| l.as_slice()).collect();
        let (finished, _) = self.blender.push(stems.seg.index, &views);
        write_stereo(&mut self.writers, &finished).map_err(MixError::Wav)
    }

    /// Completes the track files.
    fn finish(self) -> Result<(), MixError> {
        for w in self.writers {
            w.finalize().map_err(MixError::Wav)?;
        }
        Ok(())
    }
}

/// A segment's stems object, as fetched.
struct Stems {
    seg: Segment,
    name: String,
    bytes: Vec<u8>,
}

impl Stems {
    /// The stems as `lanes` planar lanes of the segment's length.
    fn unpack(&self, lanes: usize) -> Result<Vec<Vec<f32>>, MixError> {
        let stems = objects::unpack_planar(&self.bytes, lanes).map_err(|source| {
            MixError::StemsCorrupt {
                name: self.name.clone(),
                source,
            }
        })?;
        let got = stems.first().map_or(0, Vec::len);
        if got != self.seg.len as usize {
            return Err(MixError::StemsLength {
                name: self.name.clone(),
                got,
                expected: self.seg.len,
            });
        }
        Ok(stems)
    }
}

/// Appends finished blended samples to the stem tracks: lanes `2s` and `2s + 1` are stem `s`'s
/// left and right channels.
fn write_stereo(writers: &mut TrackWriters, lanes: &[Vec<f32>]) -> Result<(), hound::Error> {
    for (w, stereo) in writers.iter_mut().zip(lanes.chunks_exact(2)) {
        if let [left, right] = stereo {
            for (l, r) in left.iter().zip(right) {
                w.write_sample(*l)?;
                w.write_sample(*r)?;
            }
        }
    }
    Ok(())
}

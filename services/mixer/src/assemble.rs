//! Assembly: counts separated segments on the song's record and, once every one is in, blends
//! them into one float WAV track per stem.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dme_protocol::messages::{ProgressEvent, SegmentDone};
use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{now_ms, objects, Incarnation, MusicId, Segment, SegmentPlan};
use dme_segment::Blender;
use dme_storage::work::{Delivery, Handler};
use dme_storage::{Spool, SpoolDir, Store};
use tokio_util::task::AbortOnDropHandle;

use crate::mixdown::Mixdown;
use crate::{wav_header, MixError};

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
            let assembled = match self.assemble(record).await {
                Ok(assembled) => assembled,
                // A copy of the last segment's event, handled at the same time, may have
                // assembled the song and deleted its segments under this assembly's feet:
                // then there is nothing left to do, and nothing failed.
                Err(_) if self.assembled_elsewhere(done).await => {
                    tracing::info!(music = %done.music_id, "assembled by a copy of this event meanwhile");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            // The tracks are ready: what fails from here on (the mixes) is retried by the
            // redelivered event, which finds them ready and mixes what is pending.
            if let Some(assembled) = assembled {
                self.hand_over(assembled).await?;
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

    /// Blends every segment into one track per stem, stores the tracks and marks them ready;
    /// `None` when the song was deleted or reset meanwhile (what this life of it left is
    /// deleted then).
    async fn assemble(&self, record: MusicRecord) -> Result<Option<Assembled>, MixError> {
        let (music, incarnation) = (record.music_id, record.incarnation);
        let plan = record.plan.ok_or(MixError::NoPlan)?;
        let started = Instant::now();
        let spool = self.spool.tempdir().map_err(MixError::Spool)?;
        let paths = self.blend_to_files(&record, plan, spool.path()).await?;
        let blended = started.elapsed();
        let names: Vec<String> = record
            .tracks
            .iter()
            .map(|t| objects::track(music, incarnation, &t.name))
            .collect();
        self.store_tracks(&names, &paths).await?;
        let stored = started.elapsed() - blended;
        let updated = self.mark_tracks_ready(&record).await?;
        let current = updated.filter(|r| r.incarnation == incarnation);
        let Some(record) = current else {
            // Deleted, or reset and uploaded again, meanwhile: what this life of the song left
            // goes (only it: the names carry its incarnation).
            for name in &names {
                let _ = self.store.delete_object(name).await;
            }
            self.delete_segments(music, incarnation, plan).await;
            return Ok(None);
        };
        tracing::info!(
            %music,
            stems = paths.len(),
            frames = plan.frames,
            blend_ms = blended.as_millis() as u64,
            store_ms = stored.as_millis() as u64,
            "stems assembled"
        );
        Ok(Some(Assembled {
            record,
            plan,
            names,
            paths,
            spool,
        }))
    }

    /// Hands the assembled track files to the [`crate::track_cache::TrackCache`], removes the
    /// segments and mixes the selections that waited for the tracks.
    async fn hand_over(&self, assembled: Assembled) -> Result<(), MixError> {
        let Assembled {
            record,
            plan,
            names,
            paths,
            spool,
        } = assembled;
        let (music, incarnation) = (record.music_id, record.incarnation);
        // The files are the tracks' bytes: the first mix, right after, reads them instead of
        // downloading and decompressing what was just stored.
        let cache = self.mixdown.tracks.clone();
        let cached = blocking(move || {
            for (name, path) in names.iter().zip(&paths) {
                cache.insert(name, path).map_err(MixError::Spool)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = cached {
            tracing::warn!(%music, error = %e, "assembled tracks not kept for re-mixes");
        }
        drop(spool);
        self.store
            .publish_progress(&ProgressEvent::of(&record))
            .await;
        // Nothing reads the segments any more; their deletion (a round trip or two each)
        // need not hold the mixes back.
        let (_, mixed) = tokio::join!(
            self.delete_segments(music, incarnation, plan),
            self.mixdown.make_pending(&record)
        );
        mixed
    }

    /// Stores the track files `paths` as objects `names`, compressed, side by side: a put
    /// waits for the server's acknowledgement of each chunk before it sends the next, so four
    /// at once overlap those round trips, and their compression runs on every core.
    async fn store_tracks(&self, names: &[String], paths: &[PathBuf]) -> Result<(), MixError> {
        let puts = names.iter().zip(paths).map(|(name, path)| {
            let (store, name, path) = (self.store.clone(), name.clone(), path.clone());
            tokio::spawn(async move { store.put_compressed_file(&name, &path).await })
        });
        // Every put ends before this returns: a retry must not race a put still running.
        for put in futures::future::join_all(puts).await {
            put.map_err(MixError::Task)??;
        }
        Ok(())
    }

    /// Blends the song's segments in offset order into one float WAV per stem in `dir`. The
    /// blending and writing run on a blocking thread, a segment at a time, while the next
    /// [`STEMS_AHEAD`] segments' stems are fetched: an hour-long song is minutes of arithmetic
    /// and gigabytes of writes, and the executor must stay free for the in-progress acks
    /// meanwhile.
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
        let (music, incarnation) = (record.music_id, record.incarnation);
        let mut loads = plan.segments().map(|seg| {
            let store = self.store.clone();
            // Aborted when dropped: a failed assembly stops fetching.
            AbortOnDropHandle::new(tokio::spawn(async move {
                load_stems(&store, music, incarnation, seg).await
            }))
        });
        let mut ahead: VecDeque<_> = loads.by_ref().take(STEMS_AHEAD).collect();
        while let Some(load) = ahead.pop_front() {
            ahead.extend(loads.next());
            let stems = load.await.map_err(MixError::Task)??;
            tracks = blocking(move || {
                tracks.push(&stems)?;
                Ok(tracks)
            })
            .await?;
        }
        blocking(move || tracks.finish()).await?;
        Ok(paths)
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

/// A song's tracks, stored and marked ready, and their files still in the spool.
struct Assembled {
    /// The song's record once its tracks were marked ready.
    record: MusicRecord,
    plan: SegmentPlan,
    /// The tracks' object names and files, stem by stem.
    names: Vec<String>,
    paths: Vec<PathBuf>,
    /// The folder of the files: removed when dropped.
    spool: SpoolDir,
}

/// Segments whose stems are fetched ahead of the blend: each fetch is a round trip per chunk
/// (about 20 for the default model's segments), so several at once keep the blend fed; at
/// most this many segments' stems (11 MB each for the default model) wait in memory.
const STEMS_AHEAD: usize = 4;

/// Segment `seg`'s stems object, as stored (unpacked and checked by [`TrackBlend::push`]).
async fn load_stems(
    store: &Store,
    music: MusicId,
    incarnation: Incarnation,
    seg: Segment,
) -> Result<Stems, MixError> {
    let name = objects::segment_stems(music, incarnation, seg.index);
    match store.get_object(&name).await? {
        Some(bytes) => Ok(Stems { seg, name, bytes }),
        None => Err(MixError::StemsMissing(name)),
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

/// A song's tracks being blended: the blender and one spooled float WAV file per stem. Its
/// methods block (arithmetic and file writes): call them through [`blocking`].
struct TrackBlend {
    blender: Blender,
    files: Vec<BufWriter<File>>,
    lanes: usize,
    /// Frames the tracks hold once complete (their headers say so from the start).
    frames: u64,
    /// Frames written so far.
    written: u64,
    /// One stem's interleaved bytes, reused from segment to segment.
    interleaved: Vec<u8>,
}

impl TrackBlend {
    /// Creates the track files `paths` (one per stem, `lanes / 2` of them), each with the
    /// header [`hound::WavWriter`] would end with: the song's length is known from its plan.
    fn create(paths: &[PathBuf], plan: SegmentPlan, lanes: usize) -> Result<Self, MixError> {
        let header = wav_header(2 * plan.frames).map_err(MixError::Wav)?;
        let files = paths
            .iter()
            .map(|p| {
                let mut file = BufWriter::with_capacity(TRACK_WRITE_BYTES, File::create(p)?);
                file.write_all(&header)?;
                Ok(file)
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(MixError::Spool)?;
        Ok(TrackBlend {
            blender: Blender::new(plan, lanes),
            files,
            lanes,
            frames: plan.frames,
            written: 0,
            interleaved: Vec::new(),
        })
    }

    /// Blends the next segment's stems and appends what is finished to the tracks: lanes `2s`
    /// and `2s + 1` are stem `s`'s left and right channels, interleaved as little-endian f32.
    fn push(&mut self, stems: &Stems) -> Result<(), MixError> {
        let samples = stems.unpack(self.lanes)?;
        let views: Vec<&[f32]> = match stems.seg.len as usize {
            0 => vec![&[]; self.lanes],
            n => samples.chunks_exact(n).collect(),
        };
        let (finished, _) = self.blender.push(stems.seg.index, &views);
        let frames = finished.first().map_or(0, Vec::len);
        for (file, stereo) in self.files.iter_mut().zip(finished.chunks_exact(2)) {
            let [left, right] = stereo else { continue };
            self.interleaved.resize(8 * frames, 0);
            for ((bytes, l), r) in self.interleaved.chunks_exact_mut(8).zip(left).zip(right) {
                bytes[..4].copy_from_slice(&l.to_le_bytes());
                bytes[4..].copy_from_slice(&r.to_le_bytes());
            }
            file.write_all(&self.interleaved).map_err(MixError::Spool)?;
        }
        self.written += frames as u64;
        Ok(())
    }

    /// Completes the track files; they must hold the frames their headers announce.
    fn finish(self) -> Result<(), MixError> {
        if self.written != self.frames {
            return Err(MixError::Wav(hound::Error::FormatError(
                "the blended tracks are not the song's length",
            )));
        }
        for mut file in self.files {
            file.flush().map_err(MixError::Spool)?;
        }
        Ok(())
    }
}

/// Write buffer of each track file: a few segments' worth of writes at once.
const TRACK_WRITE_BYTES: usize = 1024 * 1024;

/// A segment's stems object, as fetched.
struct Stems {
    seg: Segment,
    name: String,
    bytes: Vec<u8>,
}

impl Stems {
    /// The stems as `lanes` planar lanes of the segment's length, one after another.
    fn unpack(&self, lanes: usize) -> Result<Vec<f32>, MixError> {
        let samples =
            objects::unpack_samples(&self.bytes).map_err(|source| MixError::StemsCorrupt {
                name: self.name.clone(),
                source,
            })?;
        if samples.len() != lanes * self.seg.len as usize {
            return Err(MixError::StemsLength {
                name: self.name.clone(),
                got: samples.len() / lanes.max(1),
                expected: self.seg.len,
            });
        }
        Ok(samples)
    }
}

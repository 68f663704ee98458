//! Assembly: counts separated segments on the song's record; as soon as every segment up to
//! one is separated, blends each newly finished stretch of the song into a part per stem
//! ([`objects::part`]), so the start of the stems can be heard while the rest separates; once
//! every part is in, joins them into one float WAV track per stem.

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
use crate::turns::Turns;
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
        // Separated on the record: a redelivered work item now finds it done and never reads
        // its input again, so the input goes at once (a segment's largest object after its
        // stems). Only the event that marked it does this: a copy of the event changes nothing,
        // and an input whose deletion failed goes with the other segments after assembly.
        if changed {
            let input = objects::segment_input(done.music_id, done.incarnation, done.index);
            let _ = self.store.delete_object(&input).await;
        }
        let mut record = record;
        let mut advanced = false;
        if !record.tracks_ready && record.state != MusicState::Failed {
            let made = match self.make_parts(record.clone()).await {
                Ok(made) => made,
                Err(e) => {
                    // The segment is counted: say so now, the parts come with the redelivery.
                    if changed {
                        self.store
                            .publish_progress(&ProgressEvent::of(&record))
                            .await;
                    }
                    return Err(e);
                }
            };
            match made {
                Some((now, more)) => (record, advanced) = (now, more),
                // Deleted, or reset and uploaded again, meanwhile: this segment's leftovers
                // go as a stale event's do (the parts made meanwhile went already).
                None => {
                    self.delete_segment(done.music_id, done.incarnation, done.index)
                        .await;
                    return Ok(());
                }
            }
        }
        // One event for the segment and the parts it finished (published by `make_parts`, in
        // the song's turn, when parts were made).
        if changed && !advanced {
            self.store
                .publish_progress(&ProgressEvent::of(&record))
                .await;
        }
        let all_in = record.plan.is_some_and(|plan| record.parts >= plan.count());
        if all_in && !record.tracks_ready && record.state != MusicState::Failed {
            let assembled = match self.assemble(record).await {
                Ok(assembled) => assembled,
                // A copy of the last segment's event, handled at the same time, may have
                // assembled the song and deleted its parts under this assembly's feet:
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

    /// Makes the parts of every segment that is separated along with all the segments before
    /// it and has no part yet, in offset order, one song at a time in this process; records
    /// them on the song's record, and deletes the stems no part needs any more (a segment's
    /// stems make its own part and the next one's). Returns the record as it is now and
    /// whether parts were added, or `None` when the song was deleted or reset meanwhile.
    async fn make_parts(&self, seen: MusicRecord) -> Result<Option<(MusicRecord, bool)>, MixError> {
        let (music, incarnation) = (seen.music_id, seen.incarnation);
        let plan = seen.plan.ok_or(MixError::NoPlan)?;
        let prefix = |r: &MusicRecord| r.separated.iter().take_while(|d| **d).count() as u32;
        if seen.parts >= prefix(&seen) {
            return Ok(Some((seen, false)));
        }
        let _turn = ASSEMBLING.wait(music).await;
        // Another handler of the song may have made parts while this one waited.
        let record = match self.store.music(music).await? {
            Some(r) if r.incarnation == incarnation => r,
            _ => return Ok(None),
        };
        let (from, to) = (record.parts, prefix(&record));
        if from >= to || record.tracks_ready || record.state == MusicState::Failed {
            return Ok(Some((record, false)));
        }
        let started = Instant::now();
        let stems = record_stems(&record);
        let mut previous = None;
        for index in from..to {
            // Another mixer may be making this song's parts too: what it counted is skipped.
            if index > from {
                match self.parts_made(music, incarnation).await {
                    Some(made) if made > index => {
                        previous = None;
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        self.delete_parts(music, incarnation, &stems, from..index)
                            .await;
                        return Ok(None);
                    }
                }
            }
            match self
                .make_part(&record, plan, &stems, index, previous.take())
                .await
            {
                Ok(stems) => previous = Some(stems),
                Err(e) => match (e, self.parts_made(music, incarnation).await) {
                    // Another mixer made this part and deleted the stems before it meanwhile.
                    (MixError::StemsMissing(_), Some(made)) if made > index => previous = None,
                    // Deleted, or reset and uploaded again, meanwhile.
                    (_, None) => {
                        self.delete_parts(music, incarnation, &stems, from..index + 1)
                            .await;
                        return Ok(None);
                    }
                    (e, Some(_)) => return Err(e),
                },
            }
        }
        let updated = self
            .store
            .update_music(music, |m| {
                if m.incarnation != incarnation || m.parts >= to {
                    return false;
                }
                m.parts = to;
                m.updated_ms = now_ms();
                true
            })
            .await?;
        let Some(record) = updated.filter(|r| r.incarnation == incarnation) else {
            // Deleted, or reset and uploaded again, while the parts were made: a deletion that
            // listed the song's objects before they were stored did not see them.
            self.delete_parts(music, incarnation, &stems, from..to)
                .await;
            return Ok(None);
        };
        tracing::debug!(%music, from, to, ms = started.elapsed().as_millis() as u64, "parts made");
        // Still in the song's turn: the handler that makes the last parts and assembles the
        // tracks waits for it, so this event never lands after the tracks' own.
        self.store
            .publish_progress(&ProgressEvent::of(&record))
            .await;
        // Stems `k` are read again only by part `k + 1`: every segment's stems before the last
        // part made go, and the last one's too once it ends the song.
        let needed_from = if to >= plan.count() { to } else { to - 1 };
        for index in from.saturating_sub(1)..needed_from {
            let name = objects::segment_stems(music, incarnation, index);
            let _ = self.store.delete_object(&name).await;
        }
        Ok(Some((record, true)))
    }

    /// Parts the song's record counts now; `None` when the song is gone or lives another life
    /// (a record that cannot be read counts as there, with no parts).
    async fn parts_made(&self, music: MusicId, incarnation: Incarnation) -> Option<u32> {
        match self.store.music(music).await {
            Ok(Some(r)) if r.incarnation == incarnation => Some(r.parts),
            Ok(_) => None,
            Err(_) => Some(0),
        }
    }

    /// Deletes the parts of segments `indices` of one life of a song, of every stem in `stems`.
    async fn delete_parts(
        &self,
        music: MusicId,
        incarnation: Incarnation,
        stems: &[String],
        indices: std::ops::Range<u32>,
    ) {
        delete_parts(&self.store, music, incarnation, stems, indices).await;
    }

    /// Blends segment `index` with the one before (`previous`, when the caller holds its
    /// samples from the part before, else fetched) and stores the finished stretch of every
    /// stem as its part. Returns the segment's samples, which the next part needs.
    async fn make_part(
        &self,
        record: &MusicRecord,
        plan: SegmentPlan,
        stems: &[String],
        index: u32,
        previous: Option<Samples>,
    ) -> Result<Samples, MixError> {
        let (music, incarnation) = (record.music_id, record.incarnation);
        let seg = |k: u32| plan.segment(k).ok_or(MixError::NoPlan);
        let lanes = 2 * stems.len();
        let current = load_stems(&self.store, music, incarnation, seg(index)?);
        let previous = async {
            match previous {
                Some(samples) => Ok(Some(samples)),
                None if index == 0 => Ok(None),
                None => {
                    let stems =
                        load_stems(&self.store, music, incarnation, seg(index - 1)?).await?;
                    blocking(move || stems.samples(lanes)).await.map(Some)
                }
            }
        };
        let (current, previous) = tokio::try_join!(current, previous)?;
        let (parts, current) = blocking(move || {
            let now = current.samples(lanes)?;
            let before = match &previous {
                Some(p) => lane_views(&p.samples, p.seg.len, lanes),
                None => Vec::new(),
            };
            let mut blender = Blender::resume(plan, lanes, index, &before);
            let (finished, _) = blender.push(index, &lane_views(&now.samples, now.seg.len, lanes));
            let parts: Vec<Vec<u8>> = finished
                .chunks_exact(2)
                .map(|stereo| objects::pack(&interleave(&stereo[0], &stereo[1])))
                .collect();
            Ok((parts, now))
        })
        .await?;
        let puts = stems.iter().zip(parts).map(|(stem, bytes)| {
            let name = objects::part(music, incarnation, stem, index);
            let store = self.store.clone();
            tokio::spawn(async move { store.put_object(&name, &bytes).await })
        });
        // Every put ends before this returns (one that failed leaves none half-stored beside
        // it): a retry must not race a put still running.
        for put in futures::future::join_all(puts).await {
            put.map_err(MixError::Task)??;
        }
        Ok(current)
    }

    /// Whether the song's tracks of `done`'s life are ready now (another delivery assembled them).
    async fn assembled_elsewhere(&self, done: &SegmentDone) -> bool {
        matches!(
            self.store.music(done.music_id).await,
            Ok(Some(r)) if r.incarnation == done.incarnation && r.tracks_ready
        )
    }

    /// Joins every segment's parts into one track per stem, stores the tracks and marks them ready;
    /// `None` when the song was deleted or reset meanwhile (what this life of it left is
    /// deleted then).
    async fn assemble(&self, record: MusicRecord) -> Result<Option<Assembled>, MixError> {
        let (music, incarnation) = (record.music_id, record.incarnation);
        let plan = record.plan.ok_or(MixError::NoPlan)?;
        let started = Instant::now();
        let spool = self.spool.tempdir().map_err(MixError::Spool)?;
        let paths = self.join_parts(&record, plan, spool.path()).await?;
        let joined = started.elapsed();
        let names: Vec<String> = record
            .tracks
            .iter()
            .map(|t| objects::track(music, incarnation, &t.name))
            .collect();
        self.store_tracks(&names, &paths).await?;
        let stored = started.elapsed() - joined;
        let updated = self.mark_tracks_ready(&record).await?;
        let current = updated.filter(|r| r.incarnation == incarnation);
        let Some(record) = current else {
            // Deleted, or reset and uploaded again, meanwhile: what this life of the song left
            // goes (only it: the names carry its incarnation).
            for name in &names {
                let _ = self.store.delete_object(name).await;
            }
            let stems = record_stems(&record);
            self.delete_segments(music, incarnation, plan, &stems).await;
            return Ok(None);
        };
        tracing::info!(
            %music,
            stems = paths.len(),
            frames = plan.frames,
            join_ms = joined.as_millis() as u64,
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
        let stems = record_stems(&record);
        let segments = async {
            for seg in plan.segments() {
                self.delete_segment(music, incarnation, seg.index).await;
            }
        };
        // A prefix download that began before the tracks were ready may still be reading the
        // parts: they go a while later. (A mixer stopped meanwhile leaves them to the song's
        // deletion or reset.)
        let store = self.store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PARTS_GRACE).await;
            delete_parts(&store, music, incarnation, &stems, 0..plan.count()).await;
        });
        let (_, mixed) = tokio::join!(segments, self.mixdown.make_pending(&record));
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

    /// Joins the song's parts in offset order into one float WAV per stem in `dir`. The
    /// decompressing and writing run on a blocking thread, a segment at a time, while the next
    /// [`PARTS_AHEAD`] segments' parts are fetched: an hour-long song is gigabytes of writes,
    /// and the executor must stay free for the in-progress acks meanwhile.
    async fn join_parts(
        &self,
        record: &MusicRecord,
        plan: SegmentPlan,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, MixError> {
        let paths: Vec<PathBuf> = (0..record.tracks.len())
            .map(|s| dir.join(format!("{s}.wav")))
            .collect();
        let create = paths.clone();
        let mut tracks = blocking(move || TrackFiles::create(&create, plan)).await?;
        let (music, incarnation) = (record.music_id, record.incarnation);
        let stems = record_stems(record);
        let mut loads = (0..plan.count()).map(|index| {
            let (store, stems) = (self.store.clone(), stems.clone());
            // Aborted when dropped: a failed assembly stops fetching.
            AbortOnDropHandle::new(tokio::spawn(async move {
                let gets = stems.iter().map(|stem| {
                    let name = objects::part(music, incarnation, stem, index);
                    let store = store.clone();
                    async move {
                        match store.get_object(&name).await? {
                            Some(bytes) => Ok((name, bytes)),
                            None => Err(MixError::PartMissing(name)),
                        }
                    }
                });
                futures::future::try_join_all(gets).await
            }))
        });
        let mut ahead: VecDeque<_> = loads.by_ref().take(PARTS_AHEAD).collect();
        while let Some(load) = ahead.pop_front() {
            ahead.extend(loads.next());
            let parts = load.await.map_err(MixError::Task)??;
            tracks = blocking(move || {
                tracks.append(&parts)?;
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

    /// Deletes the segment inputs, stems and parts of one life of a song: the tracks hold
    /// everything now (or the song is gone). `stems` names the song's stems.
    async fn delete_segments(
        &self,
        music: MusicId,
        incarnation: Incarnation,
        plan: SegmentPlan,
        stems: &[String],
    ) {
        for seg in plan.segments() {
            self.delete_segment(music, incarnation, seg.index).await;
        }
        self.delete_parts(music, incarnation, stems, 0..plan.count())
            .await;
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

/// Segments whose parts are fetched ahead of the join: each fetch is a round trip per chunk,
/// so several at once keep the writes fed; at most this many segments' parts (8.3 MB each for
/// the default model's 4 stems, compressed a little) wait in memory.
const PARTS_AHEAD: usize = 4;

/// How long a song's parts outlive its assembled tracks: prefix downloads that began before
/// the tracks were ready read them to the end.
const PARTS_GRACE: Duration = Duration::from_secs(60);

/// Deletes the parts of segments `indices` of one life of a song, of every stem in `stems`.
async fn delete_parts(
    store: &Store,
    music: MusicId,
    incarnation: Incarnation,
    stems: &[String],
    indices: std::ops::Range<u32>,
) {
    for index in indices {
        for stem in stems {
            let _ = store
                .delete_object(&objects::part(music, incarnation, stem, index))
                .await;
        }
    }
}

/// Songs whose parts this process is making: one [`Assembler::make_parts`] per song at a time.
static ASSEMBLING: Turns = Turns::new();

/// The names of a song's stems, in track order (the parts' and tracks' names use them).
fn record_stems(record: &MusicRecord) -> Vec<String> {
    record.tracks.iter().map(|t| t.name.clone()).collect()
}

/// Segment `seg`'s stems object, as stored (unpacked and checked by [`Stems::unpack`]).
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

/// A song's tracks being joined: one spooled float WAV file per stem. Its methods block (file
/// writes): call them through [`blocking`].
struct TrackFiles {
    files: Vec<BufWriter<File>>,
    /// Frames the tracks hold once complete (their headers say so from the start).
    frames: u64,
    /// Frames written so far.
    written: u64,
}

impl TrackFiles {
    /// Creates the track files `paths` (one per stem), each with the header
    /// [`hound::WavWriter`] would end with: the song's length is known from its plan.
    fn create(paths: &[PathBuf], plan: SegmentPlan) -> Result<Self, MixError> {
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
        Ok(TrackFiles {
            files,
            frames: plan.frames,
            written: 0,
        })
    }

    /// Appends one segment's parts, `(name, packed bytes)` of every stem in track order.
    fn append(&mut self, parts: &[(String, Vec<u8>)]) -> Result<(), MixError> {
        let mut frames = None;
        for (file, (name, packed)) in self.files.iter_mut().zip(parts) {
            let bytes = objects::unpack_bytes(packed).map_err(|source| MixError::PartCorrupt {
                name: name.clone(),
                source,
            })?;
            let n = bytes.len() / 8;
            if bytes.len() % 8 != 0 || frames.is_some_and(|f| f != n) {
                return Err(MixError::PartLength(name.clone()));
            }
            frames = Some(n);
            file.write_all(&bytes).map_err(MixError::Spool)?;
        }
        self.written += frames.unwrap_or(0) as u64;
        Ok(())
    }

    /// Completes the track files; they must hold the frames their headers announce.
    fn finish(self) -> Result<(), MixError> {
        if self.written != self.frames {
            return Err(MixError::Wav(hound::Error::FormatError(
                "the joined tracks are not the song's length",
            )));
        }
        for mut file in self.files {
            file.flush().map_err(MixError::Spool)?;
        }
        Ok(())
    }
}

/// A segment's stems as `lanes` planar lanes of `len` samples each (`samples` is them one
/// after another, as [`Stems::unpack`] gives them).
fn lane_views(samples: &[f32], len: u32, lanes: usize) -> Vec<&[f32]> {
    match len as usize {
        0 => vec![&[]; lanes],
        n => samples.chunks_exact(n).collect(),
    }
}

/// One stem's left and right channels as interleaved little-endian f32 bytes: a float WAV's
/// data.
fn interleave(left: &[f32], right: &[f32]) -> Vec<u8> {
    let mut bytes = vec![0u8; 8 * left.len().min(right.len())];
    for ((out, l), r) in bytes.chunks_exact_mut(8).zip(left).zip(right) {
        out[..4].copy_from_slice(&l.to_le_bytes());
        out[4..].copy_from_slice(&r.to_le_bytes());
    }
    bytes
}

/// Write buffer of each track file: a few segments' worth of writes at once.
const TRACK_WRITE_BYTES: usize = 1024 * 1024;

/// A segment's stems, unpacked: `lanes` planar lanes of the segment's length, one after another.
struct Samples {
    seg: Segment,
    samples: Vec<f32>,
}

/// A segment's stems object, as fetched.
struct Stems {
    seg: Segment,
    name: String,
    bytes: Vec<u8>,
}

impl Stems {
    /// The stems unpacked and checked (see [`Stems::unpack`]).
    fn samples(&self, lanes: usize) -> Result<Samples, MixError> {
        Ok(Samples {
            seg: self.seg,
            samples: self.unpack(lanes)?,
        })
    }

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

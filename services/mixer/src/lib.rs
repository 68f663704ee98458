//! The mixer: puts separated segments back together into one track per stem, and mixes the
//! tracks a user selects.
//!
//! Consumes: [`subjects::WORK_SEPARATED`] (durable consumer [`streams::MIXER_ASSEMBLE_CONSUMER`]) and
//! [`subjects::WORK_MIX`] (durable consumer [`streams::MIXER_MIX_CONSUMER`]), the segment stems in
//! the object store.
//! Produces: each song's progress on its record (and a progress event per change), one float WAV
//! per stem ([`objects::track`]) once every segment is in, and one float WAV per selection
//! ([`objects::mix`]); a song failed with the reason when one of its work items ran out of
//! deliveries without a verdict (`watchdog`).
//! Guarantees: idempotent: a segment reported twice counts once, in whatever order segments
//! arrive; assembly blends segments in offset order with demucs' triangular weights
//! ([`dme_segment::Blender`]), holding only two segments in memory, so a song separated by many
//! workers equals the single-process result; an event is acked only after its effect is stored,
//! so a mixer killed mid-assembly is replaced by a redelivery that assembles again.

mod config;
mod error;
mod watchdog;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use config::MixerConfig;
use dme_audio::MODEL_SAMPLE_RATE;
use dme_protocol::messages::{MixRequest, SegmentDone};
use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{now_ms, objects, streams, subjects, MusicId};
use dme_segment::Blender;
use dme_storage::work::{consume, Delivery, Verdict};
use dme_storage::Store;
pub use error::MixerError;
use tokio_util::sync::CancellationToken;

/// Delay before a failed assembly or mix is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

struct Mixer {
    store: Store,
    config: MixerConfig,
    max_deliver: u32,
}

/// Assembles and mixes until `shutdown`.
///
/// # Errors
/// When NATS cannot be reached at start-up.
pub async fn run(config: MixerConfig, shutdown: CancellationToken) -> Result<(), MixerError> {
    // Shutdown also applies while NATS is still unreachable at start-up.
    let store = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        store = Store::connect(
        &config.nats_url,
        "dme-mixer",
        Duration::from_secs(config.connect_timeout_s),
    ) => store?,
    };
    let redelivery = streams::Redelivery::PIPELINE;
    let assembled = store
        .work_consumer(
            streams::MIXER_ASSEMBLE_CONSUMER,
            subjects::WORK_SEPARATED,
            redelivery,
        )
        .await?;
    let mixes = store
        .work_consumer(streams::MIXER_MIX_CONSUMER, subjects::WORK_MIX, redelivery)
        .await?;
    let slots = config.slots;
    let mixer = Arc::new(Mixer {
        store,
        config,
        max_deliver: redelivery.max_deliver as u32,
    });
    tracing::info!("mixer ready");
    let m1 = mixer.clone();
    let assemble = consume(
        assembled,
        redelivery.ack_wait,
        slots,
        shutdown.clone(),
        move |d| {
            let m = m1.clone();
            async move { m.on_segment_done(d).await }
        },
    );
    let m2 = mixer.clone();
    let mix = consume(mixes, redelivery.ack_wait, 2, shutdown.clone(), move |d| {
        let m = m2.clone();
        async move { m.on_mix_request(d).await }
    });
    let watchdog = watchdog::watch_max_deliveries(mixer.store.clone(), shutdown.clone());
    tokio::join!(assemble, mix, watchdog);
    tracing::info!("mixer stopped");
    Ok(())
}

impl Mixer {
    fn verdict(&self, music: MusicId, attempt: u32, result: Result<(), String>) -> Verdict {
        match result {
            Ok(()) => Verdict::Ack,
            Err(reason) if attempt < self.max_deliver => {
                tracing::warn!(%music, attempt, reason, "will retry");
                Verdict::Retry(RETRY_DELAY)
            }
            Err(reason) => Verdict::Term(reason),
        }
    }

    async fn on_segment_done(&self, d: Delivery) -> Verdict {
        let done: SegmentDone = match dme_protocol::decode(&d.message.payload) {
            Ok(m) => m,
            Err(e) => return Verdict::Term(e.to_string()),
        };
        let result = self.segment_done(&done).await;
        if let Err(reason) = &result {
            if d.attempt >= self.max_deliver {
                let reason = format!("assembling the stems failed: {reason}");
                if let Err(e) = self.store.fail_music(done.music_id, &reason).await {
                    tracing::warn!(error = %e, "could not record the failure");
                }
            }
        }
        self.verdict(done.music_id, d.attempt, result)
    }

    async fn segment_done(&self, done: &SegmentDone) -> Result<(), String> {
        let store = &self.store;
        let index = done.index as usize;
        let mut changed = false;
        let record = store
            .update_music(done.music_id, |m| {
                changed = false;
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
            .await
            .map_err(|e| e.to_string())?;
        let Some(record) = record else {
            // Deleted (reset) while its segments were in flight: drop their leftovers.
            let _ = store.delete_song_objects(done.music_id).await;
            return Ok(());
        };
        if changed {
            store.announce(&record).await;
        }
        let all_in = !record.separated.is_empty() && record.separated.iter().all(|d| *d);
        if all_in && !record.tracks_ready && record.state != MusicState::Failed {
            self.assemble(record).await?;
        }
        Ok(())
    }

    async fn assemble(&self, record: MusicRecord) -> Result<(), String> {
        let store = &self.store;
        let music = record.music_id;
        let plan = record.plan.ok_or("no segment plan")?;
        let stems = record.tracks.len();
        let lanes = 2 * stems;
        let spool = match &self.config.spool_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .map_err(|e| format!("spool folder: {e}"))?;
        let paths: Vec<_> = (0..stems)
            .map(|s| spool.path().join(format!("{s}.wav")))
            .collect();
        let mut writers = paths
            .iter()
            .map(|p| hound::WavWriter::create(p, float_wav_spec()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut blender = Blender::new(plan, lanes);
        for seg in plan.segments() {
            let name = objects::segment_stems(music, seg.index);
            let bytes = store
                .get_object(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("stems {name} missing"))?;
            let data = objects::unpack_planar(&bytes, lanes).map_err(|e| e.to_string())?;
            if data[0].len() != seg.len as usize {
                return Err(format!(
                    "stems {name} hold {} samples, expected {}",
                    data[0].len(),
                    seg.len
                ));
            }
            let views: Vec<&[f32]> = data.iter().map(|l| l.as_slice()).collect();
            let (out, _) = blender.push(seg.index, &views);
            for (s, w) in writers.iter_mut().enumerate() {
                for (l, r) in out[2 * s].iter().zip(&out[2 * s + 1]) {
                    w.write_sample(*l).map_err(|e| e.to_string())?;
                    w.write_sample(*r).map_err(|e| e.to_string())?;
                }
            }
        }
        for w in writers {
            w.finalize().map_err(|e| e.to_string())?;
        }
        for (track, path) in record.tracks.iter().zip(&paths) {
            put_file(store, &objects::track(music, &track.name), path).await?;
        }
        let updated = store
            .update_music(music, |m| {
                if m.tracks_ready {
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
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(%music, stems, frames = plan.frames, "stems assembled");
        // Segment inputs and stems are no longer needed: the tracks hold everything.
        for seg in plan.segments() {
            let _ = store
                .delete_object(&objects::segment_input(music, seg.index))
                .await;
            let _ = store
                .delete_object(&objects::segment_stems(music, seg.index))
                .await;
        }
        if let Some(record) = updated {
            store.announce(&record).await;
            self.make_pending_mixes(&record).await?;
        }
        Ok(())
    }

    async fn on_mix_request(&self, d: Delivery) -> Verdict {
        let request: MixRequest = match dme_protocol::decode(&d.message.payload) {
            Ok(m) => m,
            Err(e) => return Verdict::Term(e.to_string()),
        };
        let result = match self.store.music(request.music_id).await {
            Ok(Some(record)) if record.tracks_ready => self.make_pending_mixes(&record).await,
            // Not assembled yet: the assembler mixes pending selections when it is done.
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        self.verdict(request.music_id, d.attempt, result)
    }

    async fn make_pending_mixes(&self, record: &MusicRecord) -> Result<(), String> {
        for mix in record.mixes.iter().filter(|m| !m.ready) {
            let indices: Vec<usize> = mix
                .tracks
                .iter()
                .filter_map(|t| record.stem_index(*t))
                .collect();
            self.render_mix(record, &indices, &objects::mix(record.music_id, &mix.key))
                .await?;
            let key = mix.key.clone();
            let updated = self
                .store
                .update_music(record.music_id, |m| {
                    let Some(x) = m.mixes.iter_mut().find(|x| x.key == key) else {
                        return false;
                    };
                    if x.ready {
                        return false;
                    }
                    x.ready = true;
                    if m.state != MusicState::Failed
                        && m.tracks_ready
                        && m.mixes.iter().all(|x| x.ready)
                    {
                        m.state = MusicState::Done;
                    }
                    m.updated_ms = now_ms();
                    true
                })
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(music = %record.music_id, key = %mix.key, "mix ready");
            if let Some(r) = updated {
                self.store.announce(&r).await;
            }
        }
        Ok(())
    }

    /// Sums the selected tracks into one float WAV object, streaming through temporary files:
    /// memory stays bounded whatever the song's length.
    async fn render_mix(
        &self,
        record: &MusicRecord,
        indices: &[usize],
        object: &str,
    ) -> Result<(), String> {
        let spool = match &self.config.spool_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .map_err(|e| format!("spool folder: {e}"))?;
        let mut inputs = Vec::with_capacity(indices.len());
        for (n, &i) in indices.iter().enumerate() {
            let name = objects::track(record.music_id, &record.tracks[i].name);
            let mut reader = self
                .store
                .object_reader(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("track {name} missing"))?;
            let path = spool.path().join(format!("in{n}.wav"));
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| e.to_string())?;
            tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(|e| format!("reading {name}: {e}"))?;
            inputs.push(path);
        }
        let out = spool.path().join("mix.wav");
        let out_path = out.clone();
        tokio::task::spawn_blocking(move || sum_wavs(&inputs, &out_path))
            .await
            .map_err(|e| e.to_string())??;
        put_file(&self.store, object, &out).await
    }
}

/// Writes the sample-by-sample sum of float WAV files `inputs` (equal lengths) to `out`.
fn sum_wavs(inputs: &[std::path::PathBuf], out: &Path) -> Result<(), String> {
    let mut readers = inputs
        .iter()
        .map(|p| hound::WavReader::open(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut writer = hound::WavWriter::create(out, float_wav_spec()).map_err(|e| e.to_string())?;
    let mut samples: Vec<_> = readers.iter_mut().map(|r| r.samples::<f32>()).collect();
    loop {
        let mut sum = 0.0f32;
        let mut ended = 0;
        for s in samples.iter_mut() {
            match s.next() {
                Some(v) => sum += v.map_err(|e| e.to_string())?,
                None => ended += 1,
            }
        }
        if ended == samples.len() {
            break;
        }
        writer.write_sample(sum).map_err(|e| e.to_string())?;
    }
    writer.finalize().map_err(|e| e.to_string())
}

/// Stereo IEEE float WAV at the model rate: what tracks and mixes are stored as.
fn float_wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate: MODEL_SAMPLE_RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    }
}

async fn put_file(store: &Store, name: &str, path: &Path) -> Result<(), String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    store
        .put_object_from(name, &mut file)
        .await
        .map_err(|e| e.to_string())
}

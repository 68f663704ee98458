//! Mixing: sums the tracks a user selected into one float WAV, streaming through spooled files
//! so memory stays bounded whatever the song's length.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use dme_protocol::messages::{MixRequest, ProgressEvent};
use dme_protocol::records::{MixRecord, MusicRecord, MusicState};
use dme_protocol::{now_ms, objects, MusicId};
use dme_storage::work::{Delivery, Handler};
use dme_storage::{Spool, Store};

use crate::{float_wav_spec, MixError};

/// The handler of [`dme_protocol::subjects::WORK_MIX`]; the assembler also uses it for the
/// selections made before the tracks were ready.
#[derive(Clone)]
pub(crate) struct Mixdown {
    pub(crate) store: Store,
    pub(crate) spool: Spool,
}

impl Handler for Mixdown {
    type Message = MixRequest;
    type Error = MixError;
    /// Transient failures are NATS hiccups: soon is fine.
    const RETRY_DELAY: Duration = Duration::from_secs(1);

    async fn handle(&self, request: &MixRequest, _: Delivery) -> Result<(), MixError> {
        match self.store.music(request.music_id).await? {
            // A request from before a reset is for a song that is gone.
            Some(record) if record.incarnation != request.incarnation => Ok(()),
            Some(record) if record.tracks_ready => self.make_pending(&record).await,
            // Not assembled yet: the assembler mixes pending selections when it is done.
            _ => Ok(()),
        }
    }
}

impl Mixdown {
    /// Mixes every selection of the song that has no mix yet, marking each ready.
    ///
    /// One song's selections are mixed one request at a time, each reading the record afresh
    /// when its turn comes: two requests at once (clients posting the same selection, a request
    /// beside the assembler) would otherwise both find a selection unmixed and render it twice.
    pub(crate) async fn make_pending(&self, record: &MusicRecord) -> Result<(), MixError> {
        let _turn = MixTurn::wait(record.music_id).await;
        let current = self.store.music(record.music_id).await?;
        let Some(record) = current.filter(|r| r.incarnation == record.incarnation) else {
            return Ok(()); // deleted, or reset and uploaded again, meanwhile
        };
        let record = &record;
        for mix in record.mixes.iter().filter(|m| !m.ready) {
            let object = self.render(record, mix).await?;
            let updated = self.mark_ready(record, &mix.key).await?;
            let Some(r) = updated.filter(|r| r.incarnation == record.incarnation) else {
                // Deleted, or reset and uploaded again, meanwhile: the mix is nobody's. Its
                // name carries this life's incarnation, so only it goes.
                let _ = self.store.delete_object(&object).await;
                return Ok(());
            };
            tracing::info!(music = %record.music_id, key = %mix.key, "mix ready");
            self.store.publish_progress(&ProgressEvent::of(&r)).await;
        }
        Ok(())
    }

    /// Sums the selection's tracks into its mix object; returns the object's name.
    async fn render(&self, record: &MusicRecord, mix: &MixRecord) -> Result<String, MixError> {
        let spool = self.spool.tempdir().map_err(MixError::Spool)?;
        let mut inputs = Vec::with_capacity(mix.tracks.len());
        let stems = mix.tracks.iter().enumerate().filter_map(|(n, t)| {
            let stem = record.tracks.get(record.stem_index(*t)?)?;
            Some((&stem.name, mix.gain(n)))
        });
        for (n, (stem, gain)) in stems.enumerate() {
            let name = objects::track(record.music_id, record.incarnation, stem);
            let path = spool.path().join(format!("in{n}.wav"));
            self.download(&name, &path).await?;
            inputs.push((path, gain.linear()));
        }
        let out = spool.path().join("mix.wav");
        let out_path = out.clone();
        let scale = tokio::task::spawn_blocking(move || sum_wavs(&inputs, &out_path))
            .await
            .map_err(MixError::Task)?
            .map_err(MixError::Wav)?;
        if scale != 1.0 {
            tracing::info!(music = %record.music_id, key = %mix.key, scale, "mix scaled down so it does not clip");
        }
        let object = objects::mix(record.music_id, record.incarnation, &mix.key);
        self.store.put_compressed_file(&object, &out).await?;
        Ok(object)
    }

    /// Copies object `name` (a track) to the local file `path`, decompressed.
    async fn download(&self, name: &str, path: &Path) -> Result<(), MixError> {
        let mut reader = self
            .store
            .unpacked_object_reader(name)
            .await?
            .ok_or_else(|| MixError::TrackMissing(name.to_string()))?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(MixError::Spool)?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(|source| MixError::ReadTrack {
                name: name.to_string(),
                source,
            })?;
        Ok(())
    }

    /// Marks the mix `key` ready; the song is done once its tracks and every mix are.
    async fn mark_ready(
        &self,
        record: &MusicRecord,
        key: &str,
    ) -> Result<Option<MusicRecord>, MixError> {
        let updated = self
            .store
            .update_music(record.music_id, |m| {
                if m.incarnation != record.incarnation {
                    return false;
                }
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
            .await?;
        Ok(updated)
    }
}

/// Songs whose selections this process is mixing, each with the lock its requests queue on.
static MIXING: LazyLock<Mutex<HashMap<MusicId, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// A song's turn to mix ([`Mixdown::make_pending`]); the song leaves [`MIXING`] with the last.
struct MixTurn {
    music: MusicId,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl MixTurn {
    async fn wait(music: MusicId) -> MixTurn {
        let lock = MIXING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(music)
            .or_default()
            .clone();
        MixTurn {
            music,
            _turn: lock.lock_owned().await,
        }
    }
}

impl Drop for MixTurn {
    fn drop(&mut self) {
        let mut mixing = MIXING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Held by the map and by this turn only: nobody is queued behind it.
        if mixing
            .get(&self.music)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            mixing.remove(&self.music);
        }
    }
}

/// Peak a mix is scaled down to when its sum would clip: −0.09 dBFS, a little headroom below
/// full scale so that converting it to 16-bit WAV or FLAC never clips either.
pub(crate) const MIX_PEAK_CEILING: f32 = 0.99;

/// Writes the sample-by-sample sum of float WAV files `inputs` (equal lengths), each multiplied
/// by its linear gain, to `out`; returns the factor the whole sum was scaled by.
///
/// The mix never clips: a first pass over the inputs finds the sum's peak (the largest absolute
/// sample); when it exceeds full scale (1.0), every sample of the mix is multiplied by one
/// factor that brings the peak to [`MIX_PEAK_CEILING`] (peak normalisation: the balance
/// between the stems and the dynamics stay as chosen, only the level drops). A sum within full
/// scale is written as it is, factor 1. Both passes stream the spooled files a sample at a time,
/// so memory stays bounded whatever the song's length.
fn sum_wavs(inputs: &[(PathBuf, f32)], out: &Path) -> Result<f32, hound::Error> {
    let mut peak = 0.0f32;
    for_each_sum(inputs, |sum| {
        peak = peak.max(sum.abs());
        Ok(())
    })?;
    let scale = if peak > 1.0 {
        MIX_PEAK_CEILING / peak
    } else {
        1.0
    };
    let mut writer = hound::WavWriter::create(out, float_wav_spec())?;
    for_each_sum(inputs, |sum| writer.write_sample(sum * scale))?;
    writer.finalize()?;
    Ok(scale)
}

/// Calls `each` with every sample of the weighted sum of `inputs`, in order; a shorter input
/// counts as silence past its end.
fn for_each_sum(
    inputs: &[(PathBuf, f32)],
    mut each: impl FnMut(f32) -> Result<(), hound::Error>,
) -> Result<(), hound::Error> {
    let mut readers = inputs
        .iter()
        .map(|(path, gain)| Ok((hound::WavReader::open(path)?, *gain)))
        .collect::<Result<Vec<_>, hound::Error>>()?;
    let mut samples: Vec<_> = readers
        .iter_mut()
        .map(|(r, gain)| (r.samples::<f32>(), *gain))
        .collect();
    loop {
        let mut sum = 0.0f32;
        let mut ended = 0;
        for (s, gain) in samples.iter_mut() {
            match s.next() {
                Some(v) => sum += v? * *gain,
                None => ended += 1,
            }
        }
        if ended == samples.len() {
            return Ok(());
        }
        each(sum)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own for one test, removed when dropped (the mixer has no tempfile).
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(test: &str) -> TestDir {
            let dir =
                std::env::temp_dir().join(format!("dme-mixdown-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn wav(dir: &Path, name: &str, samples: &[f32]) -> PathBuf {
        let path = dir.join(name);
        let mut w = hound::WavWriter::create(&path, float_wav_spec()).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        path
    }

    fn read(path: &Path) -> Vec<f32> {
        hound::WavReader::open(path)
            .unwrap()
            .samples::<f32>()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_sum_within_full_scale_is_written_as_it_is() {
        let dir = TestDir::new("within");
        let a = wav(dir.path(), "a.wav", &[0.5, -0.25, 0.1, 0.3]);
        let b = wav(dir.path(), "b.wav", &[0.5, -0.75, 0.2, -0.3]);
        let out = dir.path().join("mix.wav");
        let scale = sum_wavs(&[(a.clone(), 1.0), (b.clone(), 1.0)], &out).unwrap();
        assert_eq!(scale, 1.0);
        // Exactly 1.0 is full scale, not a clip.
        assert_eq!(read(&out), [1.0, -1.0, 0.1 + 0.2, 0.0]);
        let half = sum_wavs(&[(a, 0.5), (b, 1.0)], &out).unwrap();
        assert_eq!(half, 1.0);
        assert_eq!(read(&out), [0.75, -0.875, 0.05 + 0.2, 0.15 - 0.3]);
    }

    #[test]
    fn a_sum_that_would_clip_is_scaled_to_the_ceiling_as_a_whole() {
        let dir = TestDir::new("clip");
        let a = wav(dir.path(), "a.wav", &[0.5, -0.9, 0.1, 0.3]);
        let b = wav(dir.path(), "b.wav", &[0.5, -0.6, 0.2, -0.3]);
        let out = dir.path().join("mix.wav");
        let gain = 2.0f32;
        let scale = sum_wavs(&[(a, gain), (b, gain)], &out).unwrap();
        let sum = [2.0f32, -3.0, 0.6, 0.0];
        assert!((scale - MIX_PEAK_CEILING / 3.0).abs() < 1e-7, "{scale}");
        let mix = read(&out);
        let peak = mix.iter().fold(0.0f32, |p, s| p.max(s.abs()));
        assert!((peak - MIX_PEAK_CEILING).abs() < 1e-6, "{peak}");
        for (m, s) in mix.iter().zip(sum) {
            assert!((m - s * scale).abs() < 1e-6, "{m} vs {s}");
        }
    }
}

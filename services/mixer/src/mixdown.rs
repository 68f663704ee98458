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
        let stems = mix.tracks.iter().filter_map(|t| record.stem_index(*t));
        let names = stems.filter_map(|i| record.tracks.get(i)).map(|t| &t.name);
        for (n, stem) in names.enumerate() {
            let name = objects::track(record.music_id, record.incarnation, stem);
            let path = spool.path().join(format!("in{n}.wav"));
            self.download(&name, &path).await?;
            inputs.push(path);
        }
        let out = spool.path().join("mix.wav");
        let out_path = out.clone();
        tokio::task::spawn_blocking(move || sum_wavs(&inputs, &out_path))
            .await
            .map_err(MixError::Task)?
            .map_err(MixError::Wav)?;
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

/// Writes the sample-by-sample sum of float WAV files `inputs` (equal lengths) to `out`.
fn sum_wavs(inputs: &[PathBuf], out: &Path) -> Result<(), hound::Error> {
    let mut readers = inputs
        .iter()
        .map(hound::WavReader::open)
        .collect::<Result<Vec<_>, _>>()?;
    let mut writer = hound::WavWriter::create(out, float_wav_spec())?;
    let mut samples: Vec<_> = readers.iter_mut().map(|r| r.samples::<f32>()).collect();
    loop {
        let mut sum = 0.0f32;
        let mut ended = 0;
        for s in samples.iter_mut() {
            match s.next() {
                Some(v) => sum += v?,
                None => ended += 1,
            }
        }
        if ended == samples.len() {
            break;
        }
        writer.write_sample(sum)?;
    }
    writer.finalize()
}

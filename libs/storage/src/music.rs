//! Music records ([`dme_protocol::streams::MUSIC_BUCKET`]), keyed by music id.

use dme_protocol::records::MusicRecord;
use dme_protocol::MusicId;

use crate::{kv, nats, Result, Store};

impl Store {
    /// The record of `id`, if it exists.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn music(&self, id: MusicId) -> Result<Option<MusicRecord>> {
        kv::get(&self.music, &id.to_string()).await
    }

    /// Writes a new record; false (and nothing written) when `id` already exists.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn create_music(&self, record: &MusicRecord) -> Result<bool> {
        kv::create(&self.music, &record.music_id.to_string(), record).await
    }

    /// Applies `change` to the record of `id` atomically (retrying on concurrent writes) and
    /// returns the new record, or `None` when there is no such record. `change` returns false
    /// when it changed nothing, and then nothing is written.
    ///
    /// # Errors
    /// On NATS failure, an undecodable record or endless contention.
    pub async fn update_music<F>(&self, id: MusicId, change: F) -> Result<Option<MusicRecord>>
    where
        F: FnMut(&mut MusicRecord) -> bool,
    {
        kv::update(&self.music, &id.to_string(), change).await
    }

    /// Removes the record of `id` with its history, so the same id can be created again; removing
    /// a missing record is not an error.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_music(&self, id: MusicId) -> Result<()> {
        self.music
            .purge(id.to_string())
            .await
            .map_err(nats("purge music record"))?;
        Ok(())
    }

    /// Every music record, in no particular order.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn list_music(&self) -> Result<Vec<MusicRecord>> {
        kv::list(&self.music).await
    }
}

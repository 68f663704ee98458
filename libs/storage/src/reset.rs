//! Deleting everything dme keeps (`POST /reset`).

use dme_protocol::streams;

use crate::{nats, Result, Store};

impl Store {
    /// Deletes every record, file, event, advisory and pending work item (the registered model
    /// stays). Workers drop work in hand for songs that no longer exist, or whose record is of
    /// another incarnation (the same file uploaded again since). JetStream's duplicate window
    /// survives a purge, which is why every message id carries the song's incarnation.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn reset(&self) -> Result<()> {
        for stream in [
            streams::WORK_STREAM.to_string(),
            streams::EVENT_STREAM.to_string(),
            streams::ADVISORY_STREAM.to_string(),
            streams::kv_stream(streams::MUSIC_BUCKET),
            streams::kv_stream(streams::JOB_BUCKET),
            streams::object_stream(streams::FILE_BUCKET),
        ] {
            let s = self
                .js
                .get_stream(&stream)
                .await
                .map_err(nats("get stream"))?;
            s.purge().await.map_err(nats("purge stream"))?;
        }
        Ok(())
    }
}

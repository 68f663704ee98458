//! Deleting everything dme keeps (`POST /reset`).

use dme_protocol::streams;

use crate::{nats, Result, Store};

impl Store {
    /// Deletes every record, file, event and pending work item (the registered model stays).
    /// Workers drop work in hand for songs that no longer exist.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn reset(&self) -> Result<()> {
        for stream in [
            streams::WORK_STREAM.to_string(),
            streams::EVENT_STREAM.to_string(),
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

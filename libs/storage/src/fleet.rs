//! The fleet as the segment window sees it: how many separators of a model's pool are live and
//! how many songs have segments queued for it ([`Store::pool_load`]).

use dme_protocol::{streams, subjects};
use futures::TryStreamExt;

use crate::{nats, Result, Store};

/// A model's pool as its queue shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolLoad {
    /// Separators live in the pool: the pool consumer's waiting pull requests (an idle worker
    /// keeps exactly one, see [`crate::work::consume`]) plus its unacknowledged messages (a
    /// busy worker holds exactly one). A worker between its ack and its next pull is missed
    /// for that moment; a dead worker's message counts until its ack wait runs out.
    pub workers: u32,
    /// Songs with at least one segment in the work stream for the pool (waiting or in a
    /// worker's hands): one subject per song ([`subjects::work`]), so one stream-info request.
    pub songs: u32,
}

impl Store {
    /// The load of the pool of the model whose fingerprint is `model` (see [`PoolLoad`]). A
    /// pool whose consumer does not exist yet has no workers.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn pool_load(&self, model: &str) -> Result<PoolLoad> {
        let stream = self
            .js
            .get_stream_no_info(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        let kind = subjects::work_segment(model);
        let mut counts = stream
            .info_with_subjects(subjects::work_filter(&kind))
            .await
            .map_err(nats("work stream subjects"))?;
        let mut songs = 0u32;
        while let Some((_, count)) = counts
            .try_next()
            .await
            .map_err(nats("work stream subjects"))?
        {
            if count > 0 {
                songs = songs.saturating_add(1);
            }
        }
        let workers = match stream
            .consumer_info(streams::separator_consumer(model))
            .await
        {
            Ok(info) => u32::try_from(info.num_waiting.saturating_add(info.num_ack_pending))
                .unwrap_or(u32::MAX),
            Err(_) => 0, // no pool yet: nobody to share
        };
        Ok(PoolLoad { workers, songs })
    }
}

//! How much the object store holds and may hold: its maximum is set from each service's
//! settings at start-up, and the gateway reads its use to refuse new songs before it fills.

use async_nats::jetstream;
use dme_protocol::streams;

use crate::{nats, Result, Store};

/// What the object store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes stored (chunks and object metadata).
    pub used: u64,
    /// The most it may hold; `None` when unbounded (a bucket created before dme set a maximum).
    pub max: Option<u64>,
}

impl Store {
    /// What the object store holds now and may hold, from one stream-info request.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn file_usage(&self) -> Result<StoreUsage> {
        let stream = self
            .js
            .get_stream(streams::object_stream(streams::FILE_BUCKET))
            .await
            .map_err(nats("object store usage"))?;
        let info = stream.cached_info();
        Ok(StoreUsage {
            used: info.state.bytes,
            max: u64::try_from(info.config.max_bytes).ok().filter(|m| *m > 0),
        })
    }
}

/// Sets the object store's maximum to `max_bytes` where it differs, logging the change: a bucket
/// keeps the maximum it was created with, so each service brings it to its own setting at
/// start-up (the last one started wins, as with consumer settings). Lowering it below what is
/// stored deletes nothing (the stream discards new messages): only new puts fail.
///
/// # Errors
/// On NATS failure, or when the server refuses the maximum (above its `max_file_store`).
pub(crate) async fn set_file_store_max(js: &jetstream::Context, max_bytes: u64) -> Result<()> {
    let stream = js
        .get_stream(streams::object_stream(streams::FILE_BUCKET))
        .await
        .map_err(nats("object store stream"))?;
    let current = stream.cached_info().config.clone();
    let wanted = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    if current.max_bytes == wanted {
        return Ok(());
    }
    let from = current.max_bytes;
    let mut config = current;
    config.max_bytes = wanted;
    js.update_stream(config).await.map_err(nats(
        "set the object store's maximum (is DME_STORE_MAX_BYTES above the server's max_file_store?)",
    ))?;
    tracing::info!(
        from,
        to = wanted,
        "object store maximum set from DME_STORE_MAX_BYTES"
    );
    Ok(())
}

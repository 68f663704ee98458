//! Typed records in KV buckets: get, create-if-absent, compare-and-swap update, list.

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{de::DeserializeOwned, Serialize};

use crate::{nats, Result, StoreError};

/// How often a compare-and-swap update is retried against concurrent writers before giving up:
/// far more than the handful of writers of one record (gateway, splitter, mixer slots) can cause.
const CAS_ATTEMPTS: usize = 64;

/// The pause before reading a record again when its replicated bucket refused an update while
/// applying another write of it.
const CAS_PAUSE: std::time::Duration = std::time::Duration::from_millis(4);

/// The record at `key`, if it exists.
pub(crate) async fn get<T: DeserializeOwned>(bucket: &kv::Store, key: &str) -> Result<Option<T>> {
    let value = bucket.get(key).await.map_err(nats("kv get"))?;
    match value {
        Some(bytes) => Ok(Some(dme_protocol::decode(&bytes)?)),
        None => Ok(None),
    }
}

/// Writes `record` at `key` unless a value exists there; true when written.
pub(crate) async fn create<T: Serialize>(
    bucket: &kv::Store,
    key: &str,
    record: &T,
) -> Result<bool> {
    match bucket
        .create(key, dme_protocol::encode(record).into())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(nats("kv create")(e)),
    }
}

/// Applies `change` to the record at `key` by compare-and-swap, retrying on concurrent writes;
/// `None` when there is no record. `change` returns false when it changed nothing, and then
/// nothing is written.
pub(crate) async fn update<T, F>(bucket: &kv::Store, key: &str, mut change: F) -> Result<Option<T>>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(&mut T) -> bool,
{
    for _ in 0..CAS_ATTEMPTS {
        let Some(entry) = bucket.entry(key).await.map_err(nats("kv entry"))? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let mut record: T = dme_protocol::decode(&entry.value)?;
        if !change(&mut record) {
            return Ok(Some(record));
        }
        match bucket
            .update(key, dme_protocol::encode(&record).into(), entry.revision)
            .await
        {
            Ok(_) => return Ok(Some(record)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            // A replicated bucket still applying another write of the record: read it again
            // once that write has had a moment.
            Err(e) if crate::wrote_first(&e) => {
                tokio::time::sleep(crate::jittered(CAS_PAUSE)).await;
            }
            Err(e) => return Err(nats("kv update")(e)),
        }
    }
    Err(StoreError::Contention(key.to_string()))
}

/// Every key of `bucket`.
pub(crate) async fn keys(bucket: &kv::Store) -> Result<Vec<String>> {
    let keys = bucket.keys().await.map_err(nats("kv keys"))?;
    keys.try_collect().await.map_err(nats("kv keys"))
}

/// Every record of `bucket`.
pub(crate) async fn list<T: DeserializeOwned>(bucket: &kv::Store) -> Result<Vec<T>> {
    let keys = keys(bucket).await?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(r) = get(bucket, &key).await? {
            out.push(r);
        }
    }
    Ok(out)
}

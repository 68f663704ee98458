//! Job records ([`dme_protocol::streams::JOB_BUCKET`]): one per segment separation, keyed by job
//! id.

use dme_protocol::records::JobRecord;
use dme_protocol::JobId;

use crate::{kv, nats, Result, Store, StoreError};

/// Rounds of create-then-replace before [`Store::create_job`] gives up.
const CREATE_ATTEMPTS: usize = 4;

impl Store {
    /// The job record of `id`, if it exists.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        kv::get(&self.jobs, &id.to_string()).await
    }

    /// Writes a job record unless one of the same incarnation exists (a re-cut song keeps its
    /// jobs' history); a record left by another incarnation of the song (a cut that was still
    /// running when the song was reset) is replaced. True when written.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn create_job(&self, record: &JobRecord) -> Result<bool> {
        let key = record.job_id.to_string();
        // A record deleted between the failed create and the update is created again; a reset
        // can do that at most once or twice in a row.
        for _ in 0..CREATE_ATTEMPTS {
            if kv::create(&self.jobs, &key, record).await? {
                return Ok(true);
            }
            let mut replaced = false;
            let existing = kv::update(&self.jobs, &key, |job: &mut JobRecord| {
                replaced = job.incarnation != record.incarnation;
                if replaced {
                    *job = record.clone();
                }
                replaced
            })
            .await?;
            if existing.is_some() {
                return Ok(replaced);
            }
        }
        Err(StoreError::Contention(key))
    }

    /// Like [`Store::update_music`], for a job record.
    ///
    /// # Errors
    /// As [`Store::update_music`].
    pub async fn update_job<F>(&self, id: JobId, change: F) -> Result<Option<JobRecord>>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        kv::update(&self.jobs, &id.to_string(), change).await
    }

    /// Deletes a job record; deleting a missing one is not an error.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_job(&self, id: JobId) -> Result<()> {
        self.jobs
            .delete(id.to_string())
            .await
            .map_err(nats("delete job"))?;
        Ok(())
    }

    /// Every job id.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn job_ids(&self) -> Result<Vec<JobId>> {
        let keys = kv::keys(&self.jobs).await?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Every job record.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        kv::list(&self.jobs).await
    }
}

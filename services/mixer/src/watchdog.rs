//! The failure watcher: a work item whose deliveries ran out without a verdict (every worker
//! that took it died: a crash loop) would otherwise sit in the queue forever and its song stay
//! `separating`. JetStream announces that with a max-deliveries advisory, which the advisory
//! stream ([`streams::ADVISORY_STREAM`]) keeps until a mixer has handled it, so an advisory
//! published while no mixer runs is handled when one starts. The watcher names the item that
//! failed (a segment, an assembly, a mix, a cut), marks that job (a segment's) and the song
//! failed with the reason, and removes the item from the queue.

use std::time::Duration;

use dme_protocol::messages::MaxDeliveries;
use dme_protocol::{streams, DecodeError, Incarnation, JobId, MusicId};
use dme_storage::work::{Delivery, Handler};
use dme_storage::Store;
use serde::Deserialize;

use crate::MixError;

/// The handler of the advisory stream.
pub(crate) struct Watchdog {
    pub(crate) store: Store,
}

/// Every work message names its song and the life of its record; segment work and separated
/// segments name their segment and job; other fields are ignored.
#[derive(Deserialize)]
struct AnyWork {
    music_id: MusicId,
    #[serde(default)]
    incarnation: Incarnation,
    job_id: Option<JobId>,
    index: Option<u32>,
}

/// The work item whose deliveries ran out, named by the consumer that took it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FailedItem {
    /// Separating segment `index` (job `job`).
    Segment { index: u32, job: Option<JobId> },
    /// Counting separated segment `index` in, and assembling the stems when it is the last.
    Assembly { index: Option<u32> },
    /// Mixing a selection.
    Mix,
    /// Cutting the uploaded song into segments.
    Cut,
    /// The work of a consumer dme does not know (a newer version's).
    Other(String),
}

impl FailedItem {
    /// What `consumer` was doing with `work`.
    fn of(consumer: &str, work: &AnyWork) -> FailedItem {
        match (consumer, work.index) {
            // Each model's pool has its own consumer (`separator-<fingerprint>`).
            (pool, Some(index)) if streams::separator_consumer_model(pool).is_some() => {
                FailedItem::Segment {
                    index,
                    job: work.job_id,
                }
            }
            (streams::MIXER_ASSEMBLE_CONSUMER, index) => FailedItem::Assembly { index },
            (streams::MIXER_MIX_CONSUMER, _) => FailedItem::Mix,
            (streams::SPLITTER_CONSUMER, _) => FailedItem::Cut,
            (other, _) => FailedItem::Other(other.to_string()),
        }
    }

    /// The item as a person reads it, at the start of the reason.
    fn describe(&self) -> String {
        match self {
            FailedItem::Segment { index, .. } => format!("segment {index}"),
            FailedItem::Assembly { index: Some(k) } => {
                format!("the assembly of the stems (on segment {k}'s completion)")
            }
            FailedItem::Assembly { index: None } => "the assembly of the stems".to_string(),
            FailedItem::Mix => "the mix of a selection".to_string(),
            FailedItem::Cut => "cutting the song into segments".to_string(),
            FailedItem::Other(consumer) => format!("its {consumer} step"),
        }
    }
}

impl Handler for Watchdog {
    type Message = MaxDeliveries;
    type Error = MixError;
    /// Transient failures are NATS hiccups: soon is fine.
    const RETRY_DELAY: Duration = Duration::from_secs(1);

    /// Advisories are JetStream's JSON.
    fn decode(&self, payload: &[u8]) -> Result<MaxDeliveries, DecodeError> {
        MaxDeliveries::from_json(payload)
    }

    async fn handle(&self, advisory: &MaxDeliveries, _: Delivery) -> Result<(), MixError> {
        if advisory.stream != streams::WORK_STREAM {
            return Ok(());
        }
        let seq = advisory.stream_seq;
        let Some(payload) = self.store.work_message(seq).await? else {
            return Ok(()); // acked, removed or purged meanwhile
        };
        let Ok(work) = dme_protocol::decode::<AnyWork>(&payload) else {
            tracing::warn!(
                seq,
                "undecodable work message ran out of deliveries; removed"
            );
            return Ok(self.store.delete_work_message(seq).await?);
        };
        let item = FailedItem::of(&advisory.consumer, &work);
        let reason = format!(
            "{} was delivered {} times and every worker stopped before finishing it",
            item.describe(),
            advisory.deliveries
        );
        if let FailedItem::Segment { job: Some(job), .. } = item {
            self.fail_job(job, work.incarnation, &reason).await?;
        }
        dme_storage::song::fail(&self.store, work.music_id, work.incarnation, &reason).await?;
        self.store.delete_work_message(seq).await?;
        Ok(())
    }
}

impl Watchdog {
    /// Marks job `job` failed, unless it belongs to another incarnation of its song.
    async fn fail_job(
        &self,
        job: JobId,
        incarnation: Incarnation,
        reason: &str,
    ) -> Result<(), MixError> {
        self.store
            .update_job(job, |j| {
                if j.incarnation != incarnation {
                    return false;
                }
                j.fail(reason);
                true
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(index: Option<u32>) -> AnyWork {
        AnyWork {
            music_id: MusicId(1),
            incarnation: Incarnation(2),
            job_id: index.map(|k| JobId::of(MusicId(1), k)),
            index,
        }
    }

    #[test]
    fn the_consumer_names_the_failed_item() {
        let pool = streams::separator_consumer("0123abcd");
        let seg = FailedItem::of(&pool, &work(Some(3)));
        assert_eq!(seg.describe(), "segment 3");
        // A separated segment names its segment and job too, but its assembly failed.
        let assembly = FailedItem::of(streams::MIXER_ASSEMBLE_CONSUMER, &work(Some(3)));
        assert_eq!(assembly, FailedItem::Assembly { index: Some(3) });
        assert!(assembly.describe().starts_with("the assembly"));
        let mix = FailedItem::of(streams::MIXER_MIX_CONSUMER, &work(None));
        assert_eq!(mix.describe(), "the mix of a selection");
        assert_eq!(
            FailedItem::of(streams::SPLITTER_CONSUMER, &work(None)),
            FailedItem::Cut
        );
    }
}

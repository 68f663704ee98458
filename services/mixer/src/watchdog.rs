//! The failure watcher: a work item whose deliveries ran out without a verdict (every worker
//! that took it died: a crash loop) would otherwise sit in the queue forever and its song stay
//! `separating`. JetStream announces that with a max-deliveries advisory; the watcher marks the
//! job and the song failed with the reason and removes the item from the queue.

use std::time::Duration;

use dme_protocol::{streams, subjects, JobId, MusicId};
use dme_storage::Store;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Pause before subscribing again after the subscription ended (server restart).
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// The fields of JetStream's `io.nats.jetstream.advisory.v1.max_deliver` advisory used here.
#[derive(Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

/// Every work message names its song, and segment work its job; other fields are ignored.
#[derive(Deserialize)]
struct AnyWork {
    music_id: MusicId,
    job_id: Option<JobId>,
    index: Option<u32>,
}

/// Watches the advisories of every work consumer until `shutdown`.
pub async fn watch_max_deliveries(store: Store, shutdown: CancellationToken) {
    let subject = subjects::max_deliveries_advisory(streams::WORK_STREAM, "*");
    while !shutdown.is_cancelled() {
        let mut sub = match store.client().subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to advisories");
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => m,
            };
            let Some(message) = message else { break };
            match serde_json::from_slice::<MaxDeliveries>(&message.payload) {
                Ok(advisory) => handle(&store, advisory).await,
                Err(e) => tracing::warn!(error = %e, "unreadable advisory"),
            }
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

async fn handle(store: &Store, advisory: MaxDeliveries) {
    let Ok(stream) = store.jetstream().get_stream(&advisory.stream).await else {
        return;
    };
    let Ok(message) = stream.get_raw_message(advisory.stream_seq).await else {
        return; // acked or removed meanwhile
    };
    let Ok(work) = dme_protocol::decode::<AnyWork>(&message.payload) else {
        let _ = stream.delete_message(advisory.stream_seq).await;
        return;
    };
    let what = match work.index {
        Some(k) => format!("segment {k}"),
        None => format!("its {} step", advisory.consumer),
    };
    let reason = format!(
        "{what} was delivered {} times and every worker stopped before finishing it",
        advisory.deliveries
    );
    if let Some(job) = work.job_id {
        let _ = store
            .update_job(job, |j| {
                j.fail(&reason);
                true
            })
            .await;
    }
    if let Err(e) = dme_storage::song::fail(store, work.music_id, &reason).await {
        tracing::warn!(error = %e, "could not record the failure");
        return;
    }
    let _ = stream.delete_message(advisory.stream_seq).await;
}

//! Work: publishing work items, the durable consumers that take them, and the one way every dme
//! service handles them: one message at a time per slot, in-progress acks while the handler
//! runs, one mapping from a handler's result to a verdict (ack, retry later, give up), and a
//! clean stop on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind, Message};
use bytes::Bytes;
use dme_protocol::messages::WorkItem;
use dme_protocol::streams::{self, Redelivery};
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::{error_chain, nats, Result, Store};

/// How long one pull waits for a message before asking again (and noticing shutdown).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Pause after a failed pull (server restarting) before trying again.
const PULL_RETRY: Duration = Duration::from_millis(500);
/// Shortest interval between in-progress acks, whatever the ack wait: more often only loads the
/// server.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

impl Store {
    /// Publishes a work message and waits for JetStream to store it. With `msg_id`, a second
    /// publish of the same id within [`streams::DUPLICATE_WINDOW`] is dropped by the server.
    ///
    /// # Errors
    /// On NATS failure (the message may or may not be stored; publishing again is safe with a
    /// `msg_id`).
    pub async fn publish<T: Serialize>(
        &self,
        subject: &'static str,
        message: &T,
        msg_id: Option<&str>,
    ) -> Result<()> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(dme_protocol::encode(message)));
        if let Some(id) = msg_id {
            publish = publish.message_id(id);
        }
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(nats("publish"))?
            .await
            .map_err(nats("publish ack"))?;
        Ok(())
    }

    /// The durable work consumer `name` on `subject`, created if missing.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn work_consumer(
        &self,
        name: &str,
        subject: &str,
        redelivery: Redelivery,
    ) -> Result<PullConsumer> {
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        stream
            .get_or_create_consumer(name, streams::work_consumer(name, subject, redelivery))
            .await
            .map_err(nats("declare consumer"))
    }
}

/// What to do with a message once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done (or nothing to do): remove it from the queue.
    Ack,
    /// A transient failure: deliver it again after this delay.
    Retry(Duration),
    /// It can never succeed, or its deliveries ran out: stop delivering it, for this reason.
    Term(String),
}

/// Where a message is in its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// How many times it has been delivered, this time included (1 on first delivery).
    pub attempt: u32,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
}

/// A handler's failure, and whether another delivery may help.
pub trait HandlerError: std::error::Error + Send {
    /// True when another delivery may succeed (NATS restarting, no model registered yet); false
    /// when none can (a corrupt file, an input that breaks the contract).
    fn is_transient(&self) -> bool;
}

/// What a service does with the messages of one work subject.
pub trait Handler: Send + Sync + 'static {
    /// The message on the subject.
    type Message: DeserializeOwned + WorkItem + Send + Sync;
    /// Why handling failed.
    type Error: HandlerError;
    /// Pause before a message whose handling failed transiently is delivered again.
    const RETRY_DELAY: Duration;

    /// Does the work of one message. `Ok` acks it; an error retries it (while deliveries remain
    /// and the error is transient) or gives it up.
    fn handle(
        &self,
        message: &Self::Message,
        delivery: Delivery,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Records why `message` was given up (it failed permanently, or transiently on its last
    /// delivery), before it is terminated. The default records nothing.
    fn give_up(
        &self,
        message: &Self::Message,
        delivery: Delivery,
        reason: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (message, delivery, reason);
        async {}
    }
}

/// The verdict on a handler's `result` on delivery `attempt` of at most `max_deliver`: ack on
/// success; retry after `retry_delay` when the error is transient and deliveries remain; else
/// terminate with the error and its causes as the reason.
pub fn verdict<E: HandlerError>(
    result: &Result<(), E>,
    attempt: u32,
    max_deliver: u32,
    retry_delay: Duration,
) -> Verdict {
    match result {
        Ok(()) => Verdict::Ack,
        Err(e) if e.is_transient() && attempt < max_deliver => {
            tracing::warn!(attempt, error = error_chain(e), "will be retried");
            Verdict::Retry(retry_delay)
        }
        Err(e) => Verdict::Term(error_chain(e)),
    }
}

/// Pulls from `consumer` until `shutdown` is cancelled, running up to `slots` messages through
/// `handler` at once (each slot pulls one message; none is prefetched to wait in a buffer while
/// its ack clock runs). While a message is handled, an in-progress ack every third of
/// `redelivery.ack_wait` keeps JetStream from handing it to another worker. A message that
/// cannot be decoded is terminated. Messages in hand when shutdown comes are finished.
pub async fn consume<H: Handler>(
    consumer: PullConsumer,
    redelivery: Redelivery,
    slots: usize,
    shutdown: CancellationToken,
    handler: Arc<H>,
) {
    let permits = Arc::new(Semaphore::new(slots.max(1)));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = pull_one(&consumer) => m,
        };
        let Some(message) = next else {
            continue;
        };
        let delivery = match message.info() {
            Ok(info) => Delivery {
                attempt: info.delivered.max(1) as u32,
                stream_sequence: info.stream_sequence,
            },
            Err(_) => Delivery {
                attempt: 1,
                stream_sequence: 0,
            },
        };
        let span = tracing::info_span!(
            "message",
            subject = %message.subject,
            seq = delivery.stream_sequence,
            attempt = delivery.attempt,
            music = tracing::field::Empty,
            segment = tracing::field::Empty,
        );
        let handler = handler.clone();
        tracker.spawn(
            async move {
                let _permit = permit;
                run_one(message, delivery, redelivery, handler.as_ref()).await;
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
}

async fn pull_one(consumer: &PullConsumer) -> Option<Message> {
    let batch = consumer
        .fetch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await;
    match batch {
        Ok(mut batch) => match batch.next().await {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "pull failed");
                tokio::time::sleep(PULL_RETRY).await;
                None
            }
            None => None,
        },
        Err(e) => {
            tracing::debug!(error = %e, "pull request failed");
            tokio::time::sleep(PULL_RETRY).await;
            None
        }
    }
}

/// Handles one message, keeping it in progress meanwhile, and sends its verdict.
async fn run_one<H: Handler>(
    message: Message,
    delivery: Delivery,
    redelivery: Redelivery,
    handler: &H,
) {
    let in_progress = keep_in_progress(message.clone(), redelivery.ack_wait);
    let verdict = match dme_protocol::decode::<H::Message>(&message.payload) {
        Ok(work) => {
            let span = tracing::Span::current();
            span.record("music", tracing::field::display(work.music_id()));
            if let Some(index) = work.segment_index() {
                span.record("segment", index);
            }
            let result = handler.handle(&work, delivery).await;
            let max_deliver = redelivery.max_deliver.try_into().unwrap_or(u32::MAX);
            let verdict = verdict(&result, delivery.attempt, max_deliver, H::RETRY_DELAY);
            if let Verdict::Term(reason) = &verdict {
                handler.give_up(&work, delivery, reason).await;
            }
            verdict
        }
        Err(e) => Verdict::Term(e.to_string()),
    };
    drop(in_progress);
    send(&message, &verdict).await;
}

/// Sends an in-progress ack for `message` every third of `ack_wait` until the returned handle
/// is dropped.
fn keep_in_progress(message: Message, ack_wait: Duration) -> AbortOnDropHandle<()> {
    let every = (ack_wait / 3).max(MIN_PROGRESS_INTERVAL);
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "in-progress ack failed");
            }
        }
    }))
}

async fn send(message: &Message, verdict: &Verdict) {
    let sent = match verdict {
        Verdict::Ack => message.double_ack().await,
        Verdict::Retry(delay) => message.ack_with(AckKind::Nak(Some(*delay))).await,
        Verdict::Term(reason) => {
            tracing::warn!(reason, "message terminated");
            message.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = sent {
        // The message comes back after its ack wait; handlers are idempotent.
        tracing::warn!(error = %e, ?verdict, "acknowledgement not confirmed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed")]
    struct Failed {
        transient: bool,
        #[source]
        cause: std::io::Error,
    }

    impl HandlerError for Failed {
        fn is_transient(&self) -> bool {
            self.transient
        }
    }

    fn failed(transient: bool) -> Result<(), Failed> {
        Err(Failed {
            transient,
            cause: std::io::Error::other("disk full"),
        })
    }

    #[test]
    fn verdicts_retry_transient_failures_until_deliveries_run_out() {
        let delay = Duration::from_secs(3);
        assert_eq!(verdict(&Ok::<(), Failed>(()), 1, 5, delay), Verdict::Ack);
        assert_eq!(verdict(&failed(true), 4, 5, delay), Verdict::Retry(delay));
        let last = verdict(&failed(true), 5, 5, delay);
        assert_eq!(last, Verdict::Term("failed: disk full".into()));
        let permanent = verdict(&failed(false), 1, 5, delay);
        assert_eq!(permanent, Verdict::Term("failed: disk full".into()));
    }
}

//! The one way dme services take work from a durable pull consumer: one message at a time per
//! slot, in-progress acks while the handler runs, an explicit verdict per message, and a clean
//! stop on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, AckKind, Message};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long one pull waits for a message before asking again (and noticing shutdown).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Pause after a failed pull (server restarting) before trying again.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// What to do with a message once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done (or nothing to do): remove it from the queue.
    Ack,
    /// A transient failure: deliver it again after this delay.
    Retry(Duration),
    /// It can never succeed (the handler recorded why): stop delivering it.
    Term(String),
}

/// A delivered message with what the handler needs to know about its delivery.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it has been delivered, this time included (1 on first delivery).
    pub attempt: u32,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
}

/// Pulls from `consumer` until `shutdown` is cancelled, running up to `slots` handlers at once
/// (each pulls one message; none is prefetched to wait in a buffer while its ack clock runs).
/// While a handler runs, an in-progress ack every `ack_wait / 3` keeps JetStream from handing
/// its message to another worker. A message in hand when shutdown comes is finished.
pub async fn consume<H, Fut>(
    consumer: PullConsumer,
    ack_wait: Duration,
    slots: usize,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Verdict> + Send + 'static,
{
    let handler = Arc::new(handler);
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
        let (attempt, stream_sequence) = match message.info() {
            Ok(info) => (info.delivered.max(1) as u32, info.stream_sequence),
            Err(_) => (1, 0),
        };
        let span = tracing::info_span!("message", subject = %message.subject, seq = stream_sequence, attempt);
        let handler = handler.clone();
        tracker.spawn(
            async move {
                let _permit = permit;
                run_one(message, attempt, stream_sequence, ack_wait, handler).await;
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

async fn run_one<H, Fut>(
    message: Message,
    attempt: u32,
    stream_sequence: u64,
    ack_wait: Duration,
    handler: Arc<H>,
) where
    H: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Verdict> + Send + 'static,
{
    let acker = message.clone();
    let ticker = tokio::spawn(async move {
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "in-progress ack failed");
            }
        }
    });
    let reply = message.clone();
    let verdict = handler(Delivery {
        message,
        attempt,
        stream_sequence,
    })
    .await;
    ticker.abort();
    let sent = match &verdict {
        Verdict::Ack => reply.double_ack().await,
        Verdict::Retry(delay) => reply.ack_with(AckKind::Nak(Some(*delay))).await,
        Verdict::Term(reason) => {
            tracing::warn!(reason, "message terminated");
            reply.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = sent {
        // The message comes back after its ack wait; handlers are idempotent.
        tracing::warn!(error = %e, ?verdict, "acknowledgement not confirmed");
    }
}

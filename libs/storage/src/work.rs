//! Work: publishing work items, the durable consumers that take them, and the one way every dme
//! service handles them: one message at a time per slot, in-progress acks while the handler
//! runs, one mapping from a handler's result to a verdict (ack, retry later, give up), and a
//! clean stop on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, consumer, consumer::PullConsumer, AckKind, Message};
use bytes::Bytes;
use dme_protocol::messages::WorkItem;
use dme_protocol::streams::{self, Redelivery};
use dme_protocol::subjects;
use dme_protocol::{DecodeError, MusicId};
use dme_telemetry::metrics::{FailureReason, FAILURES, REDELIVERIES};
use futures::{StreamExt, TryStreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::{error_chain, nats, Result, Store};

/// How long one pull waits for a message before asking again (and noticing shutdown).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long after [`PULL_EXPIRES`] a pull stops waiting for the server's answer: long enough
/// that a message the server hands over at the last moment still arrives (one dropped would
/// wait out its ack wait), short enough that a request the server lost is soon asked again.
const PULL_SLACK: Duration = Duration::from_secs(1);
/// Pause after a failed pull (server restarting) before trying again.
const PULL_RETRY: Duration = Duration::from_millis(500);
/// Shortest interval between in-progress acks, whatever the ack wait: more often only loads the
/// server.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long a work publish is sent again while nobody answers for its stream: a 3-node
/// cluster elects a new leader for a stream whose leader's server went within seconds, longer
/// on a loaded machine.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(20);

/// The pause between two of those publishes.
const PUBLISH_PAUSE: Duration = Duration::from_millis(250);

/// The subject (its song's, [`subjects::work`]) and the message of work item `message` of
/// `kind`, with `msg_id` when given.
fn work_message<T: Serialize + WorkItem>(
    kind: &str,
    message: &T,
    msg_id: Option<&str>,
) -> (String, jetstream::message::PublishMessage) {
    let subject = match message.music_id() {
        Some(music) => subjects::work(kind, music),
        None => kind.to_string(),
    };
    let mut publish = jetstream::message::PublishMessage::build()
        .payload(Bytes::from(dme_protocol::encode(message)));
    if let Some(id) = msg_id {
        publish = publish.message_id(id);
    }
    (subject, publish)
}

impl Store {
    /// Publishes a work message of `kind` (a `WORK_*` subject, or a model's
    /// [`subjects::work_segment`]) and waits for JetStream to store it, on its song's subject
    /// ([`subjects::work`]). With `msg_id`, a second publish of the same id within
    /// [`streams::DUPLICATE_WINDOW`] is dropped by the server. While nobody answers for the
    /// stream (a cluster electing its leader after the leader's server went) it is sent again
    /// for up to [`PUBLISH_PATIENCE`]: not answered, it was not stored.
    ///
    /// # Errors
    /// On NATS failure (the message may or may not be stored; publishing again is safe with a
    /// `msg_id`).
    pub async fn publish<T: Serialize + WorkItem>(
        &self,
        kind: &str,
        message: &T,
        msg_id: Option<&str>,
    ) -> Result<()> {
        self.patiently(|| async {
            let (subject, publish) = work_message(kind, message, msg_id);
            self.js.send_publish(subject, publish).await?.await?;
            Ok(())
        })
        .await
    }

    /// Publishes the work messages `items` of `kind` (each with its message id, see
    /// [`Store::publish`]) pipelined: every publish is sent before any acknowledgement is
    /// awaited, so a batch costs about one round trip. Sent again as [`Store::publish`] is
    /// (the ids drop what was stored the first time).
    ///
    /// # Errors
    /// On NATS failure (some messages may be stored; publishing again is safe).
    pub async fn publish_batch<T: Serialize + WorkItem>(
        &self,
        kind: &str,
        items: &[T],
        msg_id: impl Fn(&T) -> String,
    ) -> Result<()> {
        self.patiently(|| async {
            let mut acks = Vec::with_capacity(items.len());
            for item in items {
                let (subject, publish) = work_message(kind, item, Some(&msg_id(item)));
                acks.push(self.js.send_publish(subject, publish).await?);
            }
            for ack in acks {
                ack.await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `publish` until it succeeds, fails otherwise than by nobody answering for the
    /// stream, or [`PUBLISH_PATIENCE`] has passed.
    async fn patiently<F, Fut>(&self, publish: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<(), PublishError>>,
    {
        let give_up = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        loop {
            match publish().await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound
                        && tokio::time::Instant::now() < give_up =>
                {
                    tracing::debug!(error = %e, "nobody answers for the work stream; publishing again");
                    tokio::time::sleep(PUBLISH_PAUSE).await;
                }
                Err(e) => return Err(nats("publish")(e)),
            }
        }
    }

    /// The durable work consumer `name` of work `kind` (a `WORK_*` subject, or a model's
    /// [`subjects::work_segment`]) for every song,
    /// created if missing, with `redelivery`'s settings (see [`Store::durable_consumer`]).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn work_consumer(
        &self,
        name: &str,
        kind: &str,
        redelivery: Redelivery,
    ) -> Result<PullConsumer> {
        let config = streams::work_consumer(name, &subjects::work_filter(kind), redelivery);
        self.durable_consumer(streams::WORK_STREAM, config).await
    }

    /// The durable consumer of [`streams::ADVISORY_STREAM`] ([`streams::MIXER_ADVISORY_CONSUMER`]),
    /// created if missing, with `redelivery`'s settings.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn advisory_consumer(&self, redelivery: Redelivery) -> Result<PullConsumer> {
        let subject = dme_protocol::subjects::max_deliveries_advisory(streams::WORK_STREAM, "*");
        let config = streams::work_consumer(streams::MIXER_ADVISORY_CONSUMER, &subject, redelivery);
        self.durable_consumer(streams::ADVISORY_STREAM, config)
            .await
    }

    /// The durable consumer `config` describes on `stream`: created if missing, and updated
    /// when it exists with other settings (a durable consumer keeps the settings it was created
    /// with, so a service started with another ack wait or delivery limit would otherwise
    /// silently work with the old ones). The last service to start wins; the change is logged.
    ///
    /// # Errors
    /// On NATS failure, or when the server refuses the update.
    pub async fn durable_consumer(
        &self,
        stream: &str,
        config: consumer::pull::Config,
    ) -> Result<PullConsumer> {
        let name = config.durable_name.clone().unwrap_or_default();
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(nats("get stream"))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(nats("declare consumer"))?;
        let changes = settings_drift(&consumer.cached_info().config, &config);
        if changes.is_empty() {
            return Ok(consumer);
        }
        tracing::info!(
            consumer = %name,
            changes = %changes.join(", "),
            "consumer settings differ from this service's: updating the consumer"
        );
        stream
            .update_consumer(config)
            .await
            .map_err(nats("update consumer"))
    }
}

impl Store {
    /// The payload of the work message at `sequence` of the work stream, while it is there
    /// (`None` once it was acked, terminated and removed, or purged).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn work_message(&self, sequence: u64) -> Result<Option<Bytes>> {
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(nats("get work message")(e)),
        }
    }

    /// How many work messages of `music` are in the queue, waiting or in a worker's hands.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn queued_work(&self, music: MusicId) -> Result<u64> {
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        let mut total = 0;
        for filter in subjects::song_work(music) {
            let mut counts = stream
                .info_with_subjects(filter)
                .await
                .map_err(nats("work stream subjects"))?;
            while let Some((_, count)) = counts
                .try_next()
                .await
                .map_err(nats("work stream subjects"))?
            {
                total += u64::try_from(count).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Removes every work message of `music` from the queue (the song was deleted).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn drop_work(&self, music: MusicId) -> Result<()> {
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        for filter in subjects::song_work(music) {
            stream
                .purge()
                .filter(filter)
                .await
                .map_err(nats("purge a song's work"))?;
        }
        Ok(())
    }

    /// Removes the work message at `sequence` from the queue; one that is gone already is no
    /// error.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete_work_message(&self, sequence: u64) -> Result<()> {
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        match stream.delete_message(sequence).await {
            Ok(_) => Ok(()),
            Err(e) if self.work_message(sequence).await?.is_none() => {
                tracing::debug!(error = %e, sequence, "work message gone before its deletion");
                Ok(())
            }
            Err(e) => Err(nats("delete work message")(e)),
        }
    }
}

/// The settings of a consumer on the server that differ from `wanted`, as `name: old -> new`.
pub fn settings_drift(current: &consumer::Config, wanted: &consumer::pull::Config) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |what: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{what}: {old} -> {new}"));
        }
    };
    compare(
        "ack_wait",
        format!("{:?}", current.ack_wait),
        format!("{:?}", wanted.ack_wait),
    );
    compare(
        "max_deliver",
        current.max_deliver.to_string(),
        wanted.max_deliver.to_string(),
    );
    compare(
        "max_ack_pending",
        current.max_ack_pending.to_string(),
        wanted.max_ack_pending.to_string(),
    );
    compare(
        "filter_subject",
        current.filter_subject.clone(),
        wanted.filter_subject.clone(),
    );
    compare(
        "description",
        current.description.clone().unwrap_or_default(),
        wanted.description.clone().unwrap_or_default(),
    );
    changes
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

/// Why handling a message failed: the handler said so, or it panicked.
#[derive(Debug, thiserror::Error)]
pub enum Failure<E> {
    /// The handler returned an error.
    #[error(transparent)]
    Handler(E),
    /// The handler panicked; the panic's message.
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// The handler's task was cancelled (the runtime is shutting down).
    #[error("the handler was cancelled")]
    Cancelled,
}

impl<E: HandlerError + 'static> HandlerError for Failure<E> {
    /// A panic is retried like a transient failure: another delivery (maybe on another worker)
    /// may not hit it, and one that always does is given up after the delivery limit.
    fn is_transient(&self) -> bool {
        match self {
            Failure::Handler(e) => e.is_transient(),
            Failure::Panicked(_) | Failure::Cancelled => true,
        }
    }
}

impl<E: HandlerError> Failure<E> {
    /// The `reason` label of this failure in [`FAILURES`].
    fn reason(&self) -> FailureReason {
        match self {
            Failure::Handler(e) if e.is_transient() => FailureReason::Transient,
            Failure::Handler(_) => FailureReason::Permanent,
            Failure::Panicked(_) => FailureReason::Panic,
            Failure::Cancelled => FailureReason::Cancelled,
        }
    }
}

/// Counts one failed attempt of `consumer` in [`FAILURES`].
fn count_failure(consumer: &str, reason: FailureReason) {
    metrics::counter!(FAILURES, "consumer" => consumer.to_string(), "reason" => reason.as_str())
        .increment(1);
}

impl<E> Failure<E> {
    /// The failure a handler task that did not finish stands for.
    fn of_join(error: tokio::task::JoinError) -> Failure<E> {
        if !error.is_panic() {
            return Failure::Cancelled;
        }
        let payload = error.into_panic();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Failure::Panicked(text)
    }
}

/// What a service does with the messages of one work subject.
pub trait Handler: Send + Sync + 'static {
    /// The message on the subject.
    type Message: DeserializeOwned + WorkItem + Clone + Send + Sync + 'static;
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

    /// Reads a message's payload: CBOR ([`dme_protocol::decode`]) unless the handler takes
    /// messages written by someone else (JetStream's JSON advisories).
    ///
    /// # Errors
    /// When the payload is not a `Self::Message`; the message is then terminated.
    fn decode(&self, payload: &[u8]) -> Result<Self::Message, DecodeError> {
        dme_protocol::decode(payload)
    }

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
/// cannot be decoded is terminated. A handler that panics is a failure like any other (see
/// [`Failure`]). Messages in hand when shutdown comes are finished.
pub async fn consume<H: Handler>(
    consumer: PullConsumer,
    redelivery: Redelivery,
    slots: usize,
    shutdown: CancellationToken,
    handler: Arc<H>,
) {
    let permits = Arc::new(Semaphore::new(slots.max(1)));
    let consumer_name = consumer.cached_info().name.clone();
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(permit) => permit,
                Err(_) => break, // never closed; if it were, no slot would ever free up
            },
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
        if delivery.attempt > 1 {
            metrics::counter!(REDELIVERIES, "consumer" => consumer_name.clone()).increment(1);
        }
        let span = tracing::info_span!(
            "message",
            subject = %message.subject,
            seq = delivery.stream_sequence,
            attempt = delivery.attempt,
            music = tracing::field::Empty,
            segment = tracing::field::Empty,
        );
        let handler = handler.clone();
        let consumer_name = consumer_name.clone();
        tracker.spawn(
            async move {
                let _permit = permit;
                run_one(message, delivery, redelivery, handler, &consumer_name).await;
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// Pulls one message, waiting up to [`PULL_EXPIRES`] for one (a long poll: `batch`, not
/// `fetch`, whose no-wait request the server answers at once when nothing is pending, so an
/// idle worker asked again and again, about a hundred times a second). The wait ends on this
/// side [`PULL_SLACK`] after the expiry at the latest: a request the server lost (it
/// restarted, or the client moved to another server of a cluster) is asked again then, not
/// when async-nats' own timer (5 s later) gives up on it. A pull that comes back empty long
/// before its expiry (a request refused, a subscription closed) waits [`PULL_RETRY`] before
/// the next, so nothing spins.
async fn pull_one(consumer: &PullConsumer) -> Option<Message> {
    let asked = std::time::Instant::now();
    let batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await;
    match batch {
        Ok(mut batch) => match tokio::time::timeout(PULL_EXPIRES + PULL_SLACK, batch.next())
            .await
            .unwrap_or(None)
        {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "pull failed");
                tokio::time::sleep(PULL_RETRY).await;
                None
            }
            None => {
                if asked.elapsed() < PULL_EXPIRES / 2 {
                    tokio::time::sleep(PULL_RETRY).await;
                }
                None
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "pull request failed");
            tokio::time::sleep(PULL_RETRY).await;
            None
        }
    }
}

/// Handles one message, keeping it in progress meanwhile, and sends its verdict. The handler
/// runs in a task of its own, so a panic in it is a failure like any other (retried, then given
/// up with the panic's message) and never leaves the message held without a verdict.
async fn run_one<H: Handler>(
    message: Message,
    delivery: Delivery,
    redelivery: Redelivery,
    handler: Arc<H>,
    consumer: &str,
) {
    let in_progress = keep_in_progress(message.clone(), redelivery.ack_wait);
    let verdict = match handler.decode(&message.payload) {
        Ok(work) => {
            let span = tracing::Span::current();
            if let Some(music) = work.music_id() {
                span.record("music", tracing::field::display(music));
            }
            if let Some(index) = work.segment_index() {
                span.record("segment", index);
            }
            let result = handle_in_task(&handler, &work, delivery).await;
            if let Err(failure) = &result {
                count_failure(consumer, failure.reason());
            }
            let max_deliver = redelivery.max_deliver.try_into().unwrap_or(u32::MAX);
            let verdict = verdict(&result, delivery.attempt, max_deliver, H::RETRY_DELAY);
            if let Verdict::Term(reason) = &verdict {
                give_up_in_task(&handler, &work, delivery, reason).await;
            }
            verdict
        }
        Err(e) => {
            count_failure(consumer, FailureReason::Undecodable);
            Verdict::Term(e.to_string())
        }
    };
    drop(in_progress);
    send(&message, &verdict).await;
}

/// Runs `handler.handle` in a task of its own (aborted if this future is dropped); a panic
/// comes back as [`Failure::Panicked`].
async fn handle_in_task<H: Handler>(
    handler: &Arc<H>,
    work: &H::Message,
    delivery: Delivery,
) -> Result<(), Failure<H::Error>> {
    let (handler, work) = (handler.clone(), work.clone());
    let task = AbortOnDropHandle::new(tokio::spawn(
        async move { handler.handle(&work, delivery).await }.in_current_span(),
    ));
    match task.await {
        Ok(result) => result.map_err(Failure::Handler),
        Err(e) => Err(Failure::of_join(e)),
    }
}

/// Runs `handler.give_up` in a task of its own; a panic there is logged (the message is
/// terminated all the same).
async fn give_up_in_task<H: Handler>(
    handler: &Arc<H>,
    work: &H::Message,
    delivery: Delivery,
    reason: &str,
) {
    let (handler, work, reason) = (handler.clone(), work.clone(), reason.to_string());
    let task = AbortOnDropHandle::new(tokio::spawn(
        async move { handler.give_up(&work, delivery, &reason).await }.in_current_span(),
    ));
    if let Err(e) = task.await {
        let failure = Failure::<std::convert::Infallible>::of_join(e);
        tracing::error!(error = %failure, "recording a given-up message failed");
    }
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

    #[tokio::test]
    async fn a_panic_is_a_retried_failure_with_its_message() {
        let task = tokio::spawn(async { panic!("index 7 out of range") });
        let failure = Failure::<Failed>::of_join(task.await.unwrap_err());
        let result: Result<(), _> = Err(failure);
        let delay = Duration::from_secs(1);
        assert_eq!(verdict(&result, 1, 3, delay), Verdict::Retry(delay));
        assert_eq!(
            verdict(&result, 3, 3, delay),
            Verdict::Term("the handler panicked: index 7 out of range".into())
        );
    }

    #[test]
    fn drift_names_each_changed_setting() {
        let wanted = streams::work_consumer(
            "separator-0123abcd",
            "dme.work.segment.0123abcd.*",
            Redelivery::SEPARATOR,
        );
        let mut current = consumer::Config {
            durable_name: wanted.durable_name.clone(),
            description: wanted.description.clone(),
            filter_subject: wanted.filter_subject.clone(),
            ack_wait: wanted.ack_wait,
            max_deliver: wanted.max_deliver,
            max_ack_pending: wanted.max_ack_pending,
            ..Default::default()
        };
        assert!(settings_drift(&current, &wanted).is_empty());
        current.ack_wait = Duration::from_secs(2);
        current.max_deliver = 3;
        assert_eq!(
            settings_drift(&current, &wanted),
            vec![
                "ack_wait: 2s -> 10s".to_string(),
                "max_deliver: 3 -> 5".to_string()
            ]
        );
    }
}

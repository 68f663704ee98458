//! Progress events ([`dme_protocol::streams::EVENT_STREAM`]): one subject per song, for live
//! views. Records are the truth; events are a convenience. Each event carries its song's whole
//! visible state and what changed since the song's previous event
//! ([`dme_protocol::messages::EventKind`]), so a reader can join at any event.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use dme_protocol::messages::ProgressEvent;
use dme_protocol::{streams, subjects, MusicId};
use futures::Stream;

use crate::{error_chain, jittered, nats, Result, Store, StoreError};

/// How long a progress event is compared again with its song's last event while others land
/// first, before it is published unchecked.
const RACE_PATIENCE: Duration = Duration::from_secs(3);

/// The first pause after a lost race; it doubles up to [`RACE_PAUSE_MAX`], each time a random
/// share of it, so racing publishers spread out.
const RACE_PAUSE: Duration = Duration::from_millis(2);

/// The longest of those pauses.
const RACE_PAUSE_MAX: Duration = Duration::from_millis(64);

/// Whether a conditional publish failed because another event of the subject landed first.
fn lost_race(e: &PublishError) -> bool {
    e.kind() == PublishErrorKind::WrongLastSequence || crate::wrote_first(e)
}

/// One progress event as the event stream keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProgress {
    /// Its sequence in the event stream: increasing over all songs, never reused (a purge keeps
    /// the counter), so a reader can resume after it.
    pub seq: u64,
    /// The event.
    pub event: ProgressEvent,
}

/// Which events the event stream holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    /// The oldest sequence still kept (`last + 1` when the stream is empty).
    pub first: u64,
    /// The latest sequence ever given to an event (0 before the first).
    pub last: u64,
}

impl EventBounds {
    /// Whether every event published after sequence `seq` is still kept: nothing after it was
    /// removed by age or a purge (both remove from the front), and it is not a sequence the
    /// stream never gave. (A song with more than `EVENTS_PER_SONG` events after `seq` keeps only
    /// its latest ones; each carries the song's whole state.)
    pub fn keeps_all_after(&self, seq: u64) -> bool {
        seq <= self.last && seq.saturating_add(1) >= self.first
    }
}

impl Store {
    /// Publishes `event` on its song's subject, with its `kind` set from the song's previous
    /// event (what changed since). Events are a convenience for live views (records are the
    /// truth), so a failure is logged, not returned.
    ///
    /// Publishers race on one song (the mixer's handlers of its segments, a selection, a
    /// failure), each with the record as it saw it. The publish is a compare-and-set on the
    /// song's subject: it lands only if the previous event is still the one it was compared
    /// with, else it is compared again with the one that landed, after a short random pause,
    /// for up to [`RACE_PATIENCE`]; then it is published unchecked (a change told twice rather
    /// than never), as it is when the previous event cannot be read. So each change is told
    /// once, and an event showing the song behind the one that landed first (a snapshot taken
    /// before it, [`ProgressEvent::is_behind`]: its stems, a mix or its failure undone) is not
    /// published.
    pub async fn publish_progress(&self, event: &ProgressEvent) {
        let subject = subjects::event(event.music_id);
        let give_up = tokio::time::Instant::now() + RACE_PATIENCE;
        let mut pause = RACE_PAUSE;
        loop {
            let checked = tokio::time::Instant::now() < give_up;
            let (previous, sequence) = match self.last_progress(&subject).await {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(error = %e, music_id = %event.music_id, "previous progress event not read");
                    (None, None)
                }
            };
            if previous.as_ref().is_some_and(|p| event.is_behind(p)) {
                tracing::debug!(music_id = %event.music_id, "progress event behind the song's last one; not published");
                return;
            }
            let mut event = event.clone();
            event.kind = event.kind_after(previous.as_ref());
            let message =
                PublishMessage::build().payload(Bytes::from(dme_protocol::encode(&event)));
            let message = match sequence.filter(|_| checked) {
                Some(sequence) => message.expected_last_subject_sequence(sequence),
                None => message,
            };
            // Waiting for the stream's ack orders this process's events: the next publish reads
            // this one as its previous.
            let stored = match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await.map(drop),
                Err(e) => Err(e),
            };
            match stored {
                Ok(()) => return,
                Err(e) if checked && lost_race(&e) => {
                    tokio::time::sleep(jittered(pause)).await;
                    pause = (pause * 2).min(RACE_PAUSE_MAX);
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), music_id = %event.music_id, "progress event not published");
                    return;
                }
            }
        }
    }

    /// Progress events to copy onto their JSON subjects, from the durable consumer every
    /// gateway shares ([`streams::API_EVENT_CONSUMER`]): each event goes to one gateway, one at
    /// a time, in order; the caller acks each once it is copied.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn progress_to_copy(&self) -> Result<async_nats::jetstream::consumer::pull::Stream> {
        let stream = self
            .js
            .get_stream_no_info(streams::EVENT_STREAM)
            .await
            .map_err(nats("get event stream"))?;
        let consumer = stream
            .get_or_create_consumer(streams::API_EVENT_CONSUMER, streams::api_event_consumer())
            .await
            .map_err(nats("declare the JSON event copier"))?;
        consumer
            .messages()
            .await
            .map_err(nats("read progress events to copy"))
    }

    /// The latest event on `subject` (an undecodable one counts as none) and its sequence in
    /// the stream (`Some(0)` when the subject has none).
    async fn last_progress(&self, subject: &str) -> Result<(Option<ProgressEvent>, Option<u64>)> {
        let stream = self
            .js
            .get_stream_no_info(streams::EVENT_STREAM)
            .await
            .map_err(nats("get event stream"))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok((
                dme_protocol::decode(&message.payload).ok(),
                Some(message.sequence),
            )),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((None, Some(0))),
            Err(e) => Err(nats("get last progress event")(e)),
        }
    }

    /// Which events the event stream holds now.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn event_bounds(&self) -> Result<EventBounds> {
        let stream = self
            .js
            .get_stream(streams::EVENT_STREAM)
            .await
            .map_err(nats("get event stream"))?;
        let state = &stream.cached_info().state;
        Ok(EventBounds {
            first: state.first_sequence,
            last: state.last_sequence,
        })
    }

    /// Follows the events of `music` (every song's when `None`) published after sequence
    /// `after`: those still kept, then each new one as it is published, in order, each once.
    /// An ordered consumer (ephemeral, in the server's memory, no acks) delivers them; it is
    /// removed when the returned feed is dropped (the server forgets it 30 s later).
    ///
    /// # Errors
    /// On NATS failure. The feed yields [`StoreError::Decode`] for an event it cannot read
    /// (skip it) and [`StoreError::Nats`] when it can go no further.
    pub async fn follow_progress(
        &self,
        music: Option<MusicId>,
        after: u64,
    ) -> Result<ProgressFeed> {
        let stream = self
            .js
            .get_stream_no_info(streams::EVENT_STREAM)
            .await
            .map_err(nats("get event stream"))?;
        let filter_subject = match music {
            Some(music) => subjects::event(music),
            None => subjects::EVENT_ALL.to_string(),
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                description: Some("dme: a reader of progress events".into()),
                filter_subject,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after.saturating_add(1),
                },
                ..Default::default()
            })
            .await
            .map_err(nats("create event reader"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(nats("read progress events"))?;
        Ok(ProgressFeed {
            messages,
            last: after,
        })
    }
}

/// Progress events in stream order, from [`Store::follow_progress`].
pub struct ProgressFeed {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    /// The latest sequence yielded: the ordered consumer restarts from the beginning when it is
    /// recreated before its first message (async-nats 0.46), so anything at or below it is a
    /// repeat and skipped.
    last: u64,
}

impl Stream for ProgressFeed {
    type Item = Result<StoredProgress>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let message = match Pin::new(&mut self.messages).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(nats("read progress events")(e))))
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            let seq = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    return Poll::Ready(Some(Err(StoreError::Nats {
                        op: "read a progress event's sequence",
                        source: e,
                    })))
                }
            };
            if seq <= self.last {
                continue;
            }
            self.last = seq;
            let event = dme_protocol::decode(&message.payload).map_err(StoreError::Decode);
            return Poll::Ready(Some(event.map(|event| StoredProgress { seq, event })));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventBounds;

    #[test]
    fn a_reader_resumes_only_where_nothing_after_it_is_gone() {
        let kept = EventBounds { first: 5, last: 9 };
        assert!(kept.keeps_all_after(4), "the one before the oldest kept");
        assert!(kept.keeps_all_after(9), "the latest");
        assert!(!kept.keeps_all_after(3), "event 4 is gone");
        assert!(!kept.keeps_all_after(10), "never given");
        let purged = EventBounds { first: 10, last: 9 };
        assert!(purged.keeps_all_after(9));
        assert!(!purged.keeps_all_after(8));
        let empty = EventBounds { first: 1, last: 0 };
        assert!(empty.keeps_all_after(0));
    }
}

//! One song's live events (`GET /music/{id}/events`): the Server-Sent Events format parsed as
//! the HTML standard says, and a stream that resumes after a drop with `Last-Event-ID`, so no
//! event is missed while the connection is down.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;

use super::client::{CliError, Client, EVENTS_SILENCE};

/// Reconnections tried in a row before the server is taken as gone: with the back-off below,
/// about half a minute, which rides out a gateway restart.
const MAX_RECONNECTS: u32 = 6;

/// Wait before the first reconnection; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The longest line, and the most data one event may gather, in bytes: an event of dme is a
/// song's state, a few KB even with many stems; a stream that goes past this without ending its
/// line or its event is broken (or hostile), and buffering more would only exhaust memory.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// A stream the decoder gave up on: a line, or an event's data, longer than
/// [`MAX_EVENT_BYTES`]. The stream is to be dropped (and reopened) with its decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a line or event of more than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLong;

/// One event as sent: its id (when it has one), its type and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The last `id:` seen on the stream (it carries over to later events, as the format says).
    pub id: Option<String>,
    /// `event:`, or `message` when none was given.
    pub kind: String,
    /// Every `data:` line, joined with newlines.
    pub data: String,
}

/// An incremental Server-Sent Events parser: bytes in, whole events out.
#[derive(Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    after_cr: bool,
    last_id: Option<String>,
    kind: String,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// Feeds `chunk`; answers the events it completes (an event ends at a blank line).
    ///
    /// # Errors
    /// [`EventTooLong`] when a line, or an event's data, passes [`MAX_EVENT_BYTES`]; the
    /// decoder is then of no further use (its stream is broken).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<RawEvent>, EventTooLong> {
        let mut out = Vec::new();
        for &b in chunk {
            // A line ends at CR, LF or CRLF; the LF of a CRLF split across chunks is skipped.
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                    out.push(event);
                }
                if self.data.len() > MAX_EVENT_BYTES {
                    return Err(EventTooLong);
                }
            } else if self.line.len() >= MAX_EVENT_BYTES {
                return Err(EventTooLong);
            } else {
                self.line.push(b);
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &str) -> Option<RawEvent> {
        if line.is_empty() {
            let kind = std::mem::take(&mut self.kind);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(RawEvent {
                id: self.last_id.clone(),
                kind: if kind.is_empty() {
                    "message".into()
                } else {
                    kind
                },
                data: data.strip_suffix('\n').unwrap_or(&data).to_string(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.kind = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// A dme event: its sequence, its kind (`progress`, `stem`, `mix`, `failed`) and the song's
/// state as JSON, shaped like `GET /music/{id}`.
#[derive(Debug, Clone)]
pub struct SongEvent {
    /// What changed.
    pub kind: String,
    /// The song's state.
    pub data: Value,
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The live events of one song, reconnecting when the stream drops.
pub struct SongEvents {
    client: Client,
    music_id: u64,
    last_seq: Option<u64>,
    body: Option<Body>,
    decoder: SseDecoder,
    pending: VecDeque<SongEvent>,
    failures: u32,
}

impl SongEvents {
    /// The events of song `music_id`; the first is its state now.
    pub fn new(client: Client, music_id: u64) -> SongEvents {
        SongEvents {
            client,
            music_id,
            last_seq: None,
            body: None,
            decoder: SseDecoder::default(),
            pending: VecDeque::new(),
            failures: 0,
        }
    }

    /// The next event.
    ///
    /// # Errors
    /// What the server answers when the stream cannot be opened (a 4xx, say the song was
    /// deleted); [`CliError::Unreachable`] after [`MAX_RECONNECTS`] failed reconnections in a
    /// row; [`CliError::Server`] for an event that is not JSON.
    pub async fn next(&mut self) -> Result<SongEvent, CliError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let Some(body) = self.body.as_mut() else {
                match self.client.events(self.music_id, self.last_seq).await {
                    Ok(response) => {
                        self.body = Some(Box::pin(response.bytes_stream()));
                        self.decoder = SseDecoder::default();
                    }
                    Err(e @ (CliError::Unreachable { .. } | CliError::Server { .. })) => {
                        self.back_off(e).await?
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            let what = format!("GET /music/{}/events", self.music_id);
            // A stream silent past the gateway's keep-alives is dead: reopened like a broken one.
            match self.client.next_chunk(&what, body, EVENTS_SILENCE).await {
                Ok(Some(chunk)) => match self.decoder.feed(&chunk) {
                    Ok(events) => {
                        self.failures = 0;
                        for raw in events {
                            let event = self.parse(raw)?;
                            self.pending.push_back(event);
                        }
                    }
                    // Events completed in this chunk are dropped with it: the reconnection
                    // resumes after the last one handed out, so they come again.
                    Err(too_long) => {
                        self.body = None;
                        let broken = CliError::Server {
                            what: what.clone(),
                            status: 200,
                            message: format!("the event stream is broken: {too_long}"),
                        };
                        self.back_off(broken).await?;
                    }
                },
                Ok(None) => {
                    self.body = None;
                    let ended = CliError::Unreachable {
                        url: self.client.base().to_string(),
                        cause: format!("{what}: the server ended the stream"),
                    };
                    self.back_off(ended).await?;
                }
                Err(e) => {
                    self.body = None;
                    self.back_off(e).await?;
                }
            }
        }
    }

    /// Waits before the next reconnection, or gives up with `e` when they are spent.
    async fn back_off(&mut self, e: CliError) -> Result<(), CliError> {
        self.failures += 1;
        if self.failures > MAX_RECONNECTS {
            return Err(e);
        }
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(MAX_BACKOFF);
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn parse(&mut self, raw: RawEvent) -> Result<SongEvent, CliError> {
        if let Some(seq) = raw.id.as_deref().and_then(|id| id.trim().parse().ok()) {
            self.last_seq = Some(seq);
        }
        let data = serde_json::from_str(&raw.data).map_err(|e| CliError::Server {
            what: format!("GET /music/{}/events", self.music_id),
            status: 200,
            message: format!("an event that is not JSON ({e}): {:.200}", raw.data),
        })?;
        Ok(SongEvent {
            kind: raw.kind,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&str]) -> Vec<RawEvent> {
        let mut decoder = SseDecoder::default();
        chunks
            .iter()
            .flat_map(|c| decoder.feed(c.as_bytes()).expect("short lines"))
            .collect()
    }

    fn event(id: Option<&str>, kind: &str, data: &str) -> RawEvent {
        RawEvent {
            id: id.map(str::to_string),
            kind: kind.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_end_at_a_blank_line_whatever_the_chunks() {
        let stream =
            "id: 7\nevent: progress\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: mix\ndata: x\n\n";
        let whole = all(&[stream]);
        assert_eq!(
            whole,
            [
                event(Some("7"), "progress", "{\"a\":1}"),
                // The id carries over to an event without one.
                event(Some("7"), "mix", "x"),
            ]
        );
        // Cut anywhere, byte by byte: the same events.
        let bytes: Vec<String> = stream.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(all(&refs), whole);
    }

    #[test]
    fn line_ends_data_lines_and_odd_fields_follow_the_format() {
        assert_eq!(
            all(&["data:a\r\ndata: b\r", "\n\r\nid\ndata\n\n"]),
            [
                event(None, "message", "a\nb"),
                event(Some(""), "message", "")
            ]
        );
        // No data: nothing is dispatched, and the type does not leak into the next event.
        assert_eq!(
            all(&["event: x\n\ndata: y\n\n"]),
            [event(None, "message", "y")]
        );
        // Unknown fields and `retry` are ignored; an id with NUL is ignored.
        assert_eq!(
            all(&["retry: 10\nfoo: bar\nid: a\0b\ndata: z\n\n"]),
            [event(None, "message", "z")]
        );
        // An event the stream did not finish is not dispatched.
        assert!(all(&["data: partial\n"]).is_empty());
    }

    #[test]
    fn a_line_or_an_event_past_the_cap_breaks_the_stream() {
        // A line with no end: refused once it passes the cap, whatever the chunks.
        let mut decoder = SseDecoder::default();
        let chunk = vec![b'a'; 64 * 1024];
        let fed = (0..MAX_EVENT_BYTES / chunk.len() + 1).try_for_each(|_| {
            decoder
                .feed(&chunk)
                .map(|events| assert!(events.is_empty()))
        });
        assert_eq!(fed, Err(EventTooLong));
        assert!(
            decoder.line.len() <= MAX_EVENT_BYTES,
            "the buffer stays capped"
        );

        // Short data lines with no blank line between: refused once the event passes the cap.
        let mut decoder = SseDecoder::default();
        let line = format!("data: {}\n", "b".repeat(1000));
        let fed = (0..MAX_EVENT_BYTES / 1000 + 2).try_for_each(|_| {
            decoder
                .feed(line.as_bytes())
                .map(|events| assert!(events.is_empty()))
        });
        assert_eq!(fed, Err(EventTooLong));
        assert!(decoder.data.len() <= MAX_EVENT_BYTES + line.len());

        // A line just under the cap is taken, and the event it makes is whole.
        let mut decoder = SseDecoder::default();
        let data = "c".repeat(MAX_EVENT_BYTES - "data: ".len() - 1);
        let events = decoder
            .feed(format!("data: {data}\n\n").as_bytes())
            .expect("within the cap");
        assert_eq!(events, [event(None, "message", &data)]);
    }
}

//! The gateway's HTTP API as the CLI uses it, and every way a command can fail, each with the
//! exit code that says whose fault it is.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

/// The gateway `dme up` serves on this machine.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How long a connection may take to open: a reachable gateway accepts at once, and 10 s covers
/// a slow remote link; beyond it the server is taken as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a JSON answer may take: the gateway answers in milliseconds; this only guards
/// against a server that accepted the connection and then hangs (a reset of a large store takes
/// seconds, never a minute).
const JSON_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a download may send nothing before its connection is taken as dead: the gateway
/// encodes a file on first request while it streams, and sends within seconds.
const BODY_SILENCE: Duration = Duration::from_secs(120);

/// How long an event stream may send nothing before it is taken as dead and reopened (with
/// `Last-Event-ID`, so no event is missed): the gateway sends a `: keep-alive` comment every
/// 15 s by default, so three missed in a row mean the connection is gone.
pub const EVENTS_SILENCE: Duration = Duration::from_secs(45);

/// How long the head of an answer whose body has no overall time limit (an event stream, a
/// download) may take: the gateway sends those heads at once and streams the body after; a
/// server that accepted the connection and stays silent this long is not answering.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of an error answer's body read: the gateway's errors are a JSON object of a few
/// hundred bytes, and only the start of anything else is quoted.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How long an error answer's body may take to arrive: the gateway sends its few bytes with the
/// head; past this the message is made of what came, so a server that sends an error's head
/// and then stalls cannot hang the CLI.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest piece of a non-JSON error body quoted in a message.
const MAX_QUOTED_BODY_CHARS: usize = 200;

/// How a command ended badly, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Bad input: usage, an unreadable file, an unknown stem, a request the server refused (4xx).
    BadInput = 2,
    /// The server failed: a 5xx answer, a song whose separation failed.
    ServerFailed = 3,
    /// The server could not be reached, or stopped answering.
    Unreachable = 4,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// A local file or folder could not be read or written.
    #[error("{path}: {source}")]
    Local {
        /// The file or folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the request (4xx other than 429).
    #[error("{what}: refused by the server ({status}): {message}")]
    Refused {
        /// The request, for people.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The server's reason.
        message: String,
    },
    /// The server has too much work from this client just now (429); it may be retried later.
    #[error("{what}: the server is busy (429): {message}")]
    Busy {
        /// The request, for people.
        what: String,
        /// The server's reason.
        message: String,
        /// Seconds the server asked to wait (`Retry-After`).
        retry_after_s: Option<u64>,
    },
    /// The server failed to answer the request (5xx), or answered something unreadable.
    #[error("{what}: the server failed ({status}): {message}")]
    Server {
        /// The request, for people.
        what: String,
        /// The HTTP status (0 when the answer itself was unreadable).
        status: u16,
        /// The server's reason.
        message: String,
    },
    /// A song's separation failed on the server.
    #[error("song {music_id} failed on the server: {error}")]
    SongFailed {
        /// The song.
        music_id: u64,
        /// The song's `error`.
        error: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot connect to {url}: {cause}")]
    Unreachable {
        /// The gateway.
        url: String,
        /// The transport error, with its causes.
        cause: String,
    },
    /// Failures already told to the user one by one; only the exit code is left to give.
    #[error("")]
    Reported(Exit),
}

impl CliError {
    /// The exit code for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_)
            | CliError::Local { .. }
            | CliError::Refused { .. }
            | CliError::Busy { .. } => Exit::BadInput,
            CliError::Server { .. } | CliError::SongFailed { .. } => Exit::ServerFailed,
            CliError::Unreachable { .. } => Exit::Unreachable,
            CliError::Reported(exit) => *exit,
        }
    }

    /// A local I/O failure on `path`.
    pub fn local(path: &Path, source: std::io::Error) -> CliError {
        CliError::Local {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A client of one gateway.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Whether requests carry an API token (`--token`, `DME_TOKEN`), so a 401 can say what to
    /// do.
    token: bool,
}

impl Client {
    /// A client of the gateway at `url` (`http://host:port`, optionally with a path prefix).
    ///
    /// # Errors
    /// [`CliError::Usage`] when `url` is not an http or https URL.
    pub fn new(url: &str) -> Result<Client, CliError> {
        let base = url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| CliError::Usage(format!("--url {url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(CliError::Usage(format!(
                "--url {url:?} must be an http:// or https:// URL with a host"
            )));
        }
        let http = Self::http(HeaderMap::new())?;
        Ok(Client {
            http,
            base,
            token: false,
        })
    }

    /// This client, sending `token` (when given) as `Authorization: Bearer` on every request,
    /// event streams and downloads included (a header, never the URL, so it stays out of
    /// server logs).
    ///
    /// # Errors
    /// [`CliError::Usage`] for an empty token or one that cannot be sent in a header.
    pub fn with_token(self, token: Option<&str>) -> Result<Client, CliError> {
        let Some(token) = token else {
            return Ok(self);
        };
        let token = token.trim();
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "the token (--token or DME_TOKEN) must be visible ASCII characters".into(),
                )
            })?;
        // Kept out of reqwest's debug output.
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        Ok(Client {
            http: Self::http(headers)?,
            base: self.base,
            token: true,
        })
    }

    fn http(headers: HeaderMap) -> Result<reqwest::Client, CliError> {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("dme-cli/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| CliError::Usage(format!("cannot make an HTTP client: {e}")))
    }

    /// The gateway's URL, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET <path>`, answered with JSON.
    ///
    /// # Errors
    /// As [`Client::send`], and [`CliError::Server`] for an answer that is not JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        self.json(Method::GET, path, None).await
    }

    /// `POST <path>` with a JSON body (or none), answered with JSON.
    ///
    /// # Errors
    /// As [`Client::get_json`].
    pub async fn post_json(&self, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        self.json(Method::POST, path, body).await
    }

    /// `DELETE <path>`, answered with JSON.
    ///
    /// # Errors
    /// As [`Client::get_json`].
    pub async fn delete_json(&self, path: &str) -> Result<Value, CliError> {
        self.json(Method::DELETE, path, None).await
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let what = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, self.url(path))
            .timeout(JSON_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(&what, request).await?;
        self.read_json(&what, response).await
    }

    async fn read_json(&self, what: &str, response: Response) -> Result<Value, CliError> {
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport(what, e))?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::Server {
            what: what.to_string(),
            status,
            message: format!("the answer is not JSON ({e}): {}", quote(&bytes)),
        })
    }

    /// Sends `request`; a 2xx answer is returned, anything else is the error it means (of an
    /// error's body, at most [`MAX_ERROR_BODY_BYTES`] read within [`ERROR_BODY_TIMEOUT`]).
    ///
    /// # Errors
    /// [`CliError::Unreachable`] when no answer comes; [`CliError::Busy`] for 429;
    /// [`CliError::Refused`] for another 4xx; [`CliError::Server`] for the rest.
    pub async fn send(&self, what: &str, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| self.transport(what, e))?;
        self.answer(what, response).await
    }

    /// As [`Client::send`], for a request with no overall time limit: its answer's head must
    /// come within [`HEAD_TIMEOUT`].
    ///
    /// # Errors
    /// As [`Client::send`]; [`CliError::Unreachable`] when no head comes in time.
    async fn send_head_within(
        &self,
        what: &str,
        request: RequestBuilder,
    ) -> Result<Response, CliError> {
        let response = tokio::time::timeout(HEAD_TIMEOUT, request.send())
            .await
            .map_err(|_| CliError::Unreachable {
                url: self.base.clone(),
                cause: format!("{what}: no answer came for {} s", HEAD_TIMEOUT.as_secs()),
            })?
            .map_err(|e| self.transport(what, e))?;
        self.answer(what, response).await
    }

    /// A 2xx `response` as it is, anything else as the error it means.
    async fn answer(&self, what: &str, response: Response) -> Result<Response, CliError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after_s = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = read_capped(
            response.bytes_stream(),
            MAX_ERROR_BODY_BYTES,
            ERROR_BODY_TIMEOUT,
        )
        .await;
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| {
                let reason = status.canonical_reason().unwrap_or("no reason given");
                if bytes.is_empty() {
                    reason.to_string()
                } else {
                    format!("{reason}: {}", quote(&bytes))
                }
            });
        let what = what.to_string();
        let message = if status == StatusCode::UNAUTHORIZED {
            let hint = if self.token {
                "the token given (--token or DME_TOKEN) was refused"
            } else {
                "this server needs an API token: pass --token or set DME_TOKEN"
            };
            format!("{message} ({hint})")
        } else {
            message
        };
        Err(if status == StatusCode::TOO_MANY_REQUESTS {
            CliError::Busy {
                what,
                message,
                retry_after_s,
            }
        } else if status.is_client_error() {
            CliError::Refused {
                what,
                status: status.as_u16(),
                message,
            }
        } else {
            CliError::Server {
                what,
                status: status.as_u16(),
                message,
            }
        })
    }

    /// A transport failure: no connection, or one that broke.
    fn transport(&self, what: &str, e: reqwest::Error) -> CliError {
        if e.is_decode() {
            return CliError::Server {
                what: what.to_string(),
                status: e.status().map_or(0, |s| s.as_u16()),
                message: causes(&e),
            };
        }
        CliError::Unreachable {
            url: self.base.clone(),
            cause: format!("{what}: {}", causes(&e)),
        }
    }

    /// `POST /music?name=<name>` with the file at `path` (`size` bytes) as the raw body,
    /// streamed from disk; `sent` is told the bytes as they go. Answers the song.
    ///
    /// # Errors
    /// [`CliError::Local`] when the file cannot be opened; as [`Client::send`] otherwise.
    pub async fn upload(
        &self,
        path: &Path,
        name: &str,
        size: u64,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Value, CliError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| CliError::local(path, e))?;
        let body = ReaderStream::new(file).inspect_ok(move |chunk| sent(chunk.len() as u64));
        let request = self
            .http
            .post(self.url("/music"))
            .query(&[("name", name)])
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        let what = "POST /music";
        let response = self.send(what, request).await?;
        self.read_json(what, response).await
    }

    /// `GET <url>` (a link the API handed out) into the file `dest`, written as `dest.part`
    /// and renamed when whole, so an interrupted download never looks finished. Answers the
    /// bytes written.
    ///
    /// # Errors
    /// [`CliError::Local`] when the file cannot be written; as [`Client::send`] otherwise,
    /// and [`CliError::Unreachable`] when no head comes within [`HEAD_TIMEOUT`] or the body
    /// stops for [`BODY_SILENCE`].
    pub async fn download(&self, url: &str, dest: &Path) -> Result<u64, CliError> {
        let what = format!("GET {url}");
        let response = self.send_head_within(&what, self.http.get(url)).await?;
        let part = dest.with_extension(match dest.extension() {
            Some(ext) => format!("{}.part", ext.to_string_lossy()),
            None => "part".into(),
        });
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| CliError::local(&part, e))?;
        let mut body = response.bytes_stream();
        let mut written = 0u64;
        let result = async {
            while let Some(chunk) = self.next_chunk(&what, &mut body, BODY_SILENCE).await? {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| CliError::local(&part, e))?;
                written += chunk.len() as u64;
            }
            file.flush().await.map_err(|e| CliError::local(&part, e))?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| CliError::local(dest, e))?;
        Ok(written)
    }

    /// The next piece of a streamed body; `None` at its end.
    ///
    /// # Errors
    /// [`CliError::Unreachable`] when the connection breaks or is silent for `silence`.
    pub async fn next_chunk<S>(
        &self,
        what: &str,
        body: &mut S,
        silence: Duration,
    ) -> Result<Option<Bytes>, CliError>
    where
        S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        match tokio::time::timeout(silence, body.next()).await {
            Ok(None) => Ok(None),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(e))) => Err(self.transport(what, e)),
            Err(_) => Err(CliError::Unreachable {
                url: self.base.clone(),
                cause: format!("{what}: nothing came for {} s", silence.as_secs()),
            }),
        }
    }

    /// `GET /music/{id}/events`, resuming after event `last` when given: the open stream (read
    /// it with [`Client::next_chunk`] and [`EVENTS_SILENCE`]).
    ///
    /// # Errors
    /// As [`Client::send`]; [`CliError::Unreachable`] when no head comes within
    /// [`HEAD_TIMEOUT`].
    pub async fn events(&self, music_id: u64, last: Option<u64>) -> Result<Response, CliError> {
        let path = format!("/music/{music_id}/events");
        let mut request = self
            .http
            .get(self.url(&path))
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        self.send_head_within(&format!("GET {path}"), request).await
    }
}

/// The start of a body: at most `max` bytes, and what came within `within` (an error's body is
/// only quoted, so a cut one is as good as a whole one; a broken one reads as what came).
async fn read_capped<S>(mut body: S, max: usize, within: Duration) -> Bytes
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    let mut out = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            let room = max - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= max {
                break;
            }
        }
    };
    // Out of time: what came is the body.
    let _ = tokio::time::timeout(within, read).await;
    Bytes::from(out)
}

/// A reqwest error and its causes, each once: "error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)".
fn causes(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // The top level repeats the URL, which the message gives already.
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

/// The start of a body, for a message.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_BODY_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_error_body_is_read_only_so_far_and_so_long() {
        let chunk = || Ok(Bytes::from(vec![b'x'; 40 * 1024]));
        // Past the cap: cut there, the rest never read.
        let long = futures::stream::iter([chunk(), chunk(), chunk()]);
        let read = read_capped(long, MAX_ERROR_BODY_BYTES, ERROR_BODY_TIMEOUT).await;
        assert_eq!(read.len(), MAX_ERROR_BODY_BYTES);
        // A body that stalls: what came before it.
        let stalled = futures::stream::iter([chunk()]).chain(futures::stream::pending());
        let read = read_capped(stalled, MAX_ERROR_BODY_BYTES, Duration::from_millis(50)).await;
        assert_eq!(read.len(), 40 * 1024);
    }
}

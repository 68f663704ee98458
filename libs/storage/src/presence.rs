//! Presence: every dme worker is a NATS micro service, so `nats micro ls` shows the fleet and
//! anyone on the bus can find it (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`).
//!
//! Each process registers one instance ([`Presence::start`]) under its service's name
//! ([`subjects::SERVICE_SEPARATOR`], ...), with metadata (host, pid, worker id, model) and one
//! endpoint, `status` on [`subjects::status`], which answers the instance's live status as JSON;
//! the stats handler returns the same JSON as the endpoint's `data`, so `nats micro stats`
//! shows it too. [`discover`] gathers every dme instance's info and stats for a short window
//! (the gateway's `GET /workers`). [`Tally`] and [`Tallied`] count a handler's work for the
//! status.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use async_nats::Client;
use bytes::Bytes;
use dme_protocol::{subjects, DecodeError};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio_util::task::AbortOnDropHandle;

use crate::work::{Delivery, Handler};
use crate::{Result, StoreError};

/// The version every dme micro service announces: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Prefix of every dme micro service's name: discovery keeps only these.
const DME_SERVICE_PREFIX: &str = "dme-";

/// Name of each instance's status endpoint (`nats micro info` lists it so).
pub const STATUS_ENDPOINT: &str = "status";

/// A service's live status, as JSON: what the `status` endpoint answers and the stats' `data`.
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

fn micro_error(op: &'static str) -> impl FnOnce(async_nats::Error) -> StoreError {
    move |source| StoreError::Nats { op, source }
}

/// One registered micro-service instance; its `status` endpoint answers while it lives.
pub struct Presence {
    service: async_nats::service::Service,
    id: String,
    _status: AbortOnDropHandle<()>,
}

impl Presence {
    /// Registers an instance of micro service `name` (a `SERVICE_*` constant) on `client` with
    /// `description` and `metadata`, answering `status()` on its status endpoint and in its
    /// stats.
    ///
    /// # Errors
    /// When NATS refuses the subscriptions, or `name` is not a valid micro-service name.
    pub async fn start(
        client: &Client,
        name: &str,
        description: &str,
        metadata: HashMap<String, String>,
        status: StatusFn,
    ) -> Result<Presence> {
        let for_stats = status.clone();
        let service = client
            .service_builder()
            .description(description)
            .metadata(metadata)
            .stats_handler(move |_endpoint, _stats| for_stats())
            .start(name, VERSION)
            .await
            .map_err(micro_error("start micro service"))?;
        let id = service.info().await.id;
        let mut endpoint = service
            .endpoint_builder()
            .name(STATUS_ENDPOINT)
            .add(subjects::status(name, &id))
            .await
            .map_err(micro_error("add status endpoint"))?;
        let task = tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                // Only to an inbox: an answer goes out with this service's rights.
                if !subjects::answerable(request.message.reply.as_deref()) {
                    continue;
                }
                let body = Bytes::from(status().to_string());
                if let Err(e) = request.respond(Ok(body)).await {
                    tracing::debug!(error = %e, "status answer not sent");
                }
            }
        });
        tracing::info!(service = name, id, "registered as a NATS micro service");
        Ok(Presence {
            service,
            id,
            _status: AbortOnDropHandle::new(task),
        })
    }

    /// This instance's id (unique on the bus; in `nats micro ls`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Leaves the bus: the instance no longer answers discovery or status requests.
    pub async fn stop(self) {
        if let Err(e) = self.service.stop().await {
            tracing::debug!(error = %e, "micro service stop");
        }
    }
}

/// Metadata every dme instance carries: its host and process id, and the address of its
/// metrics listener when it has one; `extra` adds the service's own.
pub fn metadata(
    metrics: Option<std::net::SocketAddr>,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut out = HashMap::from([
        ("host".to_string(), host),
        ("pid".to_string(), std::process::id().to_string()),
    ]);
    if let Some(addr) = metrics {
        out.insert("metrics".into(), addr.to_string());
    }
    out.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    out
}

/// The status of a worker whose work is counted by one [`Tally`] (the splitter, the mixer):
/// messages handled, failed attempts, messages in hand.
pub fn tally_status(tally: Arc<Tally>) -> StatusFn {
    Arc::new(move || {
        let counts = tally.counts();
        serde_json::json!({
            "messages_handled": counts.done,
            "failures": counts.failures,
            "in_hand": counts.in_hand,
        })
    })
}

/// A readiness check: true while `client` is connected to NATS.
pub fn connected(client: &Client) -> impl Fn() -> bool + Send + Sync + 'static {
    let client = client.clone();
    move || client.connection_state() == async_nats::connection::State::Connected
}

/// Counts a worker's work for its status: messages done, failed attempts, messages in hand, and
/// the time of timed operations (a separator's inferences). Lock-free; shared by clones of its
/// `Arc`.
#[derive(Debug, Default)]
pub struct Tally {
    done: AtomicU64,
    failures: AtomicU64,
    in_hand: AtomicU64,
    timed: AtomicU64,
    timed_nanos: AtomicU64,
}

/// A [`Tally`] as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TallyCounts {
    /// Messages done.
    pub done: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Messages being handled now.
    pub in_hand: u64,
    /// Mean time of the timed operations in milliseconds (`None` before the first).
    pub mean_ms: Option<f64>,
}

impl Tally {
    /// One more message done.
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// One more failed attempt.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One more message in hand until the returned guard is dropped (however the handling
    /// ends: an error, a panic).
    pub fn begin(&self) -> InHand<'_> {
        self.in_hand.fetch_add(1, Ordering::Relaxed);
        InHand(self)
    }

    /// One operation that took `took`.
    pub fn timed(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.timed_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.timed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> TallyCounts {
        let timed = self.timed.load(Ordering::Relaxed);
        let nanos = self.timed_nanos.load(Ordering::Relaxed);
        TallyCounts {
            done: self.done.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            in_hand: self.in_hand.load(Ordering::Relaxed),
            mean_ms: (timed > 0).then(|| nanos as f64 / timed as f64 / 1e6),
        }
    }
}

/// A [`Handler`] that counts `inner`'s results in a [`Tally`]: each `Ok` done, each error a
/// failure, and the messages in hand meanwhile.
pub struct Tallied<H> {
    inner: Arc<H>,
    tally: Arc<Tally>,
}

impl<H> Tallied<H> {
    /// `inner`, counted in `tally`.
    pub fn new(inner: Arc<H>, tally: Arc<Tally>) -> Tallied<H> {
        Tallied { inner, tally }
    }
}

/// A message in hand ([`Tally::begin`]); counted until dropped.
pub struct InHand<'a>(&'a Tally);

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.0.in_hand.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<H: Handler> Handler for Tallied<H> {
    type Message = H::Message;
    type Error = H::Error;
    const RETRY_DELAY: Duration = H::RETRY_DELAY;

    async fn handle(&self, message: &H::Message, delivery: Delivery) -> Result<(), H::Error> {
        let _in_hand = self.tally.begin();
        let result = self.inner.handle(message, delivery).await;
        match &result {
            Ok(()) => self.tally.done(),
            Err(_) => self.tally.failed(),
        }
        result
    }

    fn decode(&self, payload: &[u8]) -> Result<H::Message, DecodeError> {
        self.inner.decode(payload)
    }

    async fn give_up(&self, message: &H::Message, delivery: Delivery, reason: &str) {
        self.inner.give_up(message, delivery, reason).await;
    }
}

/// One dme micro-service instance on the bus, from its `$SRV.INFO` and `$SRV.STATS` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    /// The service's role: its name without the `dme-` prefix (`separator`, `splitter`,
    /// `mixer`, `api`).
    pub service: String,
    /// The micro-service name (`dme-separator`).
    pub name: String,
    /// The instance's id.
    pub id: String,
    /// Its version.
    pub version: String,
    /// Its description.
    pub description: String,
    /// Its metadata (host, pid, worker, model, metrics address).
    pub metadata: BTreeMap<String, String>,
    /// When it started (RFC 3339), from its stats.
    pub started: Option<String>,
    /// Its endpoints' subjects.
    pub endpoints: Vec<String>,
    /// Its status: the `data` of its status endpoint; for a service without one (the gateway's
    /// `dme-api`), its requests and errors summed over its endpoints.
    pub stats: Value,
}

/// Every dme micro-service instance that answers `$SRV.INFO` within `window`, with the stats it
/// answers `$SRV.STATS` within the same window, sorted by service, then id. An instance whose
/// stats came too late has `null` stats.
///
/// # Errors
/// On NATS failure.
pub async fn discover(client: &Client, window: Duration) -> Result<Vec<Instance>> {
    let info_inbox = client.new_inbox();
    let stats_inbox = client.new_inbox();
    let sub = |op| micro_error(op);
    let infos = client
        .subscribe(info_inbox.clone())
        .await
        .map_err(|e| sub("subscribe to discovery answers")(Box::new(e)))?;
    let stats = client
        .subscribe(stats_inbox.clone())
        .await
        .map_err(|e| sub("subscribe to discovery answers")(Box::new(e)))?;
    for (subject, inbox) in [
        (subjects::SERVICE_INFO, info_inbox),
        (subjects::SERVICE_STATS, stats_inbox),
    ] {
        client
            .publish_with_reply(subject, inbox, Bytes::new())
            .await
            .map_err(|e| sub("ask for micro services")(Box::new(e)))?;
    }
    client
        .flush()
        .await
        .map_err(|e| sub("ask for micro services")(Box::new(e)))?;
    let answers = futures::stream::select(infos.map(|m| (true, m)), stats.map(|m| (false, m)));
    let answers = tokio_stream_until(answers, window).await;
    let mut info_by_id: BTreeMap<String, Value> = BTreeMap::new();
    let mut stats_by_id: BTreeMap<String, Value> = BTreeMap::new();
    for (is_info, message) in answers {
        let Ok(value) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        let Some(id) = value["id"].as_str().map(str::to_string) else {
            continue;
        };
        if is_info {
            info_by_id.insert(id, value);
        } else {
            stats_by_id.insert(id, value);
        }
    }
    let mut out: Vec<Instance> = info_by_id
        .into_iter()
        .filter_map(|(id, info)| {
            let stats = stats_by_id.remove(&id);
            instance(id, &info, stats.as_ref())
        })
        .collect();
    out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    Ok(out)
}

/// Everything `stream` yields within `window`.
async fn tokio_stream_until<S: futures::Stream + Unpin>(
    mut stream: S,
    window: Duration,
) -> Vec<S::Item> {
    let mut out = Vec::new();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            item = stream.next() => match item {
                Some(item) => out.push(item),
                None => break,
            },
        }
    }
    out
}

/// The [`Instance`] an info answer and a stats answer describe; `None` for a service that is
/// not dme's.
fn instance(id: String, info: &Value, stats: Option<&Value>) -> Option<Instance> {
    let name = info["name"].as_str()?.to_string();
    let service = name.strip_prefix(DME_SERVICE_PREFIX)?.to_string();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let metadata = info["metadata"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    let endpoints = info["endpoints"]
        .as_array()
        .map(|e| e.iter().map(|e| text(&e["subject"])).collect())
        .unwrap_or_default();
    let (started, status) = match stats {
        Some(stats) => (
            stats["started"].as_str().map(str::to_string),
            status_of(stats),
        ),
        None => (None, Value::Null),
    };
    Some(Instance {
        service,
        name,
        id,
        version: text(&info["version"]),
        description: text(&info["description"]),
        metadata,
        started,
        endpoints,
        stats: status,
    })
}

/// The status in a stats answer: the status endpoint's `data`, else requests and errors summed
/// over every endpoint.
fn status_of(stats: &Value) -> Value {
    let endpoints = stats["endpoints"].as_array().cloned().unwrap_or_default();
    if let Some(data) = endpoints
        .iter()
        .find(|e| e["name"] == STATUS_ENDPOINT && e["data"].is_object())
        .map(|e| e["data"].clone())
    {
        return data;
    }
    let sum = |field: &str| {
        endpoints
            .iter()
            .filter_map(|e| e[field].as_u64())
            .sum::<u64>()
    };
    serde_json::json!({ "requests": sum("num_requests"), "errors": sum("num_errors") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_reads_its_status_from_the_status_endpoint_and_skips_foreign_services() {
        let info = serde_json::json!({
            "name": "dme-separator", "id": "abc", "version": "0.1.0", "description": "d",
            "metadata": {"worker": "sep-1"},
            "endpoints": [{"name": "status", "subject": "dme.status.dme-separator.abc"}],
        });
        let stats = serde_json::json!({
            "id": "abc", "started": "2026-01-01T00:00:00Z",
            "endpoints": [{"name": "status", "num_requests": 2, "data": {"segments_done": 7}}],
        });
        let found = instance("abc".into(), &info, Some(&stats)).expect("a dme service");
        assert_eq!(found.service, "separator");
        assert_eq!(found.stats["segments_done"], 7);
        assert_eq!(found.metadata["worker"], "sep-1");
        assert_eq!(found.endpoints, vec!["dme.status.dme-separator.abc"]);
        let other = serde_json::json!({"name": "billing", "id": "x"});
        assert!(instance("x".into(), &other, None).is_none());
        let api = serde_json::json!({"endpoints": [
            {"name": "music-get", "num_requests": 3, "num_errors": 1},
            {"name": "reset", "num_requests": 1, "num_errors": 0},
        ]});
        assert_eq!(
            status_of(&api),
            serde_json::json!({"requests": 4, "errors": 1})
        );
    }

    #[test]
    fn a_tally_counts_and_averages() {
        let tally = Tally::default();
        assert_eq!(tally.counts().mean_ms, None);
        tally.done();
        tally.failed();
        tally.timed(Duration::from_millis(10));
        tally.timed(Duration::from_millis(30));
        let counts = tally.counts();
        assert_eq!((counts.done, counts.failures, counts.in_hand), (1, 1, 0));
        assert!((counts.mean_ms.unwrap_or_default() - 20.0).abs() < 1e-9);
    }
}

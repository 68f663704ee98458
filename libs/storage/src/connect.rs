//! Connecting to NATS and declaring every stream and bucket dme uses.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use dme_protocol::streams;
use tokio::sync::Notify;

use crate::args::{DEFAULT_INBOX_PREFIX, DEFAULT_REPLICAS};
use crate::tls::NatsTls;
use crate::{
    capacity, error_chain, nats, Credentials, NatsArgs, Result, Store, StoreError,
    DEFAULT_STORE_MAX_BYTES,
};

/// Longest wait for one attempt to open a connection to the server.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request (KV, object store, ack) waits for its answer: long enough to wait out a
/// server restart instead of failing at the first reconnect.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replicated stream just declared may go without a leader before start-up fails:
/// on a cluster, a new stream's copies elect one within a few election timeouts (about 2 s
/// each), and a write before that finds "no stream" and fails.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Pause between checks for a stream's leader.
const LEADER_POLL: Duration = Duration::from_millis(100);

/// Pause before declaring again when JetStream was not ready.
const DECLARE_RETRY: Duration = Duration::from_millis(500);

impl Store {
    /// Connects to the NATS server of `args` as `name` (see [`Store::connect`]) with the
    /// credentials and inbox prefix of `args`, and sets the object store's maximum to
    /// `args.store_max_bytes` (a service's start-up). Streams and buckets it creates get
    /// `args.replicas` replicas.
    ///
    /// # Errors
    /// As [`Store::connect`]; also when the credentials or TLS files cannot be read or are
    /// refused, or the server refuses that maximum.
    pub async fn connect_with(args: &NatsArgs, name: &str) -> Result<Store> {
        let credentials = args.credentials().map_err(|e| StoreError::Nats {
            op: "read credentials",
            source: Box::new(e),
        })?;
        let identity = Identity {
            credentials,
            inbox_prefix: args.nats_inbox_prefix.clone(),
            tls: NatsTls::from_args(args)?,
        };
        let client =
            Self::connect_client(&args.nats_url, name, args.connect_timeout(), identity).await?;
        let deadline = args.connect_timeout();
        Self::open_with(client, Some(args.store_max_bytes), args.replicas, deadline).await
    }

    /// Connects to NATS at `url` (one URL, or several comma-separated: the servers of a
    /// cluster) as `name` (shown in the server's connection list), trying until
    /// `deadline` passes (async-nats retries in the background, backing off up to 4 s), and
    /// declares every stream and bucket. Once connected, the client reconnects by itself for as
    /// long as the process runs.
    ///
    /// # Errors
    /// [`StoreError::Unreachable`] when NATS cannot be reached before the deadline; a NATS error
    /// when the URL is malformed or the server refuses a declaration.
    /// The object store's maximum is left as it is (a new one gets
    /// [`DEFAULT_STORE_MAX_BYTES`]), so tools and tests that connect change nothing; what is
    /// missing is created with one replica.
    pub async fn connect(url: &str, name: &str, deadline: Duration) -> Result<Store> {
        let client = Self::connect_client(url, name, deadline, Identity::default()).await?;
        Self::open_with(client, None, DEFAULT_REPLICAS, deadline).await
    }

    /// A connection to `url` as `name` and `identity`, once the server answered (see
    /// [`Store::connect`]).
    async fn connect_client(
        url: &str,
        name: &str,
        deadline: Duration,
        identity: Identity,
    ) -> Result<async_nats::Client> {
        let connected = Arc::new(Notify::new());
        let on_connect = connected.clone();
        let refused = Arc::new(Notify::new());
        let on_refusal = refused.clone();
        let options = async_nats::ConnectOptions::new().custom_inbox_prefix(identity.inbox_prefix);
        let options = match identity.credentials {
            Credentials::None => options,
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user, password)
            }
            Credentials::Nkey { seed } => options.nkey(seed),
            Credentials::CredsFile(path) => options
                .credentials_file(&path)
                .await
                .map_err(nats("read the NATS credentials file"))?,
        };
        let client = identity
            .tls
            .apply(options)
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECTION_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let on_connect = on_connect.clone();
                let on_refusal = on_refusal.clone();
                async move {
                    match event {
                        // Stores a permit when nobody waits yet, so an early connect is not lost.
                        async_nats::Event::Connected => on_connect.notify_one(),
                        // Wrong credentials do not get better by retrying for a minute.
                        async_nats::Event::ServerError(
                            async_nats::ServerError::AuthorizationViolation,
                        ) => on_refusal.notify_one(),
                        // A refused publish or subscription: the server's permissions for this
                        // user (nats-auth.conf) do not cover what the service does.
                        async_nats::Event::ServerError(e) => {
                            tracing::error!(error = %e, "NATS refused an operation")
                        }
                        _ => {}
                    }
                }
            })
            .connect(server_list(url))
            .await
            .map_err(nats("connect"))?;
        tokio::select! {
            _ = connected.notified() => Ok(client),
            _ = refused.notified() => Err(StoreError::Nats {
                op: "connect",
                source: format!("{url} refused the credentials (DME_NATS_USER, ...)").into(),
            }),
            _ = tokio::time::sleep(deadline) => Err(StoreError::Unreachable {
                url: url.to_string(),
                waited: deadline,
            }),
        }
    }

    /// Declares every stream and bucket on an existing connection, leaving the object store's
    /// maximum as it is.
    ///
    /// # Errors
    /// When JetStream refuses a declaration (for example, JetStream is disabled).
    pub async fn open(client: async_nats::Client) -> Result<Store> {
        Self::open_with(client, None, DEFAULT_REPLICAS, LEADER_WAIT).await
    }

    /// Declares every stream and bucket on an existing connection, creating what is missing
    /// with `replicas` replicas (what exists keeps its own); with `store_max_bytes`, the
    /// object store is created with that maximum or brought to it.
    ///
    /// # Errors
    /// When JetStream refuses a declaration or the maximum (for example, more replicas than
    /// the cluster has servers), or is still not ready after `deadline`.
    async fn open_with(
        client: async_nats::Client,
        store_max_bytes: Option<u64>,
        replicas: usize,
        deadline: Duration,
    ) -> Result<Store> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            match Self::declare(client.clone(), store_max_bytes, replicas).await {
                Ok(store) => return Ok(store),
                Err(e) if not_ready(&e) && tokio::time::Instant::now() < give_up => {
                    tracing::warn!(
                        error = %error_chain(&e),
                        "JetStream not ready (a cluster electing a leader?); declaring again"
                    );
                    tokio::time::sleep(DECLARE_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of [`Store::open_with`].
    async fn declare(
        client: async_nats::Client,
        store_max_bytes: Option<u64>,
        replicas: usize,
    ) -> Result<Store> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(streams::work_stream(replicas))
            .await
            .map_err(nats("declare work stream"))?;
        js.get_or_create_stream(streams::event_stream(replicas))
            .await
            .map_err(nats("declare event stream"))?;
        js.get_or_create_stream(streams::advisory_stream(replicas))
            .await
            .map_err(nats("declare advisory stream"))?;
        let music = kv_bucket(&js, streams::MUSIC_BUCKET, replicas).await?;
        let jobs = kv_bucket(&js, streams::JOB_BUCKET, replicas).await?;
        let system = kv_bucket(&js, streams::SYSTEM_BUCKET, replicas).await?;
        let files = match js.get_object_store(streams::FILE_BUCKET).await {
            Ok(files) => files,
            Err(_) => match js
                .create_object_store(streams::file_bucket(
                    store_max_bytes.unwrap_or(DEFAULT_STORE_MAX_BYTES),
                    replicas,
                ))
                .await
            {
                Ok(files) => files,
                // Another service created it at the same moment: JetStream then refuses the
                // second reservation of its maximum (10047) instead of answering that it exists,
                // and the other creation may not be visible yet: look again for a while.
                Err(create) => {
                    let mut found = None;
                    for _ in 0..FILE_BUCKET_LOOKUPS {
                        if let Ok(files) = js.get_object_store(streams::FILE_BUCKET).await {
                            found = Some(files);
                            break;
                        }
                        tokio::time::sleep(FILE_BUCKET_LOOKUP_PAUSE).await;
                    }
                    found.ok_or_else(|| {
                        nats(
                            "declare file bucket (is DME_STORE_MAX_BYTES above the server's \
                             max_file_store?)",
                        )(create)
                    })?
                }
            },
        };
        wait_for_leaders(&js).await?;
        if let Some(max) = store_max_bytes {
            capacity::set_file_store_max(&js, max).await?;
        }
        Ok(Store {
            client,
            js,
            music,
            jobs,
            system,
            files,
            replicas,
        })
    }
}

/// Who a connection is: its credentials, the prefix of its reply inboxes, and its TLS settings.
struct Identity {
    credentials: Credentials,
    inbox_prefix: String,
    tls: NatsTls,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            credentials: Credentials::None,
            inbox_prefix: DEFAULT_INBOX_PREFIX.to_string(),
            tls: NatsTls::default(),
        }
    }
}

/// Waits until every stream [`Store::open`] declares has a leader (at once on one server; on a
/// cluster, once its copies elected one), so the service's first writes do not fail.
///
/// # Errors
/// When a stream has no leader within [`LEADER_WAIT`].
async fn wait_for_leaders(js: &jetstream::Context) -> Result<()> {
    let names = streams::declared_streams();
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    for name in names {
        loop {
            // No answer is no leader: the stream's leader answers info requests.
            let led = match js.get_stream(&name).await {
                Ok(stream) => stream
                    .cached_info()
                    .cluster
                    .as_ref()
                    .is_none_or(|c| c.leader.is_some()),
                Err(_) => false,
            };
            if led {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Nats {
                    op: "wait for a stream's leader",
                    source: format!("{name} has no leader after {LEADER_WAIT:?}").into(),
                });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }
    Ok(())
}

/// Looks for a file bucket another service was creating when this one's creation was refused,
/// [`FILE_BUCKET_LOOKUP_PAUSE`] apart: seen in tests, a concurrent creation became visible
/// after the refusal; 25 looks (5 s) cover a loaded machine.
const FILE_BUCKET_LOOKUPS: usize = 25;
/// The pause between two of those looks.
const FILE_BUCKET_LOOKUP_PAUSE: Duration = Duration::from_millis(200);

/// Whether `e` says JetStream is not ready yet rather than refusing: a request that timed out
/// or found nobody to answer, as while a cluster elects a leader (a server of a 3-node cluster
/// was killed as a service started), or a stream still without a leader.
fn not_ready(e: &StoreError) -> bool {
    let text = error_chain(e);
    [
        "timed out",
        "no responders",
        "temporarily unavailable",
        "no leader",
        "no stream found",
        // A server of the cluster not seen by its leader yet (the cluster still forming);
        // asking for more replicas than there are servers fails otherwise ("insufficient
        // resources", or placement with another reason), and is not retried.
        "peer offline",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// The servers of `url`: one URL, or several separated by commas (a cluster's), surrounding
/// whitespace ignored. async-nats parses each and tries them in turn, here and on reconnect.
fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The KV bucket `name`, created with `replicas` replicas if missing.
async fn kv_bucket(js: &jetstream::Context, name: &str, replicas: usize) -> Result<kv::Store> {
    match js.get_key_value(name).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_key_value(streams::kv_bucket(name, replicas))
            .await
            .map_err(nats("declare kv bucket")),
    }
}

#[cfg(test)]
mod tests {
    use super::{not_ready, server_list};
    use crate::StoreError;

    #[test]
    fn a_cluster_still_forming_is_waited_for_and_a_misconfiguration_is_not() {
        let refused = |text: &str| StoreError::Nats {
            op: "declare work stream",
            source: text.to_string().into(),
        };
        assert!(not_ready(&refused(
            "jetstream error: no suitable peers for placement, peer offline (code 400, error code 10005)"
        )));
        assert!(not_ready(&refused(
            "jetstream error: JetStream system temporarily unavailable (code 503, error code 10008)"
        )));
        assert!(!not_ready(&refused(
            "jetstream error: insufficient resources (code 503, error code 10023)"
        )));
        assert!(!not_ready(&refused(
            "jetstream error: jetstream not enabled (code 503, error code 10076)"
        )));
    }

    #[test]
    fn a_cluster_url_is_split_into_its_servers() {
        assert_eq!(
            server_list("nats://127.0.0.1:4222"),
            vec!["nats://127.0.0.1:4222"]
        );
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,nats://c:4224,"),
            vec!["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
    }
}

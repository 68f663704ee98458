//! Connecting to NATS and declaring every stream and bucket dme uses.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use dme_protocol::streams;
use tokio::sync::Notify;

use crate::args::DEFAULT_INBOX_PREFIX;
use crate::tls::NatsTls;
use crate::{
    capacity, nats, Credentials, NatsArgs, Result, Store, StoreError, DEFAULT_STORE_MAX_BYTES,
};

/// Longest wait for one attempt to open a connection to the server.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request (KV, object store, ack) waits for its answer: long enough to wait out a
/// server restart instead of failing at the first reconnect.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Connects to the NATS server of `args` as `name` (see [`Store::connect`]) with the
    /// credentials and inbox prefix of `args`, and sets the object store's maximum to
    /// `args.store_max_bytes` (a service's start-up).
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
        Self::open_with(client, Some(args.store_max_bytes)).await
    }

    /// Connects to NATS at `url` as `name` (shown in the server's connection list), trying until
    /// `deadline` passes (async-nats retries in the background, backing off up to 4 s), and
    /// declares every stream and bucket. Once connected, the client reconnects by itself for as
    /// long as the process runs.
    ///
    /// # Errors
    /// [`StoreError::Unreachable`] when NATS cannot be reached before the deadline; a NATS error
    /// when the URL is malformed or the server refuses a declaration.
    /// The object store's maximum is left as it is (a new one gets
    /// [`DEFAULT_STORE_MAX_BYTES`]), so tools and tests that connect change nothing.
    pub async fn connect(url: &str, name: &str, deadline: Duration) -> Result<Store> {
        let client = Self::connect_client(url, name, deadline, Identity::default()).await?;
        Self::open(client).await
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
            .connect(url)
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
        Self::open_with(client, None).await
    }

    /// Declares every stream and bucket on an existing connection; with `store_max_bytes`, the
    /// object store is created with that maximum or brought to it.
    ///
    /// # Errors
    /// When JetStream refuses a declaration or the maximum.
    async fn open_with(client: async_nats::Client, store_max_bytes: Option<u64>) -> Result<Store> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(streams::work_stream())
            .await
            .map_err(nats("declare work stream"))?;
        js.get_or_create_stream(streams::event_stream())
            .await
            .map_err(nats("declare event stream"))?;
        js.get_or_create_stream(streams::advisory_stream())
            .await
            .map_err(nats("declare advisory stream"))?;
        let music = kv_bucket(&js, streams::MUSIC_BUCKET).await?;
        let jobs = kv_bucket(&js, streams::JOB_BUCKET).await?;
        let system = kv_bucket(&js, streams::SYSTEM_BUCKET).await?;
        let files = match js.get_object_store(streams::FILE_BUCKET).await {
            Ok(files) => files,
            Err(_) => match js
                .create_object_store(streams::file_bucket(
                    store_max_bytes.unwrap_or(DEFAULT_STORE_MAX_BYTES),
                ))
                .await
            {
                Ok(files) => files,
                // Another service created it at the same moment: JetStream then refuses the
                // second reservation of its maximum (10047) instead of answering that it exists.
                Err(create) => js
                    .get_object_store(streams::FILE_BUCKET)
                    .await
                    .map_err(|_| {
                        nats(
                            "declare file bucket (is DME_STORE_MAX_BYTES above the server's \
                             max_file_store?)",
                        )(create)
                    })?,
            },
        };
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

/// The KV bucket `name`, created if missing.
async fn kv_bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store> {
    match js.get_key_value(name).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_key_value(streams::kv_bucket(name))
            .await
            .map_err(nats("declare kv bucket")),
    }
}

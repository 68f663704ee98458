//! Connecting to NATS and declaring every stream and bucket dme uses.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use dme_protocol::streams;
use tokio::sync::Notify;

use crate::{nats, NatsArgs, Result, Store, StoreError};

/// Longest wait for one attempt to open a connection to the server.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request (KV, object store, ack) waits for its answer: long enough to wait out a
/// server restart instead of failing at the first reconnect.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Connects to the NATS server of `args` as `name` (see [`Store::connect`]).
    ///
    /// # Errors
    /// As [`Store::connect`].
    pub async fn connect_with(args: &NatsArgs, name: &str) -> Result<Store> {
        Self::connect(&args.nats_url, name, args.connect_timeout()).await
    }

    /// Connects to NATS at `url` as `name` (shown in the server's connection list), trying until
    /// `deadline` passes (async-nats retries in the background, backing off up to 4 s), and
    /// declares every stream and bucket. Once connected, the client reconnects by itself for as
    /// long as the process runs.
    ///
    /// # Errors
    /// [`StoreError::Unreachable`] when NATS cannot be reached before the deadline; a NATS error
    /// when the URL is malformed or the server refuses a declaration.
    pub async fn connect(url: &str, name: &str, deadline: Duration) -> Result<Store> {
        let connected = Arc::new(Notify::new());
        let on_connect = connected.clone();
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECTION_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let on_connect = on_connect.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        // Stores a permit when nobody waits yet, so an early connect is not lost.
                        on_connect.notify_one();
                    }
                }
            })
            .connect(url)
            .await
            .map_err(nats("connect"))?;
        if tokio::time::timeout(deadline, connected.notified())
            .await
            .is_err()
        {
            return Err(StoreError::Unreachable {
                url: url.to_string(),
                waited: deadline,
            });
        }
        Self::open(client).await
    }

    /// Declares every stream and bucket on an existing connection.
    ///
    /// # Errors
    /// When JetStream refuses a declaration (for example, JetStream is disabled).
    pub async fn open(client: async_nats::Client) -> Result<Store> {
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
            Ok(f) => f,
            Err(_) => js
                .create_object_store(streams::file_bucket())
                .await
                .map_err(nats("declare file bucket"))?,
        };
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

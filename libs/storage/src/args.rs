//! Settings every service shares, flattened into each service's clap configuration so the flags
//! and `DME_*` variables are spelled once.

use std::path::PathBuf;
use std::time::Duration;

use crate::spool::Spool;

/// Default NATS server: the one `dme up` and `make run` start locally.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Default start-up wait for NATS, in seconds: long enough for a nats-server started at the same
/// moment (`dme up`, a compose file) to come up, short enough that a wrong URL fails a deployment
/// visibly within a minute.
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 60;

/// Most bytes the object store (originals, segments, stems, tracks, mixes, downloads) may hold
/// by default: 40 GB, 80% of the 50 GB `max_file_store` of the repository's `nats.conf`, leaving
/// the rest to records, work and events. JetStream refuses a stream whose maximum is above what
/// the server may store (a server without `max_file_store` may store 75% of its free disk).
pub const DEFAULT_STORE_MAX_BYTES: u64 = 40_000_000_000;

/// Where NATS is, how long to wait for it at start-up, and how much the object store may hold.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server.
    #[arg(long, env = "DME_NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// Seconds to keep trying to reach NATS at start-up.
    #[arg(long, env = "DME_CONNECT_TIMEOUT_S", default_value_t = DEFAULT_CONNECT_TIMEOUT_S)]
    pub connect_timeout_s: u64,
    /// Most bytes the object store may hold (a put beyond it fails; the gateway refuses new songs
    /// with 507 before). Every service sets it at start-up, so give all of them the same value.
    #[arg(long, env = "DME_STORE_MAX_BYTES", default_value_t = DEFAULT_STORE_MAX_BYTES)]
    pub store_max_bytes: u64,
}

impl NatsArgs {
    /// How long to keep trying to reach NATS at start-up.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s)
    }
}

/// Where a service keeps temporary files (uploads being received, decoded audio, tracks being
/// summed), so memory stays bounded whatever a song's length.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpoolArgs {
    /// Folder for temporary files, which replicas of the service may share; each process works
    /// in a locked folder of its own in it, and folders left by killed processes are removed at
    /// start-up. `<system temporary folder>/dme/<service>` when absent.
    #[arg(long, env = "DME_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
}

impl SpoolArgs {
    /// The spool folder of `service`: `--spool-dir`, else `<temp>/dme/<service>`.
    pub fn root(&self, service: &str) -> PathBuf {
        match &self.spool_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join("dme").join(service),
        }
    }

    /// Opens `service`'s spool folder on a blocking thread: sweeps what killed processes left
    /// there and creates this process's own folder ([`Spool::open`]).
    ///
    /// # Errors
    /// When the folder cannot be created, swept or locked; the error names the path.
    pub async fn open(&self, service: &str) -> std::io::Result<Spool> {
        let root = self.root(service);
        tokio::task::spawn_blocking(move || Spool::open(&root))
            .await
            .map_err(std::io::Error::other)?
    }
}

//! Settings every service shares, flattened into each service's clap configuration so the flags
//! and `DME_*` variables are spelled once.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Folder for temporary files (the system's temporary folder when absent).
    #[arg(long, env = "DME_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
}

impl SpoolArgs {
    /// A new temporary folder in the spool folder, removed when the returned value is dropped.
    ///
    /// # Errors
    /// When the folder cannot be created (missing spool folder, no space, no permission).
    pub fn tempdir(&self) -> std::io::Result<tempfile::TempDir> {
        match &self.spool_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
    }

    /// A new temporary file in the spool folder, removed when the returned value is dropped.
    ///
    /// # Errors
    /// As [`SpoolArgs::tempdir`].
    pub fn named_tempfile(&self) -> std::io::Result<tempfile::NamedTempFile> {
        match &self.spool_dir {
            Some(dir) => tempfile::NamedTempFile::new_in(dir),
            None => tempfile::NamedTempFile::new(),
        }
    }
}

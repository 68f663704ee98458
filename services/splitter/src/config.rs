//! Splitter settings: flags with `DME_*` environment equivalents.

use std::path::PathBuf;

/// Segments of one song in the separators' queue at once. With several songs in flight each gets
/// this many places, so a short song waits behind at most this many segments of a long one; 16
/// keeps up to 16 separators busy on a single song.
pub const DEFAULT_SEGMENT_WINDOW: u32 = 16;

/// The splitter: decodes uploads and cuts them into segments.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitterConfig {
    /// NATS server.
    #[arg(long, env = "DME_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Segments of one song queued at once (fair sharing of the separators between songs).
    #[arg(long, env = "DME_SEGMENT_WINDOW", default_value_t = DEFAULT_SEGMENT_WINDOW)]
    pub segment_window: u32,
    /// Folder for temporary decoded audio (the system's temporary folder when absent).
    #[arg(long, env = "DME_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Seconds to keep trying to reach NATS at start-up.
    #[arg(long, env = "DME_CONNECT_TIMEOUT_S", default_value_t = 60)]
    pub connect_timeout_s: u64,
}

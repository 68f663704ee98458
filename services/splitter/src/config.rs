//! Splitter settings: flags with `DME_*` environment equivalents.

use dme_storage::{NatsArgs, SpoolArgs};

pub use dme_protocol::messages::DEFAULT_SEGMENT_WINDOW;

/// The splitter: decodes uploads and cuts them into segments.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitterConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Segments of one song queued at once (fair sharing of the separators between songs).
    #[arg(long, env = "DME_SEGMENT_WINDOW", default_value_t = DEFAULT_SEGMENT_WINDOW)]
    pub segment_window: u32,
    /// Where decoded audio is spooled.
    #[command(flatten)]
    pub spool: SpoolArgs,
}

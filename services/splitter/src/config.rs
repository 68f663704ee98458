//! Splitter settings: flags with `DME_*` environment equivalents.

use dme_storage::{NatsArgs, SpoolArgs};

/// Segments of one song in the separators' queue at once. With several songs in flight each gets
/// this many places, so a short song waits behind at most this many segments of a long one; 16
/// keeps up to 16 separators busy on a single song.
pub const DEFAULT_SEGMENT_WINDOW: u32 = 16;

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

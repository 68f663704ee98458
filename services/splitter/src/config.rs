//! Splitter settings: flags with `DME_*` environment equivalents.

use dme_storage::{NatsArgs, SpoolArgs};

pub use dme_protocol::messages::DEFAULT_SEGMENT_WINDOW;

/// The splitter: decodes uploads and cuts them into segments.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitterConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The smallest window of a song: segments queued at once (fair sharing of the separators
    /// between songs); the window grows past it to the song's share of its model's live
    /// separators, so one song alone keeps every one busy.
    #[arg(long, env = "DME_SEGMENT_WINDOW", default_value_t = DEFAULT_SEGMENT_WINDOW)]
    pub segment_window: u32,
    /// Address of this process's metrics and health listener (`/metrics`, `/healthz`,
    /// `/readyz`), e.g. `127.0.0.1:9101`; port 0 takes a free port (logged, and in the micro
    /// service's metadata). None when absent.
    #[arg(long, env = "DME_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Where decoded audio is spooled.
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// Seconds between touches of a song's record while it is cut, so a long cut is never
    /// reported stalled (keep it well below the gateway's `DME_STALL_AFTER_S`).
    #[arg(long, env = "DME_CUT_HEARTBEAT_S", default_value_t = DEFAULT_CUT_HEARTBEAT_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub cut_heartbeat_s: u64,
}

/// Default of [`SplitterConfig::cut_heartbeat_s`]: a fifteenth of the gateway's default stall
/// time (300 s), and one cheap record update per 20 s of a cut.
pub const DEFAULT_CUT_HEARTBEAT_S: u64 = 20;

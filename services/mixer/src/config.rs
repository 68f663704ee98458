//! Mixer settings: flags with `DME_*` environment equivalents.

use std::time::Duration;

use dme_protocol::streams::Redelivery;
use dme_storage::{NatsArgs, SpoolArgs};

/// Shortest ack wait accepted: in-progress acks go every third of it, and below a second the
/// mixer and the server would mostly be exchanging acks.
const MIN_ACK_WAIT: Duration = Duration::from_secs(1);

/// Separated-segment events handled at once by default: most are a small record update, and an
/// assembly holds its slot while it runs, so four let other songs progress during one assembly.
pub const DEFAULT_ASSEMBLER_SLOTS: usize = 4;

/// The mixer: assembles stems and mixes selections.
#[derive(Debug, Clone, clap::Args)]
pub struct MixerConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address of this process's metrics and health listener (`/metrics`, `/healthz`,
    /// `/readyz`), e.g. `127.0.0.1:9101`; port 0 takes a free port (logged, and in the micro
    /// service's metadata). None when absent.
    #[arg(long, env = "DME_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Where tracks are spooled while they are assembled and summed.
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// Separated-segment events handled at once (each is a small record update; an assembly
    /// holds its slot while it runs).
    #[arg(long, env = "DME_MIXER_SLOTS", default_value_t = DEFAULT_ASSEMBLER_SLOTS)]
    pub slots: usize,
    /// Milliseconds a separated-segment event, mix request or advisory may go without an ack
    /// before it is delivered again (the mixer's consumers are updated to this at start-up);
    /// while one is handled, an in-progress ack goes every third of it.
    #[arg(long, env = "DME_MIXER_ACK_WAIT_MS", default_value_t = Redelivery::PIPELINE.ack_wait.as_millis() as u64)]
    pub ack_wait_ms: u64,
    /// Seconds a song in work may go without a change, and with nothing queued for it, before
    /// its next step is driven again (see the reconciler).
    #[arg(long, env = "DME_RECONCILE_AFTER_S", default_value_t = DEFAULT_RECONCILE_AFTER_S)]
    pub reconcile_after_s: u64,
    /// Megabytes of the spool folder that may hold decompressed stem tracks for re-mixes
    /// (least recently used evicted first); 0 keeps none, so every mix downloads its tracks.
    #[arg(long, env = "DME_MIXER_TRACK_CACHE_MB", default_value_t = DEFAULT_TRACK_CACHE_MB)]
    pub track_cache_mb: u64,
}

/// Default of [`MixerConfig::track_cache_mb`]: a 3-minute song's four stems take about 250 MB
/// decompressed, so 1 GiB keeps the last four songs' tracks, the ones users re-mix.
pub const DEFAULT_TRACK_CACHE_MB: u64 = 1024;

/// Default of [`MixerConfig::reconcile_after_s`]: a song in work always has a message in the
/// queue unless one was lost, so a minute with neither a change nor a message is far beyond any
/// gap between a step's end and the next step's message, and well before the gateway reports the
/// song stalled (five minutes).
pub const DEFAULT_RECONCILE_AFTER_S: u64 = 60;

impl MixerConfig {
    /// How long a song in work goes without a change, nothing queued, before it is driven again.
    pub fn reconcile_after(&self) -> Duration {
        Duration::from_secs(self.reconcile_after_s.max(1))
    }

    /// Bytes the track cache may hold ([`MixerConfig::track_cache_mb`]).
    pub fn track_cache_bytes(&self) -> u64 {
        self.track_cache_mb.saturating_mul(1 << 20)
    }

    /// The redelivery settings of the mixer's consumers.
    pub fn redelivery(&self) -> Redelivery {
        Redelivery {
            ack_wait: Duration::from_millis(self.ack_wait_ms).max(MIN_ACK_WAIT),
            ..Redelivery::PIPELINE
        }
    }
}

//! Mixer settings: flags with `DME_*` environment equivalents.

use std::path::PathBuf;

/// The mixer: assembles stems and mixes selections.
#[derive(Debug, Clone, clap::Args)]
pub struct MixerConfig {
    /// NATS server.
    #[arg(long, env = "DME_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Folder for temporary track files (the system's temporary folder when absent).
    #[arg(long, env = "DME_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Separated-segment events handled at once (each is a small record update; an assembly
    /// holds its slot while it runs).
    #[arg(long, env = "DME_MIXER_SLOTS", default_value_t = 4)]
    pub slots: usize,
    /// Seconds to keep trying to reach NATS at start-up.
    #[arg(long, env = "DME_CONNECT_TIMEOUT_S", default_value_t = 60)]
    pub connect_timeout_s: u64,
}

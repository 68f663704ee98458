//! Mixer settings: flags with `DME_*` environment equivalents.

use dme_storage::{NatsArgs, SpoolArgs};

/// Separated-segment events handled at once by default: most are a small record update, and an
/// assembly holds its slot while it runs, so four let other songs progress during one assembly.
pub const DEFAULT_ASSEMBLER_SLOTS: usize = 4;

/// The mixer: assembles stems and mixes selections.
#[derive(Debug, Clone, clap::Args)]
pub struct MixerConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where tracks are spooled while they are assembled and summed.
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// Separated-segment events handled at once (each is a small record update; an assembly
    /// holds its slot while it runs).
    #[arg(long, env = "DME_MIXER_SLOTS", default_value_t = DEFAULT_ASSEMBLER_SLOTS)]
    pub slots: usize,
}

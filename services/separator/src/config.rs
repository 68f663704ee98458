//! Separator settings: flags with `DME_*` environment equivalents.

use std::path::PathBuf;
use std::time::Duration;

use dme_protocol::messages::DEFAULT_SEGMENT_WINDOW;
use dme_protocol::streams::Redelivery;
use dme_storage::NatsArgs;

/// Shortest ack wait accepted: in-progress acks go every third of it, and below a second the
/// worker and the server would mostly be exchanging acks.
const MIN_ACK_WAIT: Duration = Duration::from_secs(1);

/// A separator worker: runs the model on segments from the shared queue.
#[derive(Debug, Clone, clap::Args)]
pub struct SeparatorConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// ONNX model to run (contract: `mix` [1,2,T] -> `stems` [1,S,2,T]); the embedded default
    /// DSP separator when absent.
    #[arg(long, env = "DME_MODEL")]
    pub model: Option<PathBuf>,
    /// ONNX Runtime intra-op threads for this worker. Keep threads × workers per machine at or
    /// below its cores (`dme up` divides the cores among its separators).
    #[arg(long, env = "DME_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,
    /// ONNX Runtime's memory arena (`true`, the default) keeps the most memory a segment needed
    /// for the next; `false` allocates and frees each tensor as it goes: for big models such as
    /// HT-Demucs (docs/BENCHMARKS.md, `make bench-htdemucs`).
    #[arg(long, env = "DME_MEMORY_ARENA", default_value_t = true, action = clap::ArgAction::Set)]
    pub memory_arena: bool,
    /// Folder for ONNX Runtime's optimised graphs, so restarts skip the optimisation; replicas
    /// may share it. `$XDG_CACHE_HOME/dme` (else `~/.cache/dme`) when absent. A folder that
    /// cannot be written only costs the cache.
    #[arg(long, env = "DME_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Address of this process's metrics and health listener (`/metrics`, `/healthz`,
    /// `/readyz`), e.g. `127.0.0.1:9101`; port 0 takes a free port (logged, and in the micro
    /// service's metadata). None when absent.
    #[arg(long, env = "DME_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Name shown in job records; defaults to `<host>-<pid>`.
    #[arg(long, env = "DME_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Milliseconds a segment may go without an ack before another worker gets it (the shared
    /// consumer is updated to this at start-up: the last separator started sets it).
    #[arg(long, env = "DME_SEPARATOR_ACK_WAIT_MS", default_value_t = Redelivery::SEPARATOR.ack_wait.as_millis() as u64)]
    pub ack_wait_ms: u64,
    /// Deliveries of one segment before it is declared poison and its song failed.
    #[arg(long, env = "DME_SEPARATOR_MAX_DELIVER", default_value_t = Redelivery::SEPARATOR.max_deliver)]
    pub max_deliver: i64,
    /// The smallest window of a song: segments released ahead of one this worker finishes
    /// (the splitter's setting of the same name; the window grows past it to the song's share
    /// of the live workers of the pool).
    #[arg(long, env = "DME_SEGMENT_WINDOW", default_value_t = DEFAULT_SEGMENT_WINDOW)]
    pub segment_window: u32,
    /// Scheduling priority (nice, 0 to 19) the separator lowers itself to, so that on a machine
    /// shared with a gateway, a nats-server or a mixer those answer first (model runs are batch
    /// work). 0 leaves the priority as started (a process started nicer stays so); `dme up`,
    /// which runs everything on one machine, starts its separators at 10.
    #[arg(long, env = "DME_SEPARATOR_NICE", default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// Test and benchmark aid, never for production: instead of running the model, wait this
    /// many milliseconds per segment and make stems of the right shape cheaply (the first stem
    /// is the segment's input, every other stem silence), so one machine can run many
    /// lightweight workers (a simulated fleet). The model is still loaded (for its contract)
    /// but not warmed up.
    #[arg(long, env = "DME_FAKE_INFER_MS")]
    pub fake_infer_ms: Option<u64>,
}

impl SeparatorConfig {
    /// The consumer's redelivery settings.
    pub fn redelivery(&self) -> Redelivery {
        Redelivery {
            ack_wait: Duration::from_millis(self.ack_wait_ms).max(MIN_ACK_WAIT),
            max_deliver: self.max_deliver.max(1),
            ..Redelivery::SEPARATOR
        }
    }

    /// The fixed time of a simulated model run, when [`SeparatorConfig::fake_infer_ms`] is set.
    pub fn fake_inference(&self) -> Option<Duration> {
        self.fake_infer_ms.map(Duration::from_millis)
    }

    /// This worker's id.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: SeparatorConfig,
    }

    fn arena(args: &[&str]) -> Result<bool, clap::Error> {
        Cli::try_parse_from(std::iter::once("separator").chain(args.iter().copied()))
            .map(|cli| cli.config.memory_arena)
    }

    #[test]
    fn the_memory_arena_is_on_unless_set_to_false() {
        assert!(arena(&[]).unwrap());
        assert!(!arena(&["--memory-arena", "false"]).unwrap());
        assert!(arena(&["--memory-arena", "true"]).unwrap());
        // A value is required: a bare flag is not read as either.
        assert!(arena(&["--memory-arena"]).is_err());
        assert!(arena(&["--memory-arena", "off"]).is_err());
        // The environment, as containers set it (the only test here that reads it).
        std::env::set_var("DME_MEMORY_ARENA", "false");
        let from_env = arena(&[]);
        std::env::remove_var("DME_MEMORY_ARENA");
        assert!(!from_env.unwrap());
    }
}

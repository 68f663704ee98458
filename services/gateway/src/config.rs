//! Gateway settings: flags with `DME_*` environment equivalents.

use dme_storage::{NatsArgs, SpoolArgs};

/// Largest upload accepted by default: 200 MB holds about 2.3 hours of 192 kbit/s MP3 or 19
/// minutes of CD-quality WAV.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 200_000_000;
/// Longest song accepted by default (seconds): 3 hours, beyond any album side or DJ set most
/// users separate; storage per song grows linearly with it.
pub const DEFAULT_MAX_DURATION_S: f64 = 3.0 * 3600.0;

/// Seconds without any progress after which a song in work is reported `stalled`: well above
/// the slowest step seen (a 7.8 s HT-Demucs segment takes 3-6 s on one core; decoding an hour of
/// MP3 about a minute), so a busy system is not mistaken for a stuck one.
pub const DEFAULT_STALL_AFTER_S: u64 = 300;

/// HTTP worker threads by default: the gateway mostly waits on NATS and streams files, so two
/// threads serve many clients; raise it for many simultaneous uploads.
pub const DEFAULT_HTTP_WORKERS: usize = 2;

/// The HTTP gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "DME_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Base of the links in answers (e.g. `https://dme.example.com`); taken from each request's
    /// Host header when absent.
    #[arg(long, env = "DME_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest upload in bytes (larger ones get 413).
    #[arg(long, env = "DME_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// Longest song in seconds (longer ones get 413).
    #[arg(long, env = "DME_MAX_DURATION_S", default_value_t = DEFAULT_MAX_DURATION_S)]
    pub max_duration_s: f64,
    /// Where uploads are spooled while they arrive.
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// Seconds without progress after which a song in work is reported as `stalled`.
    #[arg(long, env = "DME_STALL_AFTER_S", default_value_t = DEFAULT_STALL_AFTER_S)]
    pub stall_after_s: u64,
    /// HTTP worker threads.
    #[arg(long, env = "DME_HTTP_WORKERS", default_value_t = DEFAULT_HTTP_WORKERS)]
    pub http_workers: usize,
}

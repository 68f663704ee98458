//! Gateway settings: flags with `DME_*` environment equivalents.

use dme_storage::{NatsArgs, SpoolArgs};

use crate::auth::{Token, TokensFile};

/// Largest upload accepted by default: 200 MB holds about 2.3 hours of 192 kbit/s MP3 or 19
/// minutes of CD-quality WAV.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 200_000_000;
/// Longest song accepted by default (seconds): 2 hours, a whole album or a long DJ set. The store
/// a song takes grows with its length: at its peak, uncompressed, about 4.1 MB per second with a
/// four-stem model (`admission::peak_store_bytes`), 30 GB for 2 hours, which fits the default
/// store's high-water mark (80% of 40 GB).
pub const DEFAULT_MAX_DURATION_S: f64 = 2.0 * 3600.0;

/// Bytes of uploads one client may have in work (neither done nor failed) by default: 1 GB, five
/// of the largest uploads, or hundreds of ordinary songs.
pub const DEFAULT_CLIENT_MAX_INFLIGHT_BYTES: u64 = 1_000_000_000;

/// Seconds of audio one client may have in work by default: 2 hours, one of the longest songs or
/// forty 3-minute ones. Audio length, not file size, is what separation costs in time and store
/// (an hour of silence is a 618 KB FLAC).
pub const DEFAULT_CLIENT_MAX_INFLIGHT_S: f64 = 2.0 * 3600.0;

/// New songs one client may start per minute by default, per gateway: a person dropping a whole
/// album (or fifty short pieces) on the page at once is never refused, while a script cannot
/// flood the queue faster than a song a second.
pub const DEFAULT_CLIENT_UPLOADS_PER_MINUTE: u32 = 60;

/// Songs one client may have in work (neither done nor failed) by default, counted over all
/// gateways: several albums; beyond it a client waits for its songs to finish, so one client
/// cannot hold the whole queue with thousands of tiny songs that the byte and second budgets
/// would let through.
pub const DEFAULT_CLIENT_MAX_SONGS: usize = 100;

/// Share of the object store's maximum beyond which no new song is accepted (507): the rest is
/// room for the songs already accepted to finish (their segments, stems, tracks and mixes grow
/// after they are admitted) and for downloads' encodings.
pub const DEFAULT_STORE_HIGH_WATER: f64 = 0.8;

/// Seconds without any progress after which a song in work is reported `stalled`: well above
/// the slowest step seen (a 7.8 s HT-Demucs segment takes 3-6 s on one core; decoding an hour of
/// MP3 about a minute), so a busy system is not mistaken for a stuck one.
pub const DEFAULT_STALL_AFTER_S: u64 = 300;

/// HTTP worker threads by default: the gateway mostly waits on NATS and streams files, so two
/// threads serve many clients; raise it for many simultaneous uploads.
pub const DEFAULT_HTTP_WORKERS: usize = 2;

/// Seconds a request body may pause (no byte arriving) before the request is answered 408 and
/// its connection closed: far longer than any pause of a working upload, short enough that a
/// client that stopped sending (or a `Content-Length` larger than the body) frees its socket
/// and spool file within half a minute.
pub const DEFAULT_BODY_IDLE_TIMEOUT_S: u64 = 30;

/// Seconds a whole request body may take: the largest default upload (200 MB) at 1 Mbit/s takes
/// 27 minutes, so a trickling client holds a connection half an hour at most.
pub const DEFAULT_BODY_TIMEOUT_S: u64 = 1800;

/// Seconds a client has to send a request's head (method, path, headers) once it connects, or
/// once its previous request on the connection was answered (actix's `client_request_timeout`).
pub const DEFAULT_REQUEST_HEAD_TIMEOUT_S: u64 = 10;

/// Seconds an idle keep-alive connection stays open between requests (actix's default).
pub const DEFAULT_KEEP_ALIVE_S: u64 = 5;

/// Connections each HTTP worker holds at once; more wait in the listen backlog. Each upload
/// holds a socket and a spool file, so two workers stay under 4 100 descriptors, within any
/// usual open-file limit (`ulimit -n` is 1 024 soft in many shells: raise it, or lower this).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;

/// The HTTP gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Where NATS is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "DME_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// A PEM certificate chain (the server's first) to serve HTTPS with, together with
    /// `--tls-key`; the address then serves only HTTPS, and links say `https`.
    #[arg(long, env = "DME_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "DME_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Base of the links in answers (e.g. `https://dme.example.com`); when absent, links are
    /// built from each request's Host header (and its forwarded headers, from trusted proxies
    /// only).
    #[arg(long, env = "DME_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Proxies whose `Forwarded`, `X-Forwarded-Host` and `X-Forwarded-Proto` headers are
    /// believed when building links: comma-separated addresses or CIDR ranges (`10.0.0.0/8`,
    /// `::1`). Default: none, so no client can choose the links the API hands out.
    #[arg(long, env = "DME_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest upload in bytes (larger ones get 413).
    #[arg(long, env = "DME_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// Longest song in seconds (longer ones get 413).
    #[arg(long, env = "DME_MAX_DURATION_S", default_value_t = DEFAULT_MAX_DURATION_S)]
    pub max_duration_s: f64,
    /// Bytes of uploads one client (its address; an IPv6 /64) may have in work, counted over all
    /// gateways; a new song beyond it gets 429 (a client with nothing in work is always served).
    #[arg(long, env = "DME_CLIENT_MAX_INFLIGHT_BYTES", default_value_t = DEFAULT_CLIENT_MAX_INFLIGHT_BYTES)]
    pub client_max_inflight_bytes: u64,
    /// Seconds of audio one client may have in work, counted like the bytes (429 beyond).
    #[arg(long, env = "DME_CLIENT_MAX_INFLIGHT_S", default_value_t = DEFAULT_CLIENT_MAX_INFLIGHT_S)]
    pub client_max_inflight_s: f64,
    /// Songs one client may have in work, counted like the bytes (429 beyond).
    #[arg(long, env = "DME_CLIENT_MAX_SONGS", default_value_t = DEFAULT_CLIENT_MAX_SONGS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub client_max_songs: usize,
    /// New songs one client may start per minute on this gateway (a sliding minute; 429 with
    /// `Retry-After` beyond). The same bytes again are an existing song and never count.
    #[arg(long, env = "DME_CLIENT_UPLOADS_PER_MINUTE", default_value_t = DEFAULT_CLIENT_UPLOADS_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_uploads_per_minute: u32,
    /// A bearer token with the admin role. When it or `DME_API_TOKENS_FILE` is set, every
    /// request but the health probes, the page's files and the API description needs
    /// `Authorization: Bearer <token>` (prefer the environment: a command line is visible to
    /// every user of the machine).
    #[arg(long, env = "DME_API_TOKEN", hide_env_values = true, value_parser = Token::parse)]
    pub api_token: Option<Token>,
    /// A file of tokens, one `<role> <token>` per line (role `admin` or `user`; blank lines and
    /// `#` comments ignored), read at start-up. A `user` token may do everything but
    /// `POST /reset` and `DELETE`.
    #[arg(long, env = "DME_API_TOKENS_FILE", value_parser = crate::auth::parse_tokens_file)]
    pub api_tokens_file: Option<TokensFile>,
    /// Share (0-1] of the object store's maximum (`DME_STORE_MAX_BYTES`) beyond which new songs
    /// get 507: the store's use plus the new song's estimated peak must stay below it.
    #[arg(long, env = "DME_STORE_HIGH_WATER", default_value_t = DEFAULT_STORE_HIGH_WATER, value_parser = parse_share)]
    pub store_high_water: f64,
    /// The model an upload that names none is separated with (a name or a fingerprint, see
    /// `GET /models`); unset, the only model offered, else the only one with live separators
    /// (an upload must choose when that leaves several). `dme up` sets its own model.
    #[arg(long, env = "DME_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Where uploads are spooled while they arrive, and downloads kept.
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// Megabytes of the spool folder that may hold copies of recent downloads, so repeated
    /// and `Range` requests read a local file (least recently used evicted first; a file over
    /// a quarter of it is never kept); 0 keeps none.
    #[arg(long, env = "DME_DOWNLOAD_CACHE_MB", default_value_t = DEFAULT_DOWNLOAD_CACHE_MB)]
    pub download_cache_mb: u64,
    /// Seconds without progress after which a song in work is reported as `stalled`.
    #[arg(long, env = "DME_STALL_AFTER_S", default_value_t = DEFAULT_STALL_AFTER_S)]
    pub stall_after_s: u64,
    /// HTTP worker threads.
    #[arg(long, env = "DME_HTTP_WORKERS", default_value_t = DEFAULT_HTTP_WORKERS)]
    pub http_workers: usize,
    /// Connections each HTTP worker serves at once.
    #[arg(long, env = "DME_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a request body may pause before the request is answered 408.
    #[arg(long, env = "DME_BODY_IDLE_TIMEOUT_S", default_value_t = DEFAULT_BODY_IDLE_TIMEOUT_S)]
    pub body_idle_timeout_s: u64,
    /// Seconds a whole request body may take before the request is answered 408.
    #[arg(long, env = "DME_BODY_TIMEOUT_S", default_value_t = DEFAULT_BODY_TIMEOUT_S)]
    pub body_timeout_s: u64,
    /// Seconds a client has to send a request's head.
    #[arg(long, env = "DME_REQUEST_HEAD_TIMEOUT_S", default_value_t = DEFAULT_REQUEST_HEAD_TIMEOUT_S)]
    pub request_head_timeout_s: u64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "DME_KEEP_ALIVE_S", default_value_t = DEFAULT_KEEP_ALIVE_S)]
    pub keep_alive_s: u64,
    /// Seconds between the heartbeat comments of an event stream (`/events`,
    /// `/music/{id}/events`), which keep proxies from closing a quiet stream.
    #[arg(long, env = "DME_SSE_HEARTBEAT_S", default_value_t = DEFAULT_SSE_HEARTBEAT_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub sse_heartbeat_s: u64,
    /// Event streams this gateway serves at once; more get 503.
    #[arg(long, env = "DME_MAX_EVENT_STREAMS", default_value_t = DEFAULT_MAX_EVENT_STREAMS)]
    pub max_event_streams: usize,
}

/// Seconds between heartbeats on an event stream by default: common proxies close a response
/// that is silent for 60 s (nginx's `proxy_read_timeout`), and a comment every 15 s costs
/// nothing.
pub const DEFAULT_SSE_HEARTBEAT_S: u64 = 15;

/// Event streams served at once by default: each holds a connection and an ordered consumer on
/// the NATS server; 1 000 stays within the default connection limit (two workers of 1 024).
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 1_000;

/// Default of [`GatewayConfig::download_cache_mb`]: 1 GiB holds the four stems and a mix of
/// three or four 3-minute songs in float WAV (about 64 MB each), more in 16-bit WAV, FLAC or
/// MP3, the files a page plays from; the largest file kept is 256 MB (25 minutes of float WAV).
pub const DEFAULT_DOWNLOAD_CACHE_MB: u64 = 1024;

impl GatewayConfig {
    /// Bytes the download cache may hold ([`GatewayConfig::download_cache_mb`]).
    pub fn download_cache_bytes(&self) -> u64 {
        self.download_cache_mb.saturating_mul(1 << 20)
    }
}

/// A share of the store: a number in (0, 1].
fn parse_share(raw: &str) -> Result<f64, String> {
    let share: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number"))?;
    if share > 0.0 && share <= 1.0 {
        Ok(share)
    } else {
        Err(format!("`{raw}` is not in (0, 1]"))
    }
}

/// One entry of `DME_TRUSTED_PROXIES`: an address (a range of one) or a CIDR range.
fn parse_proxy(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{raw}` is neither an IP address nor a CIDR range"))
}

#[cfg(test)]
mod tests {
    use super::{parse_proxy, parse_share};

    #[test]
    fn a_high_water_mark_is_a_share_of_the_store() {
        assert_eq!(parse_share("0.8"), Ok(0.8));
        assert_eq!(parse_share("1"), Ok(1.0));
        for bad in ["0", "-0.5", "1.5", "NaN", "inf", "most"] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxies_are_addresses_or_ranges() {
        let one = parse_proxy("10.1.2.3").unwrap();
        assert!(one.contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(!one.contains(&"10.1.2.4".parse::<std::net::IpAddr>().unwrap()));
        let range = parse_proxy(" 10.0.0.0/8").unwrap();
        assert!(range.contains(&"10.200.0.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(parse_proxy("::1").is_ok());
        assert!(parse_proxy("localhost").is_err());
        assert!(parse_proxy("10.0.0.0/33").is_err());
    }
}

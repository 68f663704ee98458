//! Admitting a new song: who the client is, what the song will cost, and whether the client's
//! work in flight and the store leave room for it (429 and 507 otherwise).
//!
//! Everything is counted from what NATS holds, so every gateway decides alike: a client's work
//! in flight (songs, bytes and seconds of audio) is the sum over the music records that name it
//! ([`MusicRecord::client`]) and are neither done nor failed; the store's use is its stream's
//! byte count. Between reading those and writing the new record, this gateway holds a
//! [`Reservation`], so a burst of uploads to one gateway is counted exactly; uploads racing on
//! several gateways at the same moment can each pass once (a bounded overshoot: one upload per
//! gateway).
//!
//! The one thing counted per gateway, in memory, is the rate of new songs: each client's
//! admissions in the last minute ([`UploadRate`]), at most [`MAX_RATE_CLIENTS`] clients, so a
//! flood of addresses cannot grow it without bound. Behind a load balancer over `n` gateways a
//! client may start up to `n` times its rate. Only a new song counts: the same bytes again are
//! answered before admission.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, FORWARDED};
use actix_web::{HttpMessage, HttpRequest};
use dme_protocol::records::MusicRecord;

use crate::auth::Caller;
use crate::error::RETRY_AFTER_S;
use crate::{ApiError, AppState};

/// Sample rate of everything the pipeline stores (the splitter resamples to it).
const PIPELINE_RATE: f64 = 44_100.0;

/// Bytes of one stereo little-endian f32 frame: the unit of every intermediate object (segment
/// inputs, segment stems, float tracks and mixes).
const STEREO_F32_FRAME_BYTES: f64 = 2.0 * 4.0;

/// Segments overlap by a quarter (`stride = 0.75 · seg`), so their inputs and stems hold 4/3 of
/// the song (and the inputs of a fixed-length model up to one more window).
const SEGMENT_OVERLAP: f64 = 4.0 / 3.0;

/// The most a song of `duration_s` seconds (`size` bytes uploaded) can hold in the object store
/// at once, in bytes, if none of its audio compressed, for a model with `stems` stems and
/// segments of `segment` frames: the original, every segment's input (4/3 of the song plus one
/// window) and stems (4/3 of the song per stem; both live until the tracks are assembled), the
/// stem tracks and one mix, all stereo f32. About 4.1 MB per second of audio with four stems: an
/// upper bound, since intermediate audio may be stored compressed and is deleted as soon as the
/// tracks are assembled.
pub(crate) fn peak_store_bytes(size: u64, duration_s: f64, stems: usize, segment: u32) -> u64 {
    let frames = PIPELINE_RATE * duration_s.max(0.0);
    let stems = stems as f64;
    let inputs = frames * SEGMENT_OVERLAP + f64::from(segment);
    let separated = frames * SEGMENT_OVERLAP * stems;
    let tracks = frames * stems;
    let mix = frames;
    let audio = STEREO_F32_FRAME_BYTES * (inputs + separated + tracks + mix);
    size.saturating_add(audio as u64)
}

/// What one upload costs: counted against its client and against the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cost {
    /// Bytes of the upload.
    pub bytes: u64,
    /// Seconds of audio.
    pub seconds: f64,
    /// Its estimated peak in the object store ([`peak_store_bytes`]).
    pub store_bytes: u64,
}

/// The key a client's work is counted under: the identity of the API token that let the request
/// in (`token:<8 hex digits>`, `auth`), when tokens are configured; else the address the gateway
/// sees, or, from a trusted proxy (`DME_TRUSTED_PROXIES`), the nearest address the proxies
/// forwarded that is not itself a trusted proxy. An IPv6 client is keyed by its /64, the block
/// one host usually holds, so it cannot dodge its limit by changing addresses.
pub(crate) fn client_key(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> String {
    if let Some(caller) = req.extensions().get::<Caller>() {
        return caller.identity.clone();
    }
    let Some(peer) = req.peer_addr().map(|a| a.ip().to_canonical()) else {
        return "unknown".into();
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer;
    if is_trusted(&peer) {
        // Each proxy appends the address it received from: read right to left, the first
        // address that is not a trusted proxy is the client (anything left of it was written by
        // the client itself and proves nothing).
        for hop in forwarded_for(req.headers()).iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !is_trusted(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
    }
    key_of(client)
}

/// The addresses of the `for=` parameters of `Forwarded`, else of `X-Forwarded-For`, left to
/// right; `None` for an entry that is not an address (`unknown`, an obfuscated `_name`).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all(FORWARDED)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|entry| parse_node(entry.trim()))
        .collect()
}

/// An address from a forwarded node: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or
/// `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, _port) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    node.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// An IPv4 address as it is; an IPv6 address as its /64.
fn key_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
    }
}

/// Uploads this gateway has admitted whose records are not written yet, by ticket.
static PENDING: LazyLock<Mutex<Pending>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Pending {
    next: u64,
    held: HashMap<u64, (String, Cost)>,
}

/// An admitted upload's claim on its client's and the store's room, released when dropped
/// (once its record is written, or when the upload fails).
pub(crate) struct Reservation {
    ticket: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        PENDING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .held
            .remove(&self.ticket);
    }
}

/// Whether `client` may store a new song costing `cost`: 429 when the client's work in flight
/// (over every gateway) would pass `DME_CLIENT_MAX_SONGS`, `DME_CLIENT_MAX_INFLIGHT_BYTES` or
/// `DME_CLIENT_MAX_INFLIGHT_S` (a client with nothing in flight is always let through, so no
/// single song is refused for good), 413 when the song alone would pass the store's high-water
/// mark, 507 when the store's use plus the song would, and 429 when the client started
/// `DME_CLIENT_UPLOADS_PER_MINUTE` songs on this gateway in the last minute (`Retry-After` says
/// when the next may start). Only an admitted song counts against the rate.
///
/// # Errors
/// Those refusals, each with its reason; NATS failures as internal errors.
pub(crate) async fn admit(
    state: &AppState,
    client: &str,
    cost: Cost,
) -> Result<Reservation, ApiError> {
    let records = state.store.list_music().await?;
    let usage = state.store.file_usage().await?;
    let mut pending = PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    check_client(state, client, cost, &records, &pending)?;
    if let Some(max) = usage.max {
        let high_water = (max as f64 * state.config.store_high_water) as u64;
        if cost.store_bytes > high_water {
            return Err(ApiError::TooLarge(format!(
                "this song would take up to {} of store while it is separated, more than the {} \
                 the store accepts new work up to",
                human_bytes(cost.store_bytes),
                human_bytes(high_water)
            )));
        }
        let reserved: u64 = pending.held.values().map(|(_, c)| c.store_bytes).sum();
        let after = usage
            .used
            .saturating_add(reserved)
            .saturating_add(cost.store_bytes);
        if after > high_water {
            tracing::warn!(
                used = usage.used,
                reserved,
                song = cost.store_bytes,
                high_water,
                max,
                "store near full: new song refused"
            );
            return Err(ApiError::InsufficientStorage {
                reason: format!(
                    "the store is too full for a new song: it holds {} of at most {}, and this \
                     song may take up to {} while it is separated; songs already stored can \
                     still be downloaded; retry when songs in work have finished",
                    human_bytes(usage.used),
                    human_bytes(max),
                    human_bytes(cost.store_bytes)
                ),
                retry_after_s: RETRY_AFTER_S,
            });
        }
    }
    let per_minute = state.config.client_uploads_per_minute;
    RATE.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .admit(client, per_minute, Instant::now())
        .map_err(|wait| ApiError::TooManyRequests {
            reason: format!(
                "you started {per_minute} new song(s) in the last minute, the limit per client: \
                 the next may start in {} s",
                wait.as_secs()
            ),
            retry_after_s: wait.as_secs(),
        })?;
    let ticket = pending.next;
    pending.next += 1;
    pending.held.insert(ticket, (client.to_string(), cost));
    Ok(Reservation { ticket })
}

/// 429 when `client`'s songs in flight (records and this gateway's reservations) plus `cost`
/// pass either per-client limit.
fn check_client(
    state: &AppState,
    client: &str,
    cost: Cost,
    records: &[MusicRecord],
    pending: &Pending,
) -> Result<(), ApiError> {
    let recorded = records
        .iter()
        .filter(|r| r.in_flight() && r.client.as_deref() == Some(client))
        .map(|r| (r.size, r.duration_s));
    let reserved = pending
        .held
        .values()
        .filter(|(c, _)| c == client)
        .map(|(_, c)| (c.bytes, c.seconds));
    let (mut songs, mut bytes, mut seconds) = (0usize, 0u64, 0f64);
    for (b, s) in recorded.chain(reserved) {
        songs += 1;
        bytes = bytes.saturating_add(b);
        seconds += s;
    }
    let max_songs = state.config.client_max_songs;
    if songs >= max_songs {
        return Err(ApiError::TooManyRequests {
            reason: format!(
                "you have {songs} song(s) in work, the limit per client is {max_songs}: retry \
                 when one has finished"
            ),
            retry_after_s: RETRY_AFTER_S,
        });
    }
    let max_bytes = state.config.client_max_inflight_bytes;
    let max_s = state.config.client_max_inflight_s;
    if songs > 0 && (bytes.saturating_add(cost.bytes) > max_bytes || seconds + cost.seconds > max_s)
    {
        return Err(ApiError::TooManyRequests {
            reason: format!(
                "you have {songs} song(s) in work ({}, {:.0} s of audio); with this one that \
                 would pass the limit of {} and {:.0} s of audio in work per client: retry when \
                 one has finished",
                human_bytes(bytes),
                seconds,
                human_bytes(max_bytes),
                max_s
            ),
            retry_after_s: RETRY_AFTER_S,
        });
    }
    Ok(())
}

/// The window the upload rate is counted over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Most clients whose recent uploads a gateway remembers: 10 000 clients of 30 uploads a minute
/// take about 5 MB. Only admitted new songs add a client, each a real upload that passed every
/// other limit, so reaching it takes thousands of clients uploading within one minute; past it
/// the client that has been quiet longest is forgotten (and may start a minute's worth again).
pub(crate) const MAX_RATE_CLIENTS: usize = 10_000;

/// This gateway's count of each client's recent new songs.
static RATE: LazyLock<Mutex<UploadRate>> = LazyLock::new(Mutex::default);

/// Each client's admissions in the last [`RATE_WINDOW`] (a sliding window: exact, and at most
/// `per_minute` instants per client).
#[derive(Default)]
pub(crate) struct UploadRate {
    clients: HashMap<String, VecDeque<Instant>>,
}

impl UploadRate {
    /// Counts a new song of `client` at `now` if fewer than `per_minute` started in the minute
    /// before; else answers how long until the next may start (at least a second).
    fn admit(&mut self, client: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let per_minute = per_minute.max(1) as usize;
        let recent = |times: &VecDeque<Instant>| {
            times
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < RATE_WINDOW)
                .count()
        };
        if let Some(times) = self.clients.get_mut(client) {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= RATE_WINDOW)
            {
                times.pop_front();
            }
            // The limit may have been lowered since: the oldest that must leave the window.
            if times.len() >= per_minute {
                let oldest = times[times.len() - per_minute];
                let wait = (oldest + RATE_WINDOW).saturating_duration_since(now);
                return Err(Duration::from_secs(
                    wait.as_secs_f64().ceil().max(1.0) as u64
                ));
            }
            times.push_back(now);
            return Ok(());
        }
        if self.clients.len() >= MAX_RATE_CLIENTS {
            self.clients.retain(|_, times| recent(times) > 0);
        }
        if self.clients.len() >= MAX_RATE_CLIENTS {
            let quietest = self
                .clients
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(k, _)| k.clone());
            if let Some(quietest) = quietest {
                self.clients.remove(&quietest);
            }
        }
        self.clients
            .insert(client.to_string(), VecDeque::from([now]));
        Ok(())
    }
}

/// `1.5 GB`, `320 MB`, `12 kB`, `900 B` (decimal units, like the settings' defaults).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, size) in UNITS {
        if bytes as f64 >= size {
            return format!("{:.1} {unit}", bytes as f64 / size);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn proxies(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn a_client_is_its_address_unless_a_trusted_proxy_forwarded_it() {
        let direct = TestRequest::default()
            .peer_addr("192.0.2.7:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "10.9.9.9"))
            .to_http_request();
        assert_eq!(
            client_key(&direct, &[]),
            "192.0.2.7",
            "untrusted: headers ignored"
        );

        let trusted = proxies(&["10.0.0.0/8"]);
        let via_proxy = TestRequest::default()
            .peer_addr("10.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.0.0.2"))
            .to_http_request();
        assert_eq!(
            client_key(&via_proxy, &trusted),
            "198.51.100.4",
            "the nearest untrusted hop, not what the client wrote on the left"
        );

        let forwarded = TestRequest::default()
            .peer_addr("10.0.0.1:5000".parse().unwrap())
            .insert_header((
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8:1:2::9]:4711\";proto=https",
            ))
            .insert_header(("x-forwarded-for", "7.7.7.7"))
            .to_http_request();
        assert_eq!(
            client_key(&forwarded, &trusted),
            "2001:db8:1:2::/64",
            "Forwarded wins"
        );

        let obfuscated = TestRequest::default()
            .peer_addr("10.0.0.1:5000".parse().unwrap())
            .insert_header(("forwarded", "for=6.6.6.6, for=_hidden"))
            .to_http_request();
        assert_eq!(
            client_key(&obfuscated, &trusted),
            "10.0.0.1",
            "the proxy, not the client's words"
        );

        let v6 = TestRequest::default()
            .peer_addr("[2001:db8:aa:bb:1:2:3:4]:80".parse().unwrap())
            .to_http_request();
        assert_eq!(client_key(&v6, &[]), "2001:db8:aa:bb::/64");
        let mapped = TestRequest::default()
            .peer_addr("[::ffff:192.0.2.9]:80".parse().unwrap())
            .to_http_request();
        assert_eq!(client_key(&mapped, &[]), "192.0.2.9");
    }

    #[test]
    fn a_songs_peak_grows_with_its_length_and_stems() {
        assert_eq!(peak_store_bytes(1_000, 0.0, 4, 0), 1_000);
        assert_eq!(
            peak_store_bytes(1_000, 0.0, 4, 100),
            1_800,
            "one window of input"
        );
        let hour = peak_store_bytes(0, 3600.0, 4, 343_980);
        // 352,800 B/s × (4/3 × 5 + 4 + 1) × 3600 s, and one 7.8 s window
        assert!((14_800_000_000..14_900_000_000).contains(&hour), "{hour}");
        assert!(peak_store_bytes(0, 3600.0, 6, 343_980) > hour);
        assert_eq!(peak_store_bytes(5, f64::NAN, 4, 0), 5);
        assert_eq!(peak_store_bytes(u64::MAX, 1e30, 4, 0), u64::MAX);
    }

    #[test]
    fn a_client_starts_at_most_its_rate_in_any_minute() {
        let mut rate = UploadRate::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(rate.admit("a", 2, at(0)).is_ok());
        assert!(rate.admit("a", 2, at(10)).is_ok());
        assert_eq!(rate.admit("a", 2, at(20)), Err(Duration::from_secs(40)));
        assert!(rate.admit("b", 2, at(20)).is_ok(), "each client its own");
        assert!(
            rate.admit("a", 2, at(60)).is_ok(),
            "the first left the window"
        );
        assert_eq!(rate.admit("a", 2, at(61)), Err(Duration::from_secs(9)));
        assert_eq!(
            rate.admit("a", 1, at(65)),
            Err(Duration::from_secs(55)),
            "a lowered limit waits for the newest"
        );
    }

    #[test]
    fn the_rate_remembers_a_bounded_number_of_clients() {
        let mut rate = UploadRate::default();
        let t0 = Instant::now();
        for i in 0..MAX_RATE_CLIENTS {
            rate.admit(&format!("c{i}"), 1, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(1);
        rate.admit("new", 1, later).unwrap();
        assert_eq!(rate.clients.len(), MAX_RATE_CLIENTS, "one forgotten for it");
        assert!(rate.admit("new", 1, later).is_err());
        // A minute on, the idle ones are swept at once.
        let much_later = t0 + Duration::from_secs(120);
        rate.admit("newer", 1, much_later).unwrap();
        assert_eq!(rate.clients.len(), 1);
    }

    #[test]
    fn sizes_read_in_decimal_units() {
        assert_eq!(human_bytes(900), "900 B");
        assert_eq!(human_bytes(40_000_000_000), "40.0 GB");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}

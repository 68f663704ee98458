//! The mixer: puts separated segments back together into one track per stem, and mixes the
//! tracks a user selects.
//!
//! Consumes: [`subjects::WORK_SEPARATED`] (durable consumer
//! [`streams::MIXER_ASSEMBLE_CONSUMER`]) and [`subjects::WORK_MIX`] (durable consumer
//! [`streams::MIXER_MIX_CONSUMER`]), the segment stems in the object store.
//! Produces: each song's progress on its record (and a progress event per change), each
//! segment's finished part of every stem ([`objects::part`]) as soon as every segment up to it
//! is in, one float WAV per stem ([`objects::track`]) once every part is in, and one float WAV
//! per selection
//! ([`objects::mix`]); a song failed with the reason when one of its work items ran out of
//! deliveries without a verdict (`watchdog`, fed by [`streams::ADVISORY_STREAM`] through the
//! durable consumer [`streams::MIXER_ADVISORY_CONSUMER`], so an advisory published while no
//! mixer runs is handled when one starts).
//! Guarantees: idempotent: a segment reported twice counts once, in whatever order segments
//! arrive; each part blends its segment with the one before with demucs' triangular weights
//! ([`dme_segment::Blender::resume`]), holding only two segments in memory, so a song separated
//! by many workers equals the single-process result; an event is acked only after its effect is stored,
//! so a mixer killed mid-assembly is replaced by a redelivery that assembles again.
//!
//! # Layout
//! - `config`: [`MixerConfig`]. `error`: [`MixerError`] (start-up), [`MixError`] (a message).
//! - this file: the [`Mixer`] service.
//! - `assemble`: the handler of separated segments; makes a song's parts and joins them into
//!   its tracks.
//! - `turns`: one piece of work per song at a time in this process.
//! - `mixdown`: the handler of mix requests; sums selected tracks.
//! - `track_cache`: the tracks of recent songs kept decompressed in the spool folder, bounded
//!   (`DME_MIXER_TRACK_CACHE_MB`), so a re-mix downloads nothing.
//! - `watchdog`: the handler of max-deliveries advisories; fails the work item and its song.
//!
//! # Observability
//! The mixer is an instance of the NATS micro service [`subjects::SERVICE_MIXER`] (messages
//! handled, failures, in hand, over its three consumers); with `DME_METRICS_ADDR` it serves
//! `/metrics`, `/healthz` and `/readyz` (NATS connected).

mod assemble;
mod config;
mod error;
mod mixdown;
mod reconcile;
mod track_cache;
mod turns;
mod watchdog;

use std::sync::Arc;

use assemble::Assembler;
use async_nats::jetstream::consumer::PullConsumer;
pub use config::{MixerConfig, DEFAULT_ASSEMBLER_SLOTS};
use dme_audio::MODEL_SAMPLE_RATE;
#[cfg(doc)]
use dme_protocol::objects;
use dme_protocol::{streams, subjects};
use dme_storage::presence::{self, Presence, Tallied, Tally};
use dme_storage::work;
use dme_storage::Store;
use dme_telemetry::metrics::{MetricsServer, Readiness};
use dme_telemetry::Service;
pub use error::{MixError, MixerError};
use mixdown::Mixdown;
use reconcile::Reconciler;
use tokio_util::sync::CancellationToken;
use watchdog::Watchdog;

/// Mix requests handled at once: each streams a sum of a few tracks, and two keep one long mix
/// from holding up another.
const MIX_SLOTS: usize = 2;

/// The mixer service.
pub struct Mixer {
    separated: PullConsumer,
    mix_requests: PullConsumer,
    advisories: PullConsumer,
    assembler: Arc<Tallied<Assembler>>,
    mixdown: Arc<Tallied<Mixdown>>,
    watchdog: Arc<Tallied<Watchdog>>,
    reconciler: Reconciler,
    slots: usize,
    redelivery: streams::Redelivery,
    presence: Presence,
    /// Serves `/metrics`, `/healthz`, `/readyz` while the mixer lives (when configured).
    _metrics: Option<MetricsServer>,
}

/// Advisories handled at once: each is a few record updates.
const ADVISORY_SLOTS: usize = 1;

impl Service for Mixer {
    type Config = MixerConfig;
    type Error = MixerError;
    const NAME: &'static str = "mixer";

    async fn build(config: MixerConfig) -> Result<Mixer, MixerError> {
        let readiness = Readiness::pending(&["nats"]);
        let addr = config.metrics_addr.as_deref();
        let metrics = MetricsServer::start_if_set(addr, Self::NAME, readiness.clone())
            .await
            .map_err(|source| MixerError::Metrics {
                addr: addr.unwrap_or_default().to_string(),
                source,
            })?;
        let store = Store::connect_with(&config.nats, "dme-mixer").await?;
        readiness.set("nats", presence::connected(store.client()));
        let spool = config
            .spool
            .open(Self::NAME)
            .await
            .map_err(MixerError::Spool)?;
        let redelivery = config.redelivery();
        let separated = store
            .work_consumer(
                streams::MIXER_ASSEMBLE_CONSUMER,
                subjects::WORK_SEPARATED,
                redelivery,
            )
            .await?;
        let mix_requests = store
            .work_consumer(streams::MIXER_MIX_CONSUMER, subjects::WORK_MIX, redelivery)
            .await?;
        let advisories = store.advisory_consumer(redelivery).await?;
        let tally = Arc::new(Tally::default());
        let presence = Presence::start(
            store.client(),
            subjects::SERVICE_MIXER,
            "assembles separated segments into tracks and mixes selections",
            presence::metadata(metrics.as_ref().map(MetricsServer::addr), &[]),
            presence::tally_status(tally.clone()),
        )
        .await?;
        let watchdog = Arc::new(Watchdog {
            store: store.clone(),
        });
        let tracks = track_cache::TrackCache::new(spool.path(), config.track_cache_bytes())
            .map_err(MixerError::Spool)?;
        let mixdown = Mixdown {
            store: store.clone(),
            tracks: Arc::new(tracks),
        };
        let assembler = Arc::new(Assembler {
            store: store.clone(),
            spool,
            mixdown: mixdown.clone(),
        });
        Ok(Mixer {
            separated,
            mix_requests,
            advisories,
            assembler: Arc::new(Tallied::new(assembler, tally.clone())),
            mixdown: Arc::new(Tallied::new(Arc::new(mixdown), tally.clone())),
            watchdog: Arc::new(Tallied::new(watchdog, tally)),
            reconciler: Reconciler {
                store: store.clone(),
                after: config.reconcile_after(),
            },
            slots: config.slots,
            redelivery,
            presence,
            _metrics: metrics,
        })
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), MixerError> {
        tracing::info!("mixer ready");
        let redelivery = self.redelivery;
        tokio::join!(
            work::consume(
                self.separated,
                redelivery,
                self.slots,
                shutdown.clone(),
                self.assembler,
            ),
            work::consume(
                self.mix_requests,
                redelivery,
                MIX_SLOTS,
                shutdown.clone(),
                self.mixdown,
            ),
            work::consume(
                self.advisories,
                redelivery,
                ADVISORY_SLOTS,
                shutdown.clone(),
                self.watchdog,
            ),
            self.reconciler.run(shutdown.clone()),
        );
        self.presence.stop().await;
        tracing::info!("mixer stopped");
        Ok(())
    }
}

/// Stereo IEEE float WAV at the model rate: what tracks and mixes are stored as.
fn float_wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate: MODEL_SAMPLE_RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    }
}

/// The header [`hound::WavWriter`] writes before `samples` samples of [`float_wav_spec`]: its
/// own, with the two sizes it fills in at the end (the RIFF chunk's and the data chunk's).
pub(crate) fn wav_header(samples: u64) -> Result<Vec<u8>, hound::Error> {
    let data = u32::try_from(4 * samples).map_err(|_| hound::Error::TooWide)?;
    let mut header = std::io::Cursor::new(Vec::new());
    hound::WavWriter::new(&mut header, float_wav_spec())?.finalize()?;
    let mut header = header.into_inner();
    let riff = u32::try_from(header.len() - 8).map_err(|_| hound::Error::TooWide)?;
    let len = header.len();
    let riff = riff.checked_add(data).ok_or(hound::Error::TooWide)?;
    header[4..8].copy_from_slice(&riff.to_le_bytes());
    header[len - 4..].copy_from_slice(&data.to_le_bytes());
    Ok(header)
}

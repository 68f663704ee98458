use clap::Parser;
use dme_mixer::Mixer;
use dme_telemetry::Service;

/// dme mixer: assembles separated segments into stem tracks and mixes selections.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_mixer::MixerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init(Mixer::NAME);
    let cli = Cli::parse();
    dme_telemetry::serve::<Mixer>(cli.config, dme_telemetry::shutdown_token()).await?;
    Ok(())
}

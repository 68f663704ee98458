use clap::Parser;

/// dme mixer: assembles separated segments into stem tracks and mixes selections.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_mixer::MixerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init("mixer");
    let cli = Cli::parse();
    dme_mixer::run(cli.config, dme_telemetry::shutdown_token()).await?;
    Ok(())
}

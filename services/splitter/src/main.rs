use clap::Parser;
use dme_splitter::Splitter;
use dme_telemetry::Service;

/// dme splitter: decodes uploaded songs and cuts them into segments for the separators.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_splitter::SplitterConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init(Splitter::NAME);
    let cli = Cli::parse();
    dme_telemetry::serve::<Splitter>(cli.config, dme_telemetry::shutdown_token()).await?;
    Ok(())
}

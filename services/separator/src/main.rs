use clap::Parser;
use dme_separator::Separator;
use dme_telemetry::Service;

/// dme separator worker: runs the separation model on queued segments.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_separator::SeparatorConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init(Separator::NAME);
    let cli = Cli::parse();
    dme_telemetry::serve::<Separator>(cli.config, dme_telemetry::shutdown_token()).await?;
    Ok(())
}

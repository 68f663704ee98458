use clap::Parser;
use dme_gateway::Gateway;
use dme_telemetry::Service;

/// dme gateway: the HTTP API and web page.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_gateway::GatewayConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init(Gateway::NAME);
    let cli = Cli::parse();
    dme_telemetry::serve::<Gateway>(cli.config, dme_telemetry::shutdown_token()).await?;
    Ok(())
}

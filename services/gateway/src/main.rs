use clap::Parser;

/// dme gateway: the HTTP API and web page.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_gateway::GatewayConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init("gateway");
    let cli = Cli::parse();
    let app = dme_gateway::Application::build(cli.config).await?;
    app.run_until(dme_telemetry::shutdown_token()).await?;
    Ok(())
}

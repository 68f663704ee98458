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
    let shutdown = dme_telemetry::shutdown_token();
    let app = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        app = dme_gateway::Application::build(cli.config) => app?,
    };
    app.run_until(shutdown).await?;
    Ok(())
}

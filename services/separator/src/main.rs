use clap::Parser;

/// dme separator worker: runs the separation model on queued segments.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: dme_separator::SeparatorConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dme_telemetry::init("separator");
    let cli = Cli::parse();
    let shutdown = dme_telemetry::shutdown_token();
    dme_separator::run(cli.config, shutdown).await?;
    Ok(())
}

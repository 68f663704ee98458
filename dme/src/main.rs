//! `dme`: one binary for every dme process.
//!
//! - `dme up` runs the whole system on one machine: a nats-server of its own (unless
//!   `DME_NATS_URL` names one), then a gateway, a splitter, a mixer and `--separators N`
//!   separator processes; Ctrl-C or SIGTERM stops them all, cleanly.
//! - `dme gateway|splitter|separator|mixer` runs one service (as the `dme-<service>` binaries do),
//!   which is how more separators join from other machines.

mod up;

use clap::{Parser, Subcommand};

/// dme: a distributed music stem separator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on this machine.
    Up(up::UpConfig),
    /// Run the HTTP gateway.
    Gateway(dme_gateway::GatewayConfig),
    /// Run the splitter.
    Splitter(dme_splitter::SplitterConfig),
    /// Run one separator worker.
    Separator(dme_separator::SeparatorConfig),
    /// Run the mixer.
    Mixer(dme_mixer::MixerConfig),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let shutdown = || dme_telemetry::shutdown_token();
    match cli.command {
        Command::Up(config) => {
            dme_telemetry::init("dme");
            up::run(config, shutdown()).await?
        }
        Command::Gateway(config) => {
            dme_telemetry::init("gateway");
            let shutdown = shutdown();
            let app = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                app = dme_gateway::Application::build(config) => app?,
            };
            app.run_until(shutdown).await?
        }
        Command::Splitter(config) => {
            dme_telemetry::init("splitter");
            dme_splitter::run(config, shutdown()).await?
        }
        Command::Separator(config) => {
            dme_telemetry::init("separator");
            dme_separator::run(config, shutdown()).await?
        }
        Command::Mixer(config) => {
            dme_telemetry::init("mixer");
            dme_mixer::run(config, shutdown()).await?
        }
    }
    Ok(())
}

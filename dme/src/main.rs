//! `dme`: one binary for every dme process.
//!
//! - `dme up` runs the whole system on one machine: a nats-server of its own (unless
//!   `DME_NATS_URL` names one), then a gateway, a splitter, a mixer and `--separators N`
//!   separator processes; Ctrl-C or SIGTERM stops them all, cleanly.
//! - `dme gateway|splitter|separator|mixer` runs one service (as the `dme-<service>` binaries do),
//!   which is how more separators join from other machines.
//! - `dme separate|ls|status|jobs|workers|rm|reset` are the command line for users (`cli`): an
//!   HTTP client of any gateway.

mod cli;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dme_telemetry::Service;

/// dme: a distributed music stem separator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up and moved into the service: a large variant costs nothing here.
#[allow(clippy::large_enum_variant)]
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
    #[command(flatten)]
    User(cli::Command),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(config) => {
            dme_telemetry::init("dme");
            up::run(config, dme_telemetry::shutdown_token()).await?
        }
        Command::Gateway(config) => serve::<dme_gateway::Gateway>(config).await?,
        Command::Splitter(config) => serve::<dme_splitter::Splitter>(config).await?,
        Command::Separator(config) => serve::<dme_separator::Separator>(config).await?,
        Command::Mixer(config) => serve::<dme_mixer::Mixer>(config).await?,
        Command::User(command) => return Ok(cli::run(command).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one service as its own binary would.
async fn serve<S: Service>(config: S::Config) -> Result<(), S::Error> {
    dme_telemetry::init(S::NAME);
    dme_telemetry::serve::<S>(config, dme_telemetry::shutdown_token()).await
}

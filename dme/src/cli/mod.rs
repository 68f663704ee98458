//! The command line for users: `dme separate`, `ls`, `status`, `jobs`, `workers`, `models`, `rm`
//! and `reset`. It speaks only the gateway's HTTP API (no NATS, nothing of the services' code),
//! so it works against any dme gateway, here or remote (`--url`, else `DME_URL`); the one
//! exception is `dme models add`, an operator's command that registers a model over NATS.
//!
//! Every command prints what a person needs on stdout, or with `--json` what a script needs
//! (the API's JSON) and nothing else; progress and errors go to stderr; the exit code says
//! whose fault a failure is ([`client::Exit`]).
//!
//! Layout:
//! - `client`: the HTTP client, and every failure as a [`client::CliError`] with its exit code;
//! - `events`: a song's Server-Sent Events, parsed, resumed after a drop;
//! - `separate`: `dme separate`: upload, select, follow, write the files;
//! - `progress`: a bar per file on a terminal, one line per step otherwise;
//! - `songs`: `ls`, `status`, `rm`; `jobs`: `jobs`; `system`: `workers`, `reset`;
//! - `models`: `models`, `models add`;
//! - `output`: tables and JSON on stdout.

/// The exit codes, as every command's `--help` ends (a macro, so it can be `concat!`ed).
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0  done
  2  bad input: a usage error, an unreadable file, an unknown stem, or a request the server
     refused (4xx, e.g. not audio, too long, no such song)
  3  the server failed: a 5xx answer, or a song whose separation failed (its error is shown)
  4  cannot connect to the server, or the connection broke"
    };
}

mod client;
mod events;
mod jobs;
mod models;
mod output;
mod progress;
mod separate;
mod songs;
mod system;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use client::DEFAULT_URL;

/// Where the gateway is, and how to print: what every command takes.
#[derive(Args, Clone)]
pub struct Server {
    /// The gateway's URL.
    #[arg(long, env = "DME_URL", default_value = DEFAULT_URL, value_name = "URL")]
    url: String,
    /// The API token, for a gateway that requires one (sent as `Authorization: Bearer`).
    /// Prefer `DME_TOKEN`: a command line is visible to other users of the machine.
    #[arg(long, env = "DME_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Print JSON for scripts on stdout (the API's answers; for `separate`, the files
    /// written), and nothing else.
    #[arg(long)]
    json: bool,
}

/// A command about one song.
#[derive(Args)]
pub struct SongArgs {
    /// The song's id (`dme ls` lists them).
    #[arg(value_name = "ID")]
    id: u64,
    #[command(flatten)]
    server: Server,
}

/// `dme jobs [ID]`.
#[derive(Args)]
pub struct JobsArgs {
    /// Only the jobs of this song.
    #[arg(value_name = "ID")]
    id: Option<u64>,
    #[command(flatten)]
    server: Server,
}

/// `dme reset`.
#[derive(Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    server: Server,
}

/// `dme models [add FILE]`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
    #[command(flatten)]
    server: Server,
}

/// What `dme models` does besides listing.
#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Offer a model: load it (checking the separators' contract) and register it over NATS,
    /// so uploads for it are accepted and wait in the queue until a separator of it runs.
    #[command(after_help = exit_codes!())]
    Add(models::AddArgs),
}

/// The user commands.
#[derive(Subcommand)]
pub enum Command {
    /// Separate audio files into stems on a dme server, and mix the stems you keep.
    #[command(after_help = separate::HELP)]
    Separate(separate::SeparateArgs),
    /// List the songs on the server.
    #[command(after_help = exit_codes!())]
    Ls(Server),
    /// Show one song: state, progress, stems and the links to its files.
    #[command(after_help = exit_codes!())]
    Status(SongArgs),
    /// List separation jobs (one per segment): every song's, or song ID's.
    #[command(after_help = exit_codes!())]
    Jobs(JobsArgs),
    /// List the workers serving the system, with their stats.
    #[command(after_help = exit_codes!())]
    Workers(Server),
    /// List the models offered (name, fingerprint, stems, live separators, the default);
    /// `dme models add FILE` offers one.
    #[command(after_help = exit_codes!())]
    Models(ModelsArgs),
    /// Delete a song: its record, jobs, files and queued work.
    #[command(after_help = exit_codes!())]
    Rm(SongArgs),
    /// Delete every song, job and file on the server.
    #[command(after_help = exit_codes!())]
    Reset(ResetArgs),
}

/// Runs a user command; failures are printed on stderr, and said by the exit code.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Separate(args) => separate::run(args).await,
        Command::Ls(server) => songs::list(&server).await,
        Command::Status(args) => songs::status(&args.server, args.id).await,
        Command::Jobs(args) => jobs::list(&args.server, args.id).await,
        Command::Workers(server) => system::workers(&server).await,
        Command::Models(args) => match &args.command {
            None => models::list(&args.server).await,
            Some(ModelsCommand::Add(add)) => models::add(add).await,
        },
        Command::Rm(args) => songs::remove(&args.server, args.id).await,
        Command::Reset(args) => system::reset(&args.server, args.yes).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, client::CliError::Reported(_)) {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit() as u8)
        }
    }
}

//! `dme workers` and `dme reset`: the system as a whole.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::Value;

use super::client::{CliError, Client};
use super::output::{self, cell, compact, Table};
use super::Server;

/// `dme workers`: `GET /workers`, a table of every service instance and its stats.
///
/// # Errors
/// The request's; a gateway without `/workers` (404) is [`CliError::Server`]: this CLI needs a
/// newer server.
pub async fn workers(server: &Server) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    let workers = listing(&client, "/workers", "workers").await?;
    if server.json {
        return output::json(&workers);
    }
    let workers = workers.as_array().cloned().unwrap_or_default();
    if workers.is_empty() {
        return output::line("no workers");
    }
    let mut table = Table::new(&["SERVICE", "ID", "VERSION", "STATS"]);
    for w in &workers {
        table.row(vec![
            cell(&w["service"]),
            cell(&w["id"]),
            cell(&w["version"]),
            compact(&w["stats"]),
        ]);
    }
    table.print()
}

/// `dme reset`: `POST /reset`, after the user confirms (or with `--yes`).
///
/// # Errors
/// [`CliError::Usage`] without `--yes` when stdin is not a terminal, or when the user does
/// not confirm; the request's.
pub async fn reset(server: &Server, yes: bool) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(
                "reset deletes everything: confirm with --yes (stdin is not a terminal to ask on)"
                    .into(),
            ));
        }
        eprint!(
            "Delete every song, job and file on {}? Type `yes` to confirm: ",
            client.base()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::local(std::path::Path::new("stdin"), e))?;
        if answer.trim() != "yes" {
            return Err(CliError::Usage("not confirmed: nothing was deleted".into()));
        }
    }
    let answer: Value = client.post_json("/reset", None).await?;
    if server.json {
        return output::json(&answer);
    }
    output::line(&format!(
        "reset {}: every song, job and file deleted",
        client.base()
    ))
}

/// `GET path`, a listing of `noun` that older gateways do not serve: their 404 says so.
///
/// # Errors
/// As [`Client::get_json`], a 404 as the server's error naming the older gateway.
pub(crate) async fn listing(
    client: &Client,
    path: &str,
    noun: &str,
) -> Result<serde_json::Value, CliError> {
    match client.get_json(path).await {
        Err(CliError::Refused {
            status: 404,
            what,
            message,
        }) => Err(CliError::Server {
            what,
            status: 404,
            message: format!(
                "{message}: this gateway does not list {noun} (it is older than this CLI)"
            ),
        }),
        other => other,
    }
}

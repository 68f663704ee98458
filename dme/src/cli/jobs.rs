//! `dme jobs [ID]`: the separation jobs, one per segment of a song.

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::client::{CliError, Client};
use super::output::{self, cell, Table};
use super::Server;

/// Job records read at once: `GET /job` lists ids only, so each is one small request; eight
/// in flight list a few thousand jobs in a second without crowding the gateway.
const JOB_READS_IN_FLIGHT: usize = 8;

/// `dme jobs [ID]`: every job (`GET /job`, then `GET /job/{id}` for each), or those of song
/// `music`; sorted by song and segment.
///
/// # Errors
/// The requests'; with `music`, 404 when there is no such song.
pub async fn list(server: &Server, music: Option<u64>) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    if let Some(id) = music {
        // An unknown song is an error, not an empty list.
        client.get_json(&format!("/music/{id}")).await?;
    }
    let ids = client.get_json("/job").await?;
    let ids: Vec<u64> = ids
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let client = &client;
    let mut jobs: Vec<Value> = futures::stream::iter(ids)
        .map(|id| async move {
            match client.get_json(&format!("/job/{id}")).await {
                Ok(job) => Ok(Some(job)),
                // Removed (a song deleted) between the list and the read.
                Err(CliError::Refused { status: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(JOB_READS_IN_FLIGHT)
        .try_filter_map(|job| async move { Ok(job) })
        .try_collect()
        .await?;
    jobs.retain(|j| music.is_none_or(|m| j["music_id"].as_u64() == Some(m)));
    jobs.sort_by_key(|j| {
        (
            j["music_id"].as_u64().unwrap_or(0),
            j["segment"].as_u64().unwrap_or(0),
            j["job_id"].as_u64().unwrap_or(0),
        )
    });
    if server.json {
        return output::json(&Value::Array(jobs));
    }
    if jobs.is_empty() {
        return output::line("no jobs");
    }
    let mut table = Table::new(&[
        "JOB", "SONG", "SEGMENT", "STATE", "WORKER", "ATTEMPTS", "SECONDS", "ERROR",
    ]);
    for j in &jobs {
        let seconds = j["time_ms"]
            .as_f64()
            .map_or_else(|| cell(&j["time"]), |ms| format!("{:.2}", ms / 1000.0));
        table.row(vec![
            cell(&j["job_id"]),
            cell(&j["music_id"]),
            cell(&j["segment"]),
            cell(&j["state"]),
            cell(&j["worker"]),
            cell(&j["attempts"]),
            seconds,
            if j["error"].is_null() {
                String::new()
            } else {
                cell(&j["error"])
            },
        ]);
    }
    table.print()
}

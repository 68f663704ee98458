//! `dme ls`, `dme status ID` and `dme rm ID`: the songs on the server.

use serde_json::Value;

use super::client::{CliError, Client};
use super::output::{self, cell, duration, Table};
use super::Server;

/// `dme ls`: `GET /music`, a table of songs (oldest first, as the server lists them).
///
/// # Errors
/// The request's ([`Client::get_json`]).
pub async fn list(server: &Server) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    let songs = client.get_json("/music").await?;
    if server.json {
        return output::json(&songs);
    }
    let songs = songs.as_array().cloned().unwrap_or_default();
    if songs.is_empty() {
        return output::line(&format!("no songs on {}", client.base()));
    }
    let mut table = Table::new(&["ID", "STATE", "DONE", "LENGTH", "STEMS", "NAME"]);
    for s in &songs {
        table.row(vec![
            cell(&s["music_id"]),
            cell(&s["state"]),
            format!("{}%", cell(&s["progress"])),
            duration(s["duration_s"].as_f64().unwrap_or(f64::NAN)),
            names(&s["tracks"]).len().to_string(),
            title(s),
        ]);
    }
    table.print()
}

/// `dme status ID`: `GET /music/{id}`, the song's state and links.
///
/// # Errors
/// The request's; 404 (no such song) is [`CliError::Refused`].
pub async fn status(server: &Server, id: u64) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    let song = client.get_json(&format!("/music/{id}")).await?;
    if server.json {
        return output::json(&song);
    }
    let mut rows: Vec<(String, String)> = vec![
        (
            "song".into(),
            format!("{} {}", cell(&song["music_id"]), title(&song)),
        ),
        ("state".into(), state(&song)),
        (
            "length".into(),
            duration(song["duration_s"].as_f64().unwrap_or(f64::NAN)),
        ),
        ("stems".into(), names(&song["tracks"]).join(", ")),
    ];
    let (ready, length) = (song["ready_s"].as_f64(), song["duration_s"].as_f64());
    if let (Some(ready), Some(length), true) = (
        ready,
        length,
        song["instruments"].as_array().is_none_or(Vec::is_empty),
    ) {
        if ready > 0.0 {
            rows.push((
                "playable".into(),
                format!(
                    "the first {} of {} (GET /music/{}/track/<track_id>/prefix)",
                    duration(ready),
                    duration(length),
                    cell(&song["music_id"])
                ),
            ));
        }
    }
    if let Some(error) = song["error"].as_str() {
        rows.push(("error".into(), error.to_string()));
    }
    for i in song["instruments"].as_array().into_iter().flatten() {
        rows.push((cell(&i["name"]), cell(&i["track"])));
    }
    if let Some(mix) = song["final"].as_str() {
        rows.push(("mix".into(), format!("{mix} ({})", selection(&song))));
    }
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let text: Vec<String> = rows
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect();
    output::line(&text.join("\n"))
}

/// `dme rm ID`: `DELETE /music/{id}`.
///
/// # Errors
/// The request's; 404 (no such song) is [`CliError::Refused`].
pub async fn remove(server: &Server, id: u64) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    let answer = client.delete_json(&format!("/music/{id}")).await?;
    if server.json {
        return output::json(&answer);
    }
    output::line(&format!("deleted song {id}"))
}

/// "name" or "band - name".
fn title(song: &Value) -> String {
    let name = song["name"].as_str().unwrap_or_default();
    match song["band"].as_str() {
        Some(band) if !band.is_empty() => format!("{band} - {name}"),
        _ => name.to_string(),
    }
}

/// `separating, 45% (3 of 7 segments)`.
fn state(song: &Value) -> String {
    let mut text = format!("{}, {}%", cell(&song["state"]), cell(&song["progress"]));
    if let (Some(done), Some(of)) = (song["segments_done"].as_u64(), song["segments"].as_u64()) {
        if of > 0 {
            text.push_str(&format!(" ({done} of {of} segments)"));
        }
    }
    text
}

/// The names of `tracks` (`[{name, track_id}]`).
fn names(tracks: &Value) -> Vec<String> {
    tracks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

/// The latest selection, for people: "vocals -3 dB, drums".
fn selection(song: &Value) -> String {
    let tracks = song["tracks"].as_array().cloned().unwrap_or_default();
    let gains = song["gains_db"].as_array().cloned().unwrap_or_default();
    song["selection"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, id)| {
            let name = tracks
                .iter()
                .find(|t| &t["track_id"] == id)
                .map_or_else(|| cell(id), |t| cell(&t["name"]));
            match gains.get(i).and_then(Value::as_f64) {
                Some(db) if db != 0.0 => format!("{name} {db:+} dB"),
                _ => name,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

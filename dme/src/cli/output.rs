//! What goes to stdout: aligned tables and short lines for people, JSON for scripts (`--json`),
//! and nothing else.

use std::io::Write;

use serde_json::Value;

use super::client::CliError;

/// Prints `value` as JSON, pretty, on stdout.
///
/// # Errors
/// [`CliError::Local`] when stdout cannot be written.
pub fn json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    line(&text)
}

/// Prints one line on stdout. A reader that closed the pipe early (`dme ls | head -1`) wanted
/// no more: that is not an error, as for any Unix tool.
///
/// # Errors
/// [`CliError::Local`] when stdout cannot be written (a full disk, say).
pub fn line(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::local(std::path::Path::new("stdout"), e))
        }
        _ => Ok(()),
    }
}

/// A table: a header row and rows of cells, printed with each column as wide as its widest
/// cell (the last column is not padded).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.pop();
        out
    }

    /// Prints the table on stdout.
    ///
    /// # Errors
    /// As [`line`].
    pub fn print(&self) -> Result<(), CliError> {
        line(&self.render())
    }
}

/// A JSON value as a short cell: strings bare, `null` as `-`, numbers as they are (floats to
/// at most three decimals).
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => {
                let text = format!("{f:.3}");
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// An object as `key=value` pairs on one line, nested objects flattened with dots
/// (`segments=12 model.name=htdemucs`); anything else as [`cell`].
pub fn compact(value: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (k, v) in fields {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other if prefix.is_empty() => out.push(cell(other)),
            other => out.push(format!("{prefix}={}", cell(other))),
        }
    }
    let mut parts = Vec::new();
    walk("", value, &mut parts);
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// Seconds as `m:ss` (or `h:mm:ss`), to the second.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let mut t = Table::new(&["ID", "STATE", "NAME"]);
        t.row(vec!["7".into(), "separating".into(), "a song".into()]);
        t.row(vec!["12345".into(), "done".into(), "b".into()]);
        assert_eq!(
            t.render(),
            "ID     STATE       NAME\n7      separating  a song\n12345  done        b"
        );
    }

    #[test]
    fn cells_and_compact_objects_are_short() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("x")), "x");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(0.12345)), "0.123");
        assert_eq!(cell(&json!(2.5)), "2.5");
        assert_eq!(cell(&json!(2.0)), "2");
        let stats =
            compact(&json!({"segments": 12, "model": {"name": "htdemucs"}, "mean_s": 0.25}));
        let mut parts: Vec<&str> = stats.split(' ').collect();
        parts.sort();
        assert_eq!(parts, ["mean_s=0.25", "model.name=htdemucs", "segments=12"]);
        assert_eq!(compact(&json!({})), "-");
        assert_eq!(duration(3.4), "0:03");
        assert_eq!(duration(3725.0), "1:02:05");
    }
}

//! Census: what the store holds, counted for gauges: work messages queued per kind, songs per
//! state. A census reads every music record, so its cost grows with the songs stored: the
//! gateway's `/metrics` runs one at most every few seconds (`CENSUS_MAX_AGE` there), never one
//! per scrape.

use std::collections::BTreeMap;

use dme_protocol::records::MusicState;
use dme_protocol::{streams, subjects};
use futures::TryStreamExt;

use crate::{nats, Result, Store};

/// Every kind of work, by its label (the subject's last word: `segment` for
/// [`subjects::WORK_SEGMENT`], whose subjects, one kind per model, all count as `segment`).
const WORK_KINDS: [&str; 4] = [
    subjects::WORK_UPLOADED,
    subjects::WORK_SEGMENT,
    subjects::WORK_SEPARATED,
    subjects::WORK_MIX,
];

/// Every state a song can be in.
const STATES: [MusicState; 5] = [
    MusicState::Queued,
    MusicState::Separating,
    MusicState::Mixing,
    MusicState::Done,
    MusicState::Failed,
];

/// The label of a work kind: its subject's last word.
fn kind_label(kind: &str) -> &str {
    kind.rsplit('.').next().unwrap_or(kind)
}

impl Store {
    /// Work messages in the work stream (waiting or in a worker's hands) per kind of work,
    /// labelled `uploaded`, `segment`, `separated`, `mix`; every kind present, 0 when none.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn queued_by_kind(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out: BTreeMap<&'static str, u64> =
            WORK_KINDS.iter().map(|k| (kind_label(k), 0)).collect();
        let stream = self
            .js
            .get_stream(streams::WORK_STREAM)
            .await
            .map_err(nats("get work stream"))?;
        let mut counts = stream
            .info_with_subjects(subjects::WORK_ALL)
            .await
            .map_err(nats("work stream subjects"))?;
        while let Some((subject, count)) = counts
            .try_next()
            .await
            .map_err(nats("work stream subjects"))?
        {
            let kind = WORK_KINDS.iter().find(|k| {
                subject
                    .strip_prefix(**k)
                    .is_some_and(|r| r.starts_with('.'))
            });
            if let Some(kind) = kind {
                *out.entry(kind_label(kind)).or_default() += u64::try_from(count).unwrap_or(0);
            }
        }
        Ok(out)
    }

    /// Songs per state (`queued`, `separating`, `mixing`, `done`, `failed`); every state
    /// present, 0 when none.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn songs_by_state(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out: BTreeMap<&'static str, u64> = STATES.iter().map(|s| (s.as_str(), 0)).collect();
        for record in self.list_music().await? {
            *out.entry(record.state.as_str()).or_default() += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_kinds_are_labelled_by_their_last_word() {
        let labels: Vec<&str> = WORK_KINDS.iter().map(|k| kind_label(k)).collect();
        assert_eq!(labels, ["uploaded", "segment", "separated", "mix"]);
    }
}

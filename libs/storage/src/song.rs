//! Song-level changes that several services make, so each is written once: the splitter, the
//! separators and the mixer all fail a song when a work item for it is given up.

use dme_protocol::messages::ProgressEvent;
use dme_protocol::MusicId;

use crate::{Result, Store};

/// Marks `music` failed with `reason` (unless it already is) and publishes its progress event.
/// A song that no longer exists (a reset) is left alone.
///
/// # Errors
/// On NATS failure.
pub async fn fail(store: &Store, music: MusicId, reason: &str) -> Result<()> {
    tracing::error!(%music, reason, "song failed");
    let mut changed = false;
    let record = store
        .update_music(music, |m| {
            changed = m.fail(reason);
            changed
        })
        .await?;
    if let (Some(record), true) = (record, changed) {
        store.publish_progress(&ProgressEvent::of(&record)).await;
    }
    Ok(())
}

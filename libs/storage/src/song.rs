//! Song-level changes that several services make, so each is written once: the splitter, the
//! separators and the mixer all fail a song when a work item for it is given up.

use dme_protocol::messages::ProgressEvent;
use dme_protocol::{Incarnation, MusicId};

use crate::{Result, Store};

/// Marks `music` failed with `reason` (unless it already is) and publishes its progress event.
/// A song that no longer exists, or whose record is of another `incarnation` (the song was
/// reset and uploaded again since the failed work was made), is left alone.
///
/// # Errors
/// On NATS failure.
pub async fn fail(
    store: &Store,
    music: MusicId,
    incarnation: Incarnation,
    reason: &str,
) -> Result<()> {
    let mut changed = false;
    let record = store
        .update_music(music, |m| {
            changed = m.incarnation == incarnation && m.fail(reason);
            changed
        })
        .await?;
    if changed {
        tracing::error!(%music, reason, "song failed");
    } else {
        tracing::info!(%music, reason, "work given up for a song that is gone or failed already");
    }
    if let (Some(record), true) = (record, changed) {
        store.publish_progress(&ProgressEvent::of(&record)).await;
    }
    Ok(())
}

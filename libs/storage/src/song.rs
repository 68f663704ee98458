//! Song-level changes that several services or ways in make, so each is written once: the
//! splitter, the separators and the mixer all fail a song when a work item for it is given up;
//! the gateway (and any other way in) starts, deletes and retries songs.

use dme_protocol::messages::{MusicUploaded, ProgressEvent};
use dme_protocol::records::{MusicRecord, MusicState};
use dme_protocol::{now_ms, objects, subjects, Incarnation, JobId, MusicId};

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

/// Publishes the upload event that starts `record`'s processing. Its message id carries the
/// record's incarnation, so publishing it again for the same life of the song is a no-op.
///
/// # Errors
/// On NATS failure.
pub async fn publish_uploaded(store: &Store, record: &MusicRecord) -> Result<()> {
    let uploaded = MusicUploaded {
        music_id: record.music_id,
        incarnation: record.incarnation,
    };
    store
        .publish(subjects::WORK_UPLOADED, &uploaded, Some(&uploaded.msg_id()))
        .await
}

/// Deletes one song: its record first (from then on every worker drops the song's work in hand),
/// its queued work, its job records and its objects. Other songs are not touched. False when
/// there was no such song.
///
/// # Errors
/// On NATS failure; what was deleted stays deleted, and deleting again finishes the job.
pub async fn delete(store: &Store, music: MusicId) -> Result<bool> {
    let Some(record) = store.music(music).await? else {
        return Ok(false);
    };
    store.delete_music(music).await?;
    store.drop_work(music).await?;
    forget_work(store, &record).await?;
    delete_objects(store, music, Scope::Song).await?;
    tracing::warn!(%music, name = %record.name, "song deleted");
    Ok(true)
}

/// Why a song cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryRefused {
    /// There is no such song.
    NotFound,
    /// Only a failed song is retried; this one is in the named state.
    NotFailed(MusicState),
    /// The stored original is gone (or not the file the record describes).
    OriginalGone,
}

/// Restarts a `failed` song from its stored original: a new incarnation of its record (work of
/// the failed one is dropped wherever it still is), back to `queued` with its selections kept
/// (they are mixed again once the stems are ready), and a new upload event.
///
/// # Errors
/// `Ok(Err(_))` when the song cannot be retried; `Err` on NATS failure.
pub async fn retry(
    store: &Store,
    music: MusicId,
) -> Result<std::result::Result<MusicRecord, RetryRefused>> {
    let Some(old) = store.music(music).await? else {
        return Ok(Err(RetryRefused::NotFound));
    };
    if old.state != MusicState::Failed {
        return Ok(Err(RetryRefused::NotFailed(old.state)));
    }
    if store.object_size(&objects::original(music)).await? != Some(old.size) {
        return Ok(Err(RetryRefused::OriginalGone));
    }
    let fresh = Incarnation::fresh();
    let mut refused = None;
    let record = store
        .update_music(music, |m| {
            if m.state != MusicState::Failed || m.incarnation != old.incarnation {
                refused = Some(RetryRefused::NotFailed(m.state));
                return false;
            }
            m.incarnation = fresh;
            m.state = MusicState::Queued;
            m.error = None;
            m.plan = None;
            m.separated.clear();
            m.parts = 0;
            m.tracks_ready = false;
            for mix in &mut m.mixes {
                mix.ready = false;
            }
            m.updated_ms = now_ms();
            true
        })
        .await?;
    let Some(record) = record else {
        return Ok(Err(RetryRefused::NotFound));
    };
    if let Some(refused) = refused {
        return Ok(Err(refused));
    }
    // The failed life's job records and intermediate objects are of no use any more.
    forget_work(store, &old).await?;
    delete_objects(store, music, Scope::Life(old.incarnation)).await?;
    publish_uploaded(store, &record).await?;
    store.publish_progress(&ProgressEvent::of(&record)).await;
    tracing::warn!(%music, name = %record.name, "failed song retried");
    Ok(Ok(record))
}

/// Deletes the job records of `record`'s segments (those of its incarnation only).
async fn forget_work(store: &Store, record: &MusicRecord) -> Result<()> {
    let Some(plan) = record.plan else {
        return Ok(());
    };
    for seg in plan.segments() {
        let id = JobId::of(record.music_id, seg.index);
        if store
            .job(id)
            .await?
            .is_some_and(|j| j.incarnation == record.incarnation)
        {
            store.delete_job(id).await?;
        }
    }
    Ok(())
}

/// Which objects of a song [`delete_objects`] removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Everything of the song, its original too, unless the song exists again by the time the
    /// objects are listed (the same file uploaded right after its deletion): then that life's
    /// objects and the original stay.
    Song,
    /// What one life of the song made (segments, stems, tracks, mixes, their encodings).
    Life(Incarnation),
}

/// Deletes the objects of `music` in `scope`, from one listing of the bucket.
async fn delete_objects(store: &Store, music: MusicId, scope: Scope) -> Result<()> {
    let names = store.object_names("").await?;
    let doomed: Vec<String> = match scope {
        Scope::Life(incarnation) => {
            let prefixes = objects::incarnation_prefixes(music, incarnation);
            names
                .into_iter()
                .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
                .collect()
        }
        Scope::Song => {
            let again = store.music(music).await?;
            let keep = again.map(|r| objects::incarnation_prefixes(music, r.incarnation));
            let original = objects::original(music);
            names
                .into_iter()
                .filter(|n| objects::of_song(music, n))
                .filter(|n| match &keep {
                    None => true,
                    Some(kept) => *n != original && !kept.iter().any(|p| n.starts_with(p.as_str())),
                })
                .collect()
        }
    };
    for name in doomed {
        store.delete_object(&name).await?;
    }
    Ok(())
}

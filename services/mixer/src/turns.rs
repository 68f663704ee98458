//! One piece of work per song at a time in this process: handlers of the same song queue on
//! the song's lock ([`Turns::wait`]), and a song leaves the map with its last turn, so the map
//! stays as small as the songs in work.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use dme_protocol::MusicId;

/// Songs with work in hand, each with the lock its handlers queue on.
pub(crate) struct Turns(LazyLock<Mutex<HashMap<MusicId, Arc<tokio::sync::Mutex<()>>>>>);

impl Turns {
    pub(crate) const fn new() -> Self {
        Turns(LazyLock::new(Mutex::default))
    }

    /// Waits for `music`'s turn: held until the returned guard is dropped.
    pub(crate) async fn wait(&'static self, music: MusicId) -> Turn {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(music)
            .or_default()
            .clone();
        Turn {
            turns: self,
            music,
            _turn: lock.lock_owned().await,
        }
    }
}

/// A song's turn ([`Turns::wait`]).
pub(crate) struct Turn {
    turns: &'static Turns,
    music: MusicId,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut songs = self.turns.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Held by the map and by this turn only: nobody is queued behind it.
        if songs
            .get(&self.music)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            songs.remove(&self.music);
        }
    }
}

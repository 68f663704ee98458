//! The mixer's cache of tracks: stem tracks kept decompressed in this process's spool folder,
//! so a re-mix of a song reads its tracks from local files instead of downloading and
//! decompressing every one of them from the object store again (tens of MB each for a
//! 3-minute song).
//!
//! Bounded: the files it keeps together never exceed the bound given at start-up (a track
//! being downloaded and an evicted one still open are on disk beside them until done); adding
//! one evicts the least recently used first, and a file larger than the whole bound is never kept. Safe
//! whatever happens meanwhile: a mix opens the files it reads before it sums them, and a file
//! evicted (unlinked) while open stays readable to whoever holds it open. Keyed by object
//! name, which carries the song's incarnation: a track of a song reset and uploaded again has
//! another name, and a track's bytes never change under one name (assembly is deterministic),
//! so a cached file is always the object's bytes; the files of deleted songs are never asked
//! for again and leave as the least recently used. The folder goes with the spool folder when
//! the process stops.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Name of the cache's folder inside the process's spool folder.
const FOLDER: &str = "tracks";

/// Stem tracks kept as local files, least recently used evicted first (see the module docs).
#[derive(Debug)]
pub(crate) struct TrackCache {
    dir: PathBuf,
    bound: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    total: u64,
    /// Ticks at every use: an entry's `used` orders the evictions.
    clock: u64,
    /// Numbers the cached files: object names are not file names.
    next_file: u64,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    size: u64,
    used: u64,
}

impl TrackCache {
    /// A cache of at most `bound` bytes in a folder of its own under `spool` (created here).
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub(crate) fn new(spool: &Path, bound: u64) -> io::Result<TrackCache> {
        let dir = spool.join(FOLDER);
        std::fs::create_dir_all(&dir)?;
        Ok(TrackCache {
            dir,
            bound,
            state: Mutex::default(),
        })
    }

    /// Where a file to be [`TrackCache::insert`]ed is best written: in the cache's folder, so
    /// that adding it is a rename.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached file of object `name`, opened, or `None` when it is not cached.
    pub(crate) fn open(&self, name: &str) -> Option<File> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(name)?;
        entry.used = clock;
        match File::open(&entry.path) {
            Ok(file) => Some(file),
            Err(e) => {
                // Removed behind our back (an operator cleaning the spool): forget it.
                tracing::warn!(path = %entry.path.display(), error = %e, "a cached track is gone");
                let size = entry.size;
                state.entries.remove(name);
                state.total -= size;
                None
            }
        }
    }

    /// Takes the file at `path` (object `name`'s bytes, whole) into the cache, evicting the
    /// least recently used files until it fits; a file larger than the bound is removed
    /// instead. `path` is gone afterwards either way (open it first to keep reading it).
    ///
    /// # Errors
    /// When the file cannot be measured or moved (it is removed then).
    pub(crate) fn insert(&self, name: &str, path: &Path) -> io::Result<()> {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if size > self.bound {
            drop(state);
            return std::fs::remove_file(path);
        }
        if let Some(old) = state.entries.remove(name) {
            state.total -= old.size;
            let _ = std::fs::remove_file(&old.path);
        }
        while state.total + size > self.bound {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = state.entries.remove(&oldest) {
                state.total -= e.size;
                let _ = std::fs::remove_file(&e.path);
            }
        }
        state.next_file += 1;
        let to = self.dir.join(format!("{}.wav", state.next_file));
        if let Err(e) = std::fs::rename(path, &to) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        state.clock += 1;
        let used = state.clock;
        state.total += size;
        state.entries.insert(
            name.to_string(),
            Entry {
                path: to,
                size,
                used,
            },
        );
        Ok(())
    }

    /// Bytes held now.
    #[cfg(test)]
    fn total(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: usize) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; bytes]).unwrap();
        path
    }

    fn folder_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn stays_within_its_bound_evicting_the_least_recently_used() {
        let spool = tempfile::tempdir().unwrap();
        let cache = TrackCache::new(spool.path(), 250).unwrap();
        let dir = cache.dir().to_path_buf();
        cache.insert("a", &file(&dir, "in-a", 100)).unwrap();
        cache.insert("b", &file(&dir, "in-b", 100)).unwrap();
        // `a` used after `b`: `b` is the one to go.
        let held = cache.open("a").expect("a is cached");
        cache.insert("c", &file(&dir, "in-c", 100)).unwrap();
        assert!(cache.open("b").is_none());
        assert!(cache.open("a").is_some() && cache.open("c").is_some());
        assert_eq!(cache.total(), 200);
        assert_eq!(folder_bytes(&dir), 200);
        // Larger than the whole bound: never kept, nothing evicted for it.
        let big = file(&dir, "in-big", 300);
        cache.insert("big", &big).unwrap();
        assert!(cache.open("big").is_none() && !big.exists());
        assert_eq!(cache.total(), 200);
        // A file evicted while open stays readable to its holder.
        cache.insert("d", &file(&dir, "in-d", 200)).unwrap();
        assert!(cache.open("a").is_none() && cache.open("c").is_none());
        assert_eq!(folder_bytes(&dir), 200);
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &held, &mut bytes).unwrap();
        assert_eq!(bytes, vec![7u8; 100]);
    }
}

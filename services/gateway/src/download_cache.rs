//! The gateway's cache of downloads: files recently downloaded (a track or mix in one format)
//! kept whole on local disk, in this process's spool folder, so that a download asked for
//! again, and above all a `Range` request (players ask for small ranges, again and again), is
//! read from a local file at its offset instead of from the object store, a chunk at a time
//! from the first byte.
//!
//! A download's first request streams from the store as ever and starts a copy of the file into
//! the cache beside it ([`DownloadCache::fill`], at most [`MAX_CONCURRENT_FILLS`] at once, one
//! per file); later requests find it there.
//!
//! Bounded: the files it keeps together never exceed the bound given at start-up (least
//! recently used evicted first; copies being filled, at most [`MAX_CONCURRENT_FILLS`], and
//! evicted files still open are on disk beside them until done), and a file larger than a quarter of it is never kept, so one long track
//! cannot push out everything else. Safe whatever happens meanwhile: a request opens the file
//! it serves under the cache's lock, and a file evicted (unlinked) while open stays readable
//! to whoever holds it. Never stale: entries are keyed by object name and format, and the
//! object name carries the song's incarnation (random per life of a song), under which the
//! bytes never change; a download is looked up here only once the song's current record names
//! that object, so the file of a song deleted, or reset and uploaded again, is never served
//! (it leaves as the least recently used). The folder goes with the spool folder when the
//! gateway stops.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Name of the cache's folder inside the process's spool folder.
pub const FOLDER: &str = "downloads";

/// Copies into the cache running at once: each reads a whole file from the object store, so
/// more would only take bandwidth from the downloads themselves.
pub const MAX_CONCURRENT_FILLS: usize = 2;

/// Bytes of each write while a file is copied into the cache.
const FILL_BUFFER_BYTES: usize = 256 * 1024;

/// A cached download, opened.
#[derive(Debug)]
pub struct Cached {
    /// The file, open: readable however long it is held.
    pub file: File,
    /// Its length.
    pub size: u64,
    /// The content digest it was served with (see `encodings::Download::digest`).
    pub digest: Option<String>,
}

/// Downloads kept as local files (see the module docs).
#[derive(Debug)]
pub struct DownloadCache {
    dir: PathBuf,
    bound: u64,
    state: Mutex<State>,
    fills: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    total: u64,
    /// Ticks at every use: an entry's `used` orders the evictions.
    clock: u64,
    /// Numbers the cached files: keys are not file names.
    next_file: u64,
    /// Keys being copied in now.
    filling: HashSet<String>,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    size: u64,
    digest: Option<String>,
    used: u64,
}

impl DownloadCache {
    /// A cache of at most `bound` bytes in a folder of its own under `spool` (created here);
    /// a bound of 0 caches nothing.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn new(spool: &Path, bound: u64) -> io::Result<DownloadCache> {
        let dir = spool.join(FOLDER);
        std::fs::create_dir_all(&dir)?;
        Ok(DownloadCache {
            dir,
            bound,
            state: Mutex::default(),
            fills: Arc::new(Semaphore::new(MAX_CONCURRENT_FILLS)),
        })
    }

    /// The cached file of `key`, opened, or `None`.
    pub fn get(&self, key: &str) -> Option<Cached> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(key)?;
        entry.used = clock;
        match File::open(&entry.path) {
            Ok(file) => Some(Cached {
                file,
                size: entry.size,
                digest: entry.digest.clone(),
            }),
            Err(e) => {
                // Removed behind our back (an operator cleaning the spool): forget it.
                tracing::warn!(path = %entry.path.display(), error = %e, "a cached download is gone");
                let size = entry.size;
                state.entries.remove(key);
                state.total -= size;
                None
            }
        }
    }

    /// Largest file kept: a quarter of the bound.
    fn max_entry(&self) -> u64 {
        self.bound / 4
    }

    /// Copies the file of `key` (`size` bytes with `digest`) into the cache in the background,
    /// reading it from the reader `open` makes, unless it is cached or being copied already,
    /// larger than a quarter of the bound, or [`MAX_CONCURRENT_FILLS`] copies are running. A
    /// copy that fails or comes out of another length leaves nothing behind.
    pub fn fill<F, R>(self: &Arc<Self>, key: &str, size: u64, digest: Option<String>, open: F)
    where
        F: std::future::Future<Output = io::Result<R>> + 'static,
        R: AsyncRead + Unpin,
    {
        if size == 0 || size > self.max_entry() {
            return;
        }
        let Ok(slot) = self.fills.clone().try_acquire_owned() else {
            return;
        };
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.entries.contains_key(key) || !state.filling.insert(key.to_string()) {
                return;
            }
        }
        let (cache, key) = (self.clone(), key.to_string());
        // The reader may not be `Send` (a download's body): the copy runs on this worker.
        actix_web::rt::spawn(async move {
            let _slot = slot;
            let part = cache.dir.join(format!("part-{}", uuid_like()));
            let copied = copy_to(open, &part, size).await;
            let inserted = copied.and_then(|()| cache.insert(&key, &part, size, digest));
            if let Err(e) = inserted {
                let _ = std::fs::remove_file(&part);
                tracing::debug!(key, error = %e, "a download was not cached");
            }
            cache
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .filling
                .remove(&key);
        });
    }

    /// Takes the file at `path` (`size` bytes) into the cache as `key`, evicting the least
    /// recently used files until it fits.
    fn insert(&self, key: &str, path: &Path, size: u64, digest: Option<String>) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if size > self.max_entry() {
            return Err(io::Error::other("larger than a quarter of the cache"));
        }
        if let Some(old) = state.entries.remove(key) {
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
        let to = self.dir.join(format!("{}", state.next_file));
        std::fs::rename(path, &to)?;
        state.clock += 1;
        let used = state.clock;
        state.total += size;
        state.entries.insert(
            key.to_string(),
            Entry {
                path: to,
                size,
                digest,
                used,
            },
        );
        Ok(())
    }

    /// Whether `key` is being copied in now.
    #[cfg(test)]
    fn filling(&self, key: &str) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .filling
            .contains(key)
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

/// Copies what `open`'s reader yields to a new file at `path`; fails unless it is `size`
/// bytes.
async fn copy_to<F, R>(open: F, path: &Path, size: u64) -> io::Result<()>
where
    F: std::future::Future<Output = io::Result<R>>,
    R: AsyncRead + Unpin,
{
    let mut reader = open.await?;
    let file = tokio::fs::File::create(path).await?;
    let mut file = tokio::io::BufWriter::with_capacity(FILL_BUFFER_BYTES, file);
    let copied = tokio::io::copy(&mut reader, &mut file).await?;
    file.flush().await?;
    if copied != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {copied} bytes of {size}"),
        ));
    }
    Ok(())
}

/// A name no other part file of this process has.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// Fills `key` with `bytes` and waits (polling, with a deadline) until it is cached.
    async fn filled(cache: &Arc<DownloadCache>, key: &str, bytes: Vec<u8>) {
        let size = bytes.len() as u64;
        cache.fill(key, size, Some(format!("d-{key}")), async move {
            Ok(io::Cursor::new(bytes))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.get(key).is_none() {
            assert!(Instant::now() < deadline, "{key} was never cached");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn folder_bytes(cache: &DownloadCache) -> u64 {
        std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[actix_web::test]
    async fn keeps_within_its_bound_and_serves_what_was_filled() {
        let spool = tempfile::tempdir().unwrap();
        let cache = Arc::new(DownloadCache::new(spool.path(), 400).unwrap());
        filled(&cache, "a", vec![1; 100]).await;
        filled(&cache, "b", vec![2; 100]).await;
        filled(&cache, "c", vec![3; 100]).await;
        // `a` used last: `b` goes first.
        let mut held = cache.get("a").expect("a").file;
        filled(&cache, "d", vec![4; 100]).await;
        filled(&cache, "e", vec![5; 100]).await;
        assert!(cache.get("b").is_none());
        assert!(cache.total() <= 400 && folder_bytes(&cache) <= 400);
        let got = cache.get("e").expect("e");
        assert_eq!((got.size, got.digest.as_deref()), (100, Some("d-e")));
        // Over a quarter of the bound: never copied.
        cache.fill("big", 101, None, async {
            Ok(io::Cursor::new(vec![0; 101]))
        });
        assert!(!cache.filling("big") && cache.get("big").is_none());
        // A copy of another length than announced is dropped, leaving nothing.
        cache.fill("short", 50, None, async {
            Ok(io::Cursor::new(vec![0; 40]))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.filling("short") {
            assert!(Instant::now() < deadline, "the copy never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cache.get("short").is_none());
        assert!(cache.total() <= 400 && folder_bytes(&cache) <= 400);
        // Evicted while held: still readable by its holder.
        filled(&cache, "f", vec![6; 100]).await;
        filled(&cache, "g", vec![7; 100]).await;
        filled(&cache, "h", vec![8; 100]).await;
        let mut bytes = Vec::new();
        held.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, vec![1; 100]);
    }
}

//! Spool folders: where a service keeps its temporary files (an upload while it arrives, a
//! decoded song, tracks being blended or summed), so memory stays bounded whatever a song's
//! length, and nothing is left behind, not even by a killed process.
//!
//! A service's spool folder (`DME_SPOOL_DIR`, by default `<temp>/dme/<service>`) may be shared
//! by several processes (three splitters on a host, `dme up`). It holds:
//! - `.sweep.lock`: locked while a process sweeps the folder and creates its own, so those steps
//!   of processes sharing the folder never interleave;
//! - `dme-<pid>-<random>/`: one folder per running process ([`Spool`]), with a `.lock` file the
//!   process holds locked (`flock`, exclusive) for its whole life; every piece of work spools
//!   into a folder or file of its own in there ([`SpoolDir`], [`Spool::named_tempfile`]),
//!   removed when the work ends, on every path (success, error, panic, cancellation).
//!
//! The kernel releases the lock of a process that dies, however it dies; a process folder whose
//! lock is free is therefore abandoned, and [`Spool::open`] removes it (the sweep). A folder
//! whose lock is held belongs to a live process and is never touched.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The lock file in each process folder, held by its process for its whole life.
pub const PROCESS_LOCK: &str = ".lock";

/// The lock file in the spool folder held while sweeping and creating a process folder.
const SWEEP_LOCK: &str = ".sweep.lock";

/// How process folders are named (`dme-<pid>-<random>`): only such folders are ever swept, so
/// a spool folder pointed at a folder others use too (`/tmp`) loses nothing of theirs.
const PROCESS_PREFIX: &str = "dme-";

/// This process's folder in a service's spool folder: cheap to clone, removed with everything
/// in it when the last clone is dropped (a clean stop); a killed process's folder is removed by
/// the next [`Spool::open`] of that spool folder.
#[derive(Debug, Clone)]
pub struct Spool {
    folder: Arc<ProcessFolder>,
}

#[derive(Debug)]
struct ProcessFolder {
    path: PathBuf,
    /// Held locked until the folder is removed: the mark of a live process.
    _lock: File,
}

impl Drop for ProcessFolder {
    fn drop(&mut self) {
        // Removed before the lock is released (the fields drop after this), so no sweep can
        // race this removal.
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the spool folder");
        }
    }
}

/// What a sweep found in a spool folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Abandoned process folders removed.
    pub removed: usize,
    /// Folders of live processes kept.
    pub live: usize,
}

impl Spool {
    /// Opens the spool folder `root` (created if need be): removes the folders killed processes
    /// left there (see [`Spool::sweep`]) and creates this process's own folder, locked.
    /// Blocking: call it from a blocking thread or before the runtime starts
    /// ([`crate::SpoolArgs::open`] does).
    ///
    /// # Errors
    /// When `root` or the process folder cannot be created or locked (no permission, no space,
    /// a file system without locks); the error names the path.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let at = |path: &Path| {
            let path = path.display().to_string();
            move |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"))
        };
        fs::create_dir_all(root).map_err(at(root))?;
        let sweep_path = root.join(SWEEP_LOCK);
        let sweep_lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&sweep_path)
            .map_err(at(&sweep_path))?;
        // Held for the sweep and the creation below only (milliseconds, or as long as removing
        // what a killed process left takes).
        sweep_lock.lock().map_err(at(&sweep_path))?;
        let swept = Spool::sweep_locked(root).map_err(at(root))?;
        let path = tempfile::Builder::new()
            .prefix(&format!("{PROCESS_PREFIX}{}-", std::process::id()))
            .rand_bytes(6)
            .tempdir_in(root)
            .map_err(at(root))?
            .keep();
        let lock_path = path.join(PROCESS_LOCK);
        let lock = File::create_new(&lock_path).map_err(at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(at(&lock_path)(io::Error::other(
                    "locked by another process",
                )));
            }
            Err(TryLockError::Error(e)) => return Err(at(&lock_path)(e)),
        }
        drop(sweep_lock);
        if swept.removed > 0 {
            tracing::info!(
                root = %root.display(),
                removed = swept.removed,
                live = swept.live,
                "removed the spool folders of processes that did not stop cleanly"
            );
        }
        Ok(Spool {
            folder: Arc::new(ProcessFolder { path, _lock: lock }),
        })
    }

    /// Removes the process folders in `root` whose lock is free (their process is gone) and
    /// keeps those whose lock is held. Blocking.
    ///
    /// # Errors
    /// When `root` cannot be read or locked, or an abandoned folder cannot be removed.
    pub fn sweep(root: &Path) -> io::Result<Swept> {
        let sweep_lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(SWEEP_LOCK))?;
        sweep_lock.lock()?;
        Spool::sweep_locked(root)
    }

    /// [`Spool::sweep`] with the sweep lock held: no process is between creating its folder
    /// and locking it, so a folder without a held lock is abandoned.
    fn sweep_locked(root: &Path) -> io::Result<Swept> {
        let mut swept = Swept::default();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| n.starts_with(PROCESS_PREFIX));
            if !ours || !entry.file_type()?.is_dir() {
                continue;
            }
            if is_live(&entry.path())? {
                swept.live += 1;
                continue;
            }
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => swept.removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }

    /// This process's folder.
    pub fn path(&self) -> &Path {
        &self.folder.path
    }

    /// A new folder for one piece of work, removed when the returned value is dropped.
    ///
    /// # Errors
    /// When the folder cannot be created (the spool folder removed meanwhile, no space).
    pub fn tempdir(&self) -> io::Result<SpoolDir> {
        let dir = tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(self.path())?;
        Ok(SpoolDir {
            path: dir.keep(),
            spool: self.clone(),
        })
    }

    /// A new file for one piece of work, removed when the returned value (or its
    /// [`tempfile::TempPath`]) is dropped.
    ///
    /// # Errors
    /// As [`Spool::tempdir`].
    pub fn named_tempfile(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("work-")
            .tempfile_in(self.path())
    }
}

/// Whether the process folder at `dir` belongs to a live process: its lock file exists and is
/// locked.
fn is_live(dir: &Path) -> io::Result<bool> {
    let lock = match File::options().write(true).open(dir.join(PROCESS_LOCK)) {
        Ok(file) => file,
        // Killed between creating its folder and its lock file.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match lock.try_lock() {
        // Free: released by the kernel when its process died (unlocked again when `lock` drops).
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// A folder for one piece of work in this process's spool folder. Dropping it removes it with
/// everything in it: on a blocking thread when dropped inside a Tokio runtime (a song's
/// tracks are gigabytes, and unlinking them must not stall the executor), else at once.
#[derive(Debug)]
pub struct SpoolDir {
    path: PathBuf,
    /// Keeps the process folder (and its lock) alive while this folder is in use.
    spool: Spool,
}

impl SpoolDir {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a spool folder");
            }
            _ => {}
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The clone of the spool moved along keeps the process folder until then.
                let spool = self.spool.clone();
                runtime.spawn_blocking(move || {
                    remove();
                    drop(spool);
                });
            }
            Err(_) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process folder as a process killed by SIGKILL leaves it: its lock file unlocked.
    fn abandoned(root: &Path, name: &str, with_lock: bool) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(dir.join("work-x")).unwrap();
        fs::write(dir.join("work-x").join("left.f32"), [0u8; 64]).unwrap();
        if with_lock {
            fs::write(dir.join(PROCESS_LOCK), b"").unwrap();
        }
        dir
    }

    #[test]
    fn open_sweeps_abandoned_folders_and_keeps_locked_ones() {
        let root = tempfile::tempdir().unwrap();
        let live = Spool::open(root.path()).unwrap();
        let live_work = live.tempdir().unwrap();
        fs::write(live_work.path().join("left.f32"), [1u8; 64]).unwrap();
        let killed = abandoned(root.path(), "dme-1-killed", true);
        let half_made = abandoned(root.path(), "dme-2-half", false);
        let not_ours = abandoned(root.path(), "someone-else", false);

        let second = Spool::open(root.path()).unwrap();

        assert!(!killed.exists(), "a folder with a free lock is swept");
        assert!(
            !half_made.exists(),
            "a folder without its lock file is swept"
        );
        assert!(
            not_ours.exists(),
            "a folder dme did not name is never touched"
        );
        assert!(
            live_work.path().join("left.f32").exists(),
            "a live process's work survives another process's sweep"
        );
        assert!(second.path().join(PROCESS_LOCK).exists());
        assert_ne!(live.path(), second.path());
        assert_eq!(
            Spool::sweep(root.path()).unwrap(),
            Swept {
                removed: 0,
                live: 2
            }
        );
    }

    #[test]
    fn work_folders_and_the_process_folder_are_removed_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path()).unwrap();
        let process = spool.path().to_path_buf();
        let work = spool.tempdir().unwrap();
        let work_path = work.path().to_path_buf();
        fs::write(work_path.join("mix.wav"), [0u8; 16]).unwrap();
        let file = spool.named_tempfile().unwrap();
        let file_path = file.path().to_path_buf();
        drop(work);
        drop(file);
        assert!(!work_path.exists() && !file_path.exists());
        drop(spool);
        assert!(!process.exists());
        assert!(root.path().join(SWEEP_LOCK).exists());
    }

    #[test]
    fn a_sweep_after_a_clean_stop_finds_nothing() {
        let root = tempfile::tempdir().unwrap();
        drop(Spool::open(root.path()).unwrap());
        assert_eq!(Spool::sweep(root.path()).unwrap(), Swept::default());
    }
}

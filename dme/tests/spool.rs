//! Temporary files, proven against real processes: splitters sharing one spool folder never
//! remove each other's files, a splitter killed mid-split leaves its files only until the next
//! splitter starts, and a song whose splitter was killed still completes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dme_testkit::model as model_path;
use dme_testkit::system::{synth_wav, Options, System};
use dme_testkit::{wait_for, Process};

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Long enough that cutting it (copying the original, decoding to two spooled files, storing
/// 320 segment inputs) takes seconds, so the test finds the splitter in the middle of it.
const SONG_FRAMES: usize = 4 * 60 * 44_100;

/// How long a splitter may take to start, or a cut to begin (a loaded 2-core machine).
const START: Duration = Duration::from_secs(60);

/// The process folders in `spool`, by the pid in their name (`dme-<pid>-<random>`).
fn process_folders(spool: &Path) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<_> = std::fs::read_dir(spool)
        .map(|entries| entries.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid = name.strip_prefix("dme-")?.split('-').next()?.parse().ok()?;
            Some((pid, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The folder of process `pid` in `spool`, once it has made it.
async fn folder_of(spool: &Path, pid: u32) -> PathBuf {
    wait_for("the process's spool folder", START, || async {
        process_folders(spool)
            .into_iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, path)| path)
    })
    .await
}

/// The work folders (one per song being cut) in a process folder.
fn work_folders(process: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(process)
        .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.is_dir())
        .collect()
}

/// Bytes spooled in `dir` and below.
fn spooled_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => spooled_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn signal(process: &Process, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(process.id()).unwrap();
    // SAFETY: kill(2) only sends a signal, to our own child, which is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test]
async fn a_splitter_killed_mid_split_is_swept_by_the_next_one_and_the_song_completes() {
    let mut sys = System::start(
        DME,
        Options {
            model: Some(model_path("test/conv_dynamic.onnx")),
            ..Options::default()
        },
    )
    .await;
    // The system's splitter spools elsewhere; these ones share one folder.
    let spool = tempfile::tempdir().unwrap();
    let splitter = |sys: &System| {
        let mut command = sys.command("splitter", &[]);
        command.env("DME_SPOOL_DIR", spool.path());
        Process::spawn("splitter", command)
    };
    drop(sys.splitter.take());
    let mut first = splitter(&sys);
    let first_folder = folder_of(spool.path(), first.id()).await;
    let id = sys
        .upload_and_select_all(synth_wav(SONG_FRAMES, 44_100, 3.0), "long.wav")
        .await;

    // Mid-split: the song is spooled in a work folder. Freeze the splitter there.
    let work = wait_for("the cut spooling", START, || async {
        let work = work_folders(&first_folder).into_iter().next()?;
        (spooled_bytes(&work) > 0).then_some(work)
    })
    .await;
    signal(&first, libc::SIGSTOP);
    assert!(
        work.exists(),
        "the cut ended before the splitter was frozen"
    );
    let spooled = spooled_bytes(&work);

    // A replica started now sweeps the folder, and leaves the live one's files alone.
    let second = splitter(&sys);
    let second_folder = folder_of(spool.path(), second.id()).await;
    assert!(
        work.exists() && spooled_bytes(&work) >= spooled,
        "a live splitter's spooled files were removed by another's start-up sweep"
    );

    // Killed, its files stay until a splitter starts: then they are swept.
    first.kill();
    assert!(work.exists());
    let third = splitter(&sys);
    let third_folder = folder_of(spool.path(), third.id()).await;
    assert!(
        !first_folder.exists(),
        "the killed splitter's folder was not swept"
    );
    let mut live: Vec<u32> = vec![second.id(), third.id()];
    live.sort();
    let pids: Vec<u32> = process_folders(spool.path())
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(
        pids, live,
        "the spool holds only the live splitters' folders"
    );

    // The upload comes back after its ack wait and is cut by a live splitter; once the song
    // is done, nothing of its cut is left in the spool.
    let done = sys.finished(id).await;
    assert_eq!(done["state"], "done", "{done}");
    wait_for("the cut's files removed", START, || async {
        (work_folders(&second_folder).is_empty() && work_folders(&third_folder).is_empty())
            .then_some(())
    })
    .await;
    drop((second, third));
}

//! dme-testkit: what dme's tests share. It consumes the repository (its `nats.conf`, models
//! and committed fixtures) and the `dme` binary a test names; it produces real running systems
//! and deterministic audio. Nothing here mocks NATS or a service.
//!
//! # Layout
//!
//! * this file: [`NatsServer`] (a real `nats-server` on a free port with a temporary store,
//!   killed on drop; [`NatsServer::kill`] and [`NatsServer::restart`] let failure tests stop and
//!   bring back the same server with the same store), [`Process`] (a child killed on drop,
//!   stopped with real signals), [`wait_for`] (poll a condition with a deadline), and where the
//!   project's files are ([`repo_root`], [`model`], [`fixture`]).
//! * `cluster`: [`cluster::NatsCluster`], a JetStream cluster of `nats-server`s on loopback
//!   (each node with its own ports and temporary store) for tests of replicated state.
//! * `song`: a deterministic song generator (drums, bass, chords, a sung line, in stereo) and
//!   [`song::test_song_mp3`], the song end-to-end tests upload.
//! * `system`: [`system::System`], a whole dme system (nats-server, gateway, splitter, mixer,
//!   separators) for one test, with typed HTTP helpers.
//! * `reference`: [`reference::separate`], a single-process implementation of dme's segmenting
//!   that distributed results are compared with.
//!
//! * `fixtures`: the committed files (`libs/testkit/fixtures/`) of what dme cannot encode
//!   itself (OGG Vorbis, AAC in M4A), made from the generator's output by
//!   `scripts/make_fixtures.sh`, each with the spec it was made from.

pub mod cluster;
pub mod fixtures;
pub mod reference;
pub mod song;
pub mod system;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("nats.conf").exists() {
        assert!(
            dir.pop(),
            "no nats.conf above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    dir
}

/// A committed fixture file under `libs/testkit/fixtures/` (see its README).
///
/// # Panics
/// When the file is missing.
pub fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(path.exists(), "fixture {} missing", path.display());
    path
}

/// A model file under `models/` of the repository.
pub fn model(relative: &str) -> PathBuf {
    let path = repo_root().join("models").join(relative);
    assert!(path.exists(), "model {} missing", path.display());
    path
}

/// The `nats-server` to test with: `$DME_NATS_SERVER`, else the project's tools folder, else
/// the one on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DME_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = repo_root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A free TCP port on loopback (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `nats-server` running the project's `nats.conf` on a free port with a temporary store.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// Configuration appended to `nats.conf` ([`NatsServer::start_with_config`]).
    extra_config: Option<String>,
}

impl NatsServer {
    /// Starts the server and waits until it accepts connections.
    ///
    /// # Panics
    /// When the server does not start within 10 s.
    pub fn start() -> NatsServer {
        Self::start_with(None)
    }

    /// Starts the server with `extra` appended to `nats.conf` (an `authorization` block, say),
    /// logging to [`NatsServer::log_path`] so a test can read what the server refused.
    ///
    /// # Panics
    /// When the server does not start within 10 s.
    pub fn start_with_config(extra: &str) -> NatsServer {
        Self::start_with(Some(extra.to_string()))
    }

    fn start_with(extra_config: Option<String>) -> NatsServer {
        let mut server = NatsServer {
            port: free_port(),
            store: tempfile::tempdir().expect("temporary store"),
            child: None,
            extra_config,
        };
        server.restart();
        server
    }

    /// The server's log file when started with [`NatsServer::start_with_config`].
    pub fn log_path(&self) -> PathBuf {
        self.store.path().join("nats-server.log")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store folder.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server with SIGKILL (no clean shutdown), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and store; waits until it accepts connections.
    ///
    /// # Panics
    /// When it does not start within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let mut config = repo_root().join("nats.conf");
        let mut command = Command::new(nats_server_binary());
        if let Some(extra) = &self.extra_config {
            let base = std::fs::read_to_string(&config).expect("nats.conf readable");
            config = self.store.path().join("nats-test.conf");
            std::fs::write(&config, format!("{base}\n{extra}\n")).expect("test config written");
            command.arg("-l").arg(self.log_path());
        }
        let child = command
            .arg("-c")
            .arg(config)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &free_port().to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (make test installs it into .tools)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to process `pid`, a child of the test (`SIGSTOP` freezes it, `SIGCONT` thaws
/// it).
///
/// # Panics
/// When the signal cannot be sent.
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) only sends a signal, to the test's own child, which is not reaped yet.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill({pid}, {signal})"
    );
}

/// The nice value of every thread of process `pid` (field 19 of /proc/<pid>/task/<tid>/stat).
///
/// # Panics
/// When the process is gone.
pub fn thread_nices(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process runs")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            // After the command's closing parenthesis come fields 3 onwards.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// The processes whose parent is `pid` and whose command line holds `word` as an argument or
/// as the file name of one (`nats-server` matches `/x/bin/nats-server`).
pub fn children_running(pid: u32, word: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let named = |arg: &[u8]| arg.rsplit(|b| *b == b'/').next() == Some(word.as_bytes());
            ppid == Some(pid) && cmdline.split(|b| *b == 0).any(named)
        })
        .collect()
}

/// A child process killed (SIGKILL) on drop.
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Spawns `command`, its output inherited so test logs show it.
    ///
    /// # Panics
    /// When it cannot be spawned.
    pub fn spawn(name: &str, mut command: Command) -> Process {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Process {
            child,
            name: name.to_string(),
        }
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status; `None` when it is still
    /// running then.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status); // already gone: its pid may belong to another process now
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pids fit pid_t");
        // SAFETY: kill(2) only sends a signal; the pid is our own unreaped child, so it cannot
        // have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The name it was spawned under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

//! Test support: a real `nats-server` per test, and helpers to find the project's tools and
//! fixtures.
//!
//! [`NatsServer::start`] runs `nats-server -c nats.conf` on a free port with a temporary store,
//! and kills it on drop; [`NatsServer::kill`] and [`NatsServer::restart`] let failure tests stop
//! and bring back the same server with the same store. [`Process`] does the same for a service
//! binary. Nothing here mocks NATS.

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

/// A file of `../shared/fixtures` (beside the repository).
pub fn fixture(name: &str) -> PathBuf {
    let path = repo_root().join("../shared/fixtures").join(name);
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
}

impl NatsServer {
    /// Starts the server and waits until it accepts connections.
    ///
    /// # Panics
    /// When the server does not start within 10 s.
    pub fn start() -> NatsServer {
        let mut server = NatsServer {
            port: free_port(),
            store: tempfile::tempdir().expect("temporary store"),
            child: None,
        };
        server.restart();
        server
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
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(repo_root().join("nats.conf"))
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

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
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

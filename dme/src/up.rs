//! `dme up`: the whole system as child processes of one command.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long children get to stop after SIGTERM before they are killed: enough for a separator
/// to finish the segment in hand.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Ports tried from the configured one when it is taken (another NATS on the machine).
const PORT_SEARCH: u16 = 20;

/// How long the own nats-server gets to accept connections (it starts in well under a second).
const NATS_START: Duration = Duration::from_secs(10);
/// Pause between checks that the own nats-server accepts connections.
const NATS_START_POLL: Duration = Duration::from_millis(50);

/// Pause between checks that every child still runs.
const CHILD_POLL: Duration = Duration::from_millis(500);

/// Settings of `dme up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpConfig {
    /// NATS server to use; when absent, `dme up` starts its own from `nats.conf`.
    #[arg(long, env = "DME_NATS_URL")]
    pub nats_url: Option<String>,
    /// Where the own nats-server keeps its store (`<dir>/nats`).
    #[arg(long, env = "DME_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// nats-server binary for the own server.
    #[arg(long, env = "DME_NATS_SERVER", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// nats.conf for the own server.
    #[arg(long, env = "DME_NATS_CONF", default_value = "nats.conf")]
    pub nats_conf: PathBuf,
    /// Port of the own nats-server (the next free one when taken).
    #[arg(long, env = "DME_NATS_PORT", default_value_t = 4222)]
    pub nats_port: u16,
    /// Monitoring port of the own nats-server (the next free one when taken).
    #[arg(long, env = "DME_NATS_MONITOR_PORT", default_value_t = 8222)]
    pub nats_monitor_port: u16,
    /// Separator processes (default: one per core).
    #[arg(long, env = "DME_SEPARATORS")]
    pub separators: Option<usize>,
    /// HTTP address of the gateway.
    #[arg(long, env = "DME_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
}

/// Starts everything, waits for `shutdown` or a child's death, stops everything.
///
/// # Errors
/// When the nats-server or a service cannot be started.
pub async fn run(config: UpConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the dme binary")?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let separators = config.separators.unwrap_or(cores).max(1);
    // Divide the cores among the separators so N workers never oversubscribe the machine.
    let threads = (cores / separators).max(1);
    let mut children: Vec<(String, Child)> = Vec::new();
    let nats_url = match &config.nats_url {
        Some(url) => url.clone(),
        None => {
            // The machine may already run a NATS server on the default port: take the next free one.
            let port = (config.nats_port..config.nats_port.saturating_add(PORT_SEARCH))
                .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
                .with_context(|| {
                    format!("no free port from {} for nats-server", config.nats_port)
                })?;
            let monitor = (config.nats_monitor_port
                ..config.nats_monitor_port.saturating_add(PORT_SEARCH))
                .find(|p| *p != port && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
                .with_context(|| {
                    format!("no free monitoring port from {}", config.nats_monitor_port)
                })?;
            let store = config.data_dir.join("nats");
            std::fs::create_dir_all(&store)
                .with_context(|| format!("creating {}", store.display()))?;
            let mut command = Command::new(&config.nats_server);
            die_with_parent(&mut command);
            let child = command
                .arg("-c")
                .arg(&config.nats_conf)
                .args(["-p", &port.to_string()])
                .args(["-m", &monitor.to_string()])
                .arg("-sd")
                .arg(&store)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (make run installs one into .tools)",
                        config.nats_server.display()
                    )
                })?;
            children.push(("nats-server".into(), child));
            wait_for_port(port).await?;
            format!("nats://127.0.0.1:{port}")
        }
    };
    tracing::info!(%nats_url, separators, threads, "starting dme");
    let spawn = |args: &[&str]| -> anyhow::Result<Child> {
        let mut command = Command::new(&exe);
        die_with_parent(&mut command);
        command
            .args(args)
            .env("DME_NATS_URL", &nats_url)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting dme {}", args[0]))
    };
    for i in 0..separators {
        let id = format!("separator-{}", i + 1);
        let child = spawn(&[
            "separator",
            "--intra-threads",
            &threads.to_string(),
            "--worker-id",
            &id,
        ])?;
        children.push((id, child));
    }
    children.push(("splitter".into(), spawn(&["splitter"])?));
    children.push(("mixer".into(), spawn(&["mixer"])?));
    children.push((
        "gateway".into(),
        spawn(&["gateway", "--http-addr", &config.http_addr])?,
    ));
    println!(
        "dme is up: http://{}/  NATS: {nats_url}  (Ctrl-C stops it)",
        config.http_addr
    );

    let died = async {
        loop {
            for (name, child) in children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return format!("{name} exited ({status})");
                }
            }
            tokio::time::sleep(CHILD_POLL).await;
        }
    };
    let reason = tokio::select! {
        _ = shutdown.cancelled() => None,
        why = died => Some(why),
    };
    // Services first (newest first), nats-server last, so they can finish their messages.
    for (name, child) in children.iter_mut().rev() {
        stop(name, child).await;
    }
    match reason {
        Some(why) => bail!("dme stopped because {why}"),
        None => Ok(()),
    }
}

/// Children get SIGTERM when `dme up` dies, even by SIGKILL, so a killed launcher never leaves
/// services running on their own.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child being created.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn stop(name: &str, child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) only sends a signal; the pid is our own child, not yet reaped (`id`
        // is `None` once it is), so it cannot belong to another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(name, "did not stop in time; killing");
            let _ = child.kill().await;
        }
    }
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + NATS_START;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(NATS_START_POLL).await;
    }
    bail!("nats-server did not accept connections on port {port} within {NATS_START:?}")
}

//! `dme up`: the whole system as child processes of one command.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use dme_protocol::permissions::{self, Password, Role};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The priority (nice) of the separators `dme up` starts: with the gateway, the nats-server
/// and the mixer on the same cores, a cached Range download's p99 at 1,000 req/s while 2
/// separators ran was 114 ms at 0 and 7.5 ms at 10 (one run each, docs/BENCHMARKS.md).
const UP_SEPARATOR_NICE: &str = "10";

/// How long children get to stop after SIGTERM before they are killed: enough for a separator
/// to finish the segment in hand.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Ports tried from the configured one when it is taken (another NATS on the machine).
const PORT_SEARCH: u16 = 20;

/// How long the own nats-server gets to accept connections (it starts in well under a second).
const NATS_START: Duration = Duration::from_secs(10);
/// Pause between checks that the own nats-server accepts connections.
const NATS_START_POLL: Duration = Duration::from_millis(50);

/// How long the own JetStream cluster gets to elect its meta leader once its servers accept
/// connections: a few election rounds (about 2 s each) on a loaded machine.
const NATS_CLUSTER_START: Duration = Duration::from_secs(60);

/// Most servers of the own cluster: JetStream keeps at most 5 copies of a stream, and a
/// cluster on one machine protects against a crashed process, not a lost disk.
const MAX_CLUSTER: u16 = 5;

/// Copies of every stream and bucket on the own cluster: 3 outlives any one server, and more
/// only slows every write (each is acknowledged by a majority of the copies).
const CLUSTER_REPLICAS: usize = 3;

/// Name of the own cluster (JetStream needs a named cluster).
const CLUSTER_NAME: &str = "dme";

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
    /// Servers of the own NATS: 1, or a JetStream cluster of that many on loopback (3 is the
    /// usual), each with its own store (`<data dir>/nats-<n>`) and ports from `--nats-port`,
    /// `--nats-monitor-port` and `--nats-route-port` on; the services get every server's URL
    /// and keep 3 copies of everything (`DME_REPLICAS`), so losing one server loses nothing.
    #[arg(
        long,
        env = "DME_NATS_CLUSTER",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_CLUSTER))
    )]
    pub nats_cluster: u16,
    /// First port the own cluster's servers route to each other on (the next free ones after).
    #[arg(long, env = "DME_NATS_ROUTE_PORT", default_value_t = 6222)]
    pub nats_route_port: u16,
    /// Separator processes (default: one per core).
    #[arg(long, env = "DME_SEPARATORS")]
    pub separators: Option<usize>,
    /// HTTP address of the gateway.
    #[arg(long, env = "DME_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Whether the own nats-server has one user per role, each allowed only what it needs
    /// (`nats-auth.conf`); passwords are generated once into `<data dir>/nats-auth/`.
    #[arg(long, env = "DME_NATS_AUTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub nats_auth: bool,
}

/// Folder of the own nats-server's users under the data folder: its configuration and one
/// `<user>.password` file per role.
const AUTH_DIR: &str = "nats-auth";

/// The own nats-server's users: where their passwords are.
struct Users {
    dir: PathBuf,
}

impl Users {
    /// Reads each role's password from `<data>/nats-auth/<user>.password`, generating the
    /// missing ones (mode 0600, in a folder of mode 0700), and writes the server's
    /// configuration (`nats_conf` and the users) beside them; returns it and the users.
    fn prepare(data_dir: &Path, nats_conf: &Path) -> anyhow::Result<(PathBuf, Users)> {
        let dir = data_dir.join(AUTH_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let users = Users { dir };
        let mut list = Vec::new();
        for role in Role::ALL {
            let path = users.password_file(role);
            let password = match std::fs::read_to_string(&path) {
                Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
                _ => {
                    let p = permissions::random_password();
                    write_private(&path, &p)?;
                    p
                }
            };
            list.push((role, Password::Literal(password)));
        }
        let base = std::fs::read_to_string(nats_conf)
            .with_context(|| format!("reading {}", nats_conf.display()))?;
        let config = users.dir.join("nats.conf");
        write_private(
            &config,
            &format!(
                "# Generated by `dme up` from {} and dme's users (nats-auth.conf).\n{base}\n{}",
                nats_conf.display(),
                permissions::authorization(&list)
            ),
        )?;
        Ok((config, users))
    }

    fn password_file(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.password", role.user()))
    }

    /// The password the own cluster's servers route to each other with (generated once): no
    /// other process on the machine can join the cluster and read around the users'
    /// permissions.
    fn route_password(&self) -> anyhow::Result<String> {
        let path = self.dir.join("route.password");
        match std::fs::read_to_string(&path) {
            Ok(p) if !p.trim().is_empty() => Ok(p.trim().to_string()),
            _ => {
                let p = permissions::random_password();
                write_private(&path, &p)?;
                Ok(p)
            }
        }
    }

    /// `command` connects as `role`.
    fn apply(&self, command: &mut Command, role: Role) {
        command
            .env("DME_NATS_USER", role.user())
            .env("DME_NATS_PASSWORD_FILE", self.password_file(role))
            .env("DME_NATS_INBOX_PREFIX", role.inbox_prefix())
            .env_remove("DME_NATS_PASSWORD")
            .env_remove("DME_NATS_NKEY")
            .env_remove("DME_NATS_CREDS");
    }
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
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
    let mut users = None;
    // DME_REPLICAS of the services when `dme up` runs a cluster (else as the environment says).
    let mut replicas: Option<usize> = None;
    // The own cluster's servers, by child name (none for one server or a given URL).
    let mut cluster: Vec<String> = Vec::new();
    let nats_url = match &config.nats_url {
        Some(url) => url.clone(),
        None => {
            let nats_conf = if config.nats_auth {
                let (generated, prepared) = Users::prepare(&config.data_dir, &config.nats_conf)?;
                users = Some(prepared);
                generated
            } else {
                config.nats_conf.clone()
            };
            let nodes = NatsNode::plan(&config, users.as_ref(), &nats_conf)?;
            for node in &nodes {
                children.push((node.name.clone(), node.spawn(&config)?));
            }
            for node in &nodes {
                wait_for_port(node.port).await?;
            }
            if nodes.len() > 1 {
                for node in &nodes {
                    wait_for_jetstream(node.monitor_port).await?;
                }
                replicas = Some(CLUSTER_REPLICAS.min(nodes.len()));
                cluster = nodes.iter().map(|n| n.name.clone()).collect();
            }
            nodes
                .iter()
                .map(|n| format!("nats://127.0.0.1:{}", n.port))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    tracing::info!(%nats_url, separators, threads, "starting dme");
    let spawn = |role: Role, args: &[&str]| -> anyhow::Result<Child> {
        let mut command = Command::new(&exe);
        die_with_parent(&mut command);
        if let Some(users) = &users {
            users.apply(&mut command, role);
        }
        if let Some(replicas) = replicas {
            command.env("DME_REPLICAS", replicas.to_string());
        }
        command
            .args(args)
            .env("DME_NATS_URL", &nats_url)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting dme {}", args[0]))
    };
    // Offer the separators' model (DME_MODEL, else the embedded one) before any runs: an upload
    // made while they still load is accepted and waits in the queue.
    let registered = spawn(Role::Separator, &["models", "add"])?
        .wait()
        .await
        .context("waiting for dme models add")?;
    if !registered.success() {
        bail!("dme models add failed ({registered}): the model could not be offered");
    }
    for i in 0..separators {
        let id = format!("separator-{}", i + 1);
        let threads = threads.to_string();
        let mut args = vec!["separator", "--intra-threads", &threads, "--worker-id", &id];
        // Everything shares this machine: the model runs yield to the gateway, the server and
        // the mixer (DME_SEPARATOR_NICE, when set, decides instead).
        if std::env::var_os("DME_SEPARATOR_NICE").is_none() {
            args.extend(["--nice", UP_SEPARATOR_NICE]);
        }
        children.push((id.clone(), spawn(Role::Separator, &args)?));
    }
    children.push(("splitter".into(), spawn(Role::Splitter, &["splitter"])?));
    children.push(("mixer".into(), spawn(Role::Mixer, &["mixer"])?));
    // Uploads that name no model get this deployment's model, even when its data folder also
    // offers others (an earlier `dme up` with another DME_MODEL, a new build's embedded model),
    // which would otherwise make every plain `POST /music` choose. DME_DEFAULT_MODEL wins.
    let source = match std::env::var_os("DME_MODEL") {
        Some(path) => dme_model::ModelSource::File(path.into()),
        None => dme_model::ModelSource::Embedded,
    };
    let default_model = match std::env::var("DME_DEFAULT_MODEL") {
        Ok(model) => model,
        Err(_) => dme_model::fingerprint(&source).context("reading the model's fingerprint")?,
    };
    children.push((
        "gateway".into(),
        spawn(
            Role::Gateway,
            &[
                "gateway",
                "--http-addr",
                &config.http_addr,
                "--default-model",
                &default_model,
            ],
        )?,
    ));
    println!(
        "dme is up: http://{}/  NATS: {nats_url}  (Ctrl-C stops it)",
        config.http_addr
    );
    if let Some(users) = &users {
        println!(
            "NATS users (one per role, nats-auth.conf) and their passwords: {}/\n  \
             watch:  nats --server {nats_url} --user {op} --password \"$(cat {})\" ...\n  \
             submit: nats --server {nats_url} --user {sub} --password \"$(cat {})\" req dme.api.music.list ''",
            users.dir.display(),
            users.password_file(Role::Operator).display(),
            users.password_file(Role::Submitter).display(),
            op = Role::Operator.user(),
            sub = Role::Submitter.user(),
        );
    }

    let died = async {
        let mut lost: Vec<String> = Vec::new();
        loop {
            for (name, child) in children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // A server of the own cluster may go: the others keep every stream.
                    if !cluster.contains(name) {
                        return format!("{name} exited ({status})");
                    }
                    if !lost.contains(name) {
                        tracing::warn!(%name, %status, "a NATS server of the cluster exited; the others carry on");
                        lost.push(name.clone());
                    }
                }
            }
            // Without a majority of its servers the cluster stops taking writes.
            if !cluster.is_empty() && lost.len() * 2 >= cluster.len() {
                return format!(
                    "{} of the {} NATS servers exited",
                    lost.len(),
                    cluster.len()
                );
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

/// One server of the own NATS: its name, ports, configuration and store.
struct NatsNode {
    name: String,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    store: PathBuf,
}

impl NatsNode {
    /// The servers to start: one running `nats_conf` in `<data>/nats`, or a cluster of
    /// `--nats-cluster` servers, each with a generated configuration (`nats_conf`, its
    /// `server_name` and a `cluster {}` block routing to the others) in `<data>/nats-cluster/`
    /// and its store in `<data>/nats-<n>`. Ports are the first free ones from the configured.
    fn plan(
        config: &UpConfig,
        users: Option<&Users>,
        nats_conf: &Path,
    ) -> anyhow::Result<Vec<NatsNode>> {
        let size = usize::from(config.nats_cluster);
        let mut taken = Vec::new();
        let mut ports = |from: u16, what: &str| -> anyhow::Result<Vec<u16>> {
            let mut found = Vec::new();
            for _ in 0..size {
                let start = found.last().map_or(from, |p: &u16| p.saturating_add(1));
                let port = free_port(start, &taken)
                    .with_context(|| format!("no free {what} port from {start}"))?;
                taken.push(port);
                found.push(port);
            }
            Ok(found)
        };
        let clients = ports(config.nats_port, "nats-server")?;
        let monitors = ports(config.nats_monitor_port, "monitoring")?;
        if size == 1 {
            let store = config.data_dir.join("nats");
            return Ok(vec![NatsNode {
                name: "nats-server".into(),
                port: clients[0],
                monitor_port: monitors[0],
                config: nats_conf.to_path_buf(),
                store,
            }]);
        }
        let routes = ports(config.nats_route_port, "route")?;
        let base = std::fs::read_to_string(nats_conf)
            .with_context(|| format!("reading {}", nats_conf.display()))?;
        let dir = config.data_dir.join("nats-cluster");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let route_password = users.map(Users::route_password).transpose()?;
        let (authorization, credentials) = match &route_password {
            Some(p) => (
                format!("  authorization {{ user: route, password: \"{p}\" }}\n"),
                format!("route:{p}@"),
            ),
            None => (String::new(), String::new()),
        };
        let mut nodes = Vec::new();
        for i in 0..size {
            let name = format!("nats-{}", i + 1);
            let others: Vec<String> = (0..size)
                .filter(|j| *j != i)
                .map(|j| format!("nats-route://{credentials}127.0.0.1:{}", routes[j]))
                .collect();
            let path = dir.join(format!("{name}.conf"));
            // Keys later in a file replace earlier ones: the name replaces nats.conf's.
            write_private(
                &path,
                &format!(
                    "# Generated by `dme up --nats-cluster {size}` from {}.\n{base}\n\
                     server_name: {CLUSTER_NAME}-{}\n\
                     cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{}\n\
                     {authorization}  routes: [{}]\n}}\n",
                    nats_conf.display(),
                    i + 1,
                    routes[i],
                    others.join(", ")
                ),
            )?;
            nodes.push(NatsNode {
                store: config.data_dir.join(&name),
                name,
                port: clients[i],
                monitor_port: monitors[i],
                config: path,
            });
        }
        Ok(nodes)
    }

    /// Starts this server.
    fn spawn(&self, config: &UpConfig) -> anyhow::Result<Child> {
        std::fs::create_dir_all(&self.store)
            .with_context(|| format!("creating {}", self.store.display()))?;
        let mut command = Command::new(&config.nats_server);
        die_with_parent(&mut command);
        command
            .arg("-c")
            .arg(&self.config)
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (make run installs one into .tools)",
                    config.nats_server.display()
                )
            })
    }
}

/// The first port from `from` (within [`PORT_SEARCH`]) that is free on loopback and not in
/// `taken` (the machine may already run a NATS server on the default port).
fn free_port(from: u16, taken: &[u16]) -> Option<u16> {
    (from..from.saturating_add(PORT_SEARCH))
        .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// Waits until the server monitored on `port` answers `/healthz` with 200: its JetStream is
/// in contact with the cluster's meta leader, so streams can be declared.
async fn wait_for_jetstream(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + NATS_CLUSTER_START;
    while tokio::time::Instant::now() < deadline {
        let healthy = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream
                .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            std::io::Result::Ok(
                answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            )
        };
        if tokio::time::timeout(NATS_START, healthy)
            .await
            .is_ok_and(|r| r.unwrap_or(false))
        {
            return Ok(());
        }
        tokio::time::sleep(NATS_START_POLL).await;
    }
    bail!("the NATS cluster had no JetStream leader (monitoring port {port}) within {NATS_CLUSTER_START:?}")
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

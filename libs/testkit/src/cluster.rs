//! A JetStream cluster of real `nats-server`s on loopback, for tests of replicated state: each
//! node runs the project's `nats.conf` with its own name, client, monitoring and route ports
//! and temporary store, routed to every other node. Nodes are killed with SIGKILL and restarted
//! on the same ports and store, like [`crate::NatsServer`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, nats_server_binary, repo_root};

/// Name of the cluster the nodes form (JetStream needs one named cluster).
const CLUSTER_NAME: &str = "dme-test";

/// How long a cluster gets to elect its JetStream meta leader: a few election timeouts (about
/// 2 s each) on a busy test machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Pause between readiness checks.
const READY_POLL: Duration = Duration::from_millis(100);

/// One node of a [`NatsCluster`].
pub struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// Its `server_name` (what JetStream names as a stream's leader or replica).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `nats://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its monitoring port (`/jsz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// True while its process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A JetStream cluster of `nats-server`s, every node killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` nodes (`dme-1`, `dme-2`, ...) and waits until each answers its health
    /// check, that is until the cluster has a JetStream meta leader and every node knows it.
    ///
    /// # Panics
    /// When a node cannot be started, or the cluster is not ready within 60 s.
    pub fn start(size: usize) -> NatsCluster {
        let base = std::fs::read_to_string(repo_root().join("nats.conf")).expect("nats.conf");
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let store = tempfile::tempdir().expect("a temporary store");
            let name = format!("dme-{}", i + 1);
            let others: Vec<String> = routes
                .iter()
                .filter(|r| *r != route)
                .map(|r| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            // Later keys override earlier ones: the node's name replaces nats.conf's.
            let config = store.path().join("nats-node.conf");
            std::fs::write(
                &config,
                format!(
                    "{base}\nserver_name: {name}\ncluster {{\n  name: {CLUSTER_NAME}\n  \
                     listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    others.join(", ")
                ),
            )
            .expect("a node configuration");
            nodes.push(Node {
                name,
                port: free_port(),
                monitor_port: free_port(),
                config,
                store,
                child: None,
            });
        }
        let mut cluster = NatsCluster { nodes };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node's URL, comma-separated (`DME_NATS_URL` for a cluster).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name`, if any.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILLs node `i` (no clean shutdown), keeping its store.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts node `i` on its ports and store, and waits until the cluster is healthy again
    /// from its point of view (it answers its health check).
    ///
    /// # Panics
    /// When it cannot be started or is not healthy within 60 s.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready();
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.config)
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("-sd")
            .arg(node.store.path())
            .arg("-l")
            .arg(node.store.path().join("nats-server.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (make test installs it into .tools)");
        node.child = Some(child);
    }

    /// Waits until every running node answers `/healthz` with 200: it accepts clients and its
    /// JetStream is in contact with the meta leader.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_DEADLINE;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                if monitor_get(node.monitor_port, "/healthz")
                    .is_some_and(|(status, _)| status == 200)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nats-server {} not healthy within {READY_DEADLINE:?}: {:?}",
                    node.name,
                    monitor_get(node.monitor_port, "/healthz")
                );
                std::thread::sleep(READY_POLL);
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// `GET path` on the monitoring port `port` of loopback: the status and body, or `None` when
/// nothing answers.
pub fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

//! Settings every service shares, flattened into each service's clap configuration so the flags
//! and `DME_*` variables are spelled once.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;

use crate::spool::Spool;

/// Default NATS server: the one `dme up` and `make run` start locally.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Default start-up wait for NATS, in seconds: long enough for a nats-server started at the same
/// moment (`dme up`, a compose file) to come up, short enough that a wrong URL fails a deployment
/// visibly within a minute.
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 60;

/// Most bytes the object store (originals, segments, stems, tracks, mixes, downloads) may hold
/// by default: 40 GB, 80% of the 50 GB `max_file_store` of the repository's `nats.conf`, leaving
/// the rest to records, work and events. JetStream refuses a stream whose maximum is above what
/// the server may store (a server without `max_file_store` may store 75% of its free disk).
pub const DEFAULT_STORE_MAX_BYTES: u64 = 40_000_000_000;

/// Default replicas of every stream and bucket: one, for a single nats-server. A JetStream
/// cluster of three takes 3 (`dme up --nats-cluster 3`), so any one server may be lost.
pub const DEFAULT_REPLICAS: usize = 1;

/// Default inbox prefix: the one every NATS client uses. A server with dme's users
/// (`dme_protocol::permissions`) lets each service read replies only on its own prefix,
/// `_INBOX_<user>`.
pub const DEFAULT_INBOX_PREFIX: &str = dme_protocol::permissions::DEFAULT_INBOX_PREFIX;

/// Where NATS is, who to be there, how long to wait for it at start-up, and how much the object
/// store may hold.
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server; for a cluster, several comma-separated (`nats://a:4222,nats://b:4222`): the
    /// client tries them in turn and moves to another when its server goes.
    #[arg(long, env = "DME_NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// NATS user (with `--nats-password` or `--nats-password-file`); none when absent.
    #[arg(long, env = "DME_NATS_USER")]
    pub nats_user: Option<String>,
    /// The user's password. Prefer `--nats-password-file`: an environment is readable by the
    /// process's owner and root.
    #[arg(long, env = "DME_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// A file holding the user's password (surrounding whitespace ignored).
    #[arg(long, env = "DME_NATS_PASSWORD_FILE", conflicts_with = "nats_password")]
    pub nats_password_file: Option<PathBuf>,
    /// An nkey seed file (`SU...`) to authenticate with instead of a password.
    #[arg(long, env = "DME_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// A `.creds` file (JWT and seed, for servers run in operator mode).
    #[arg(long, env = "DME_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// A PEM file of the certificate authorities to trust for NATS, instead of the system's;
    /// when set, the connection must use TLS. (A `tls://` URL asks for TLS with the system's
    /// roots.)
    #[arg(long, env = "DME_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// A PEM client certificate to present to NATS (with `--nats-key`), for a server that
    /// verifies its clients (`verify: true` in its `tls {}` block).
    #[arg(long, env = "DME_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// The PEM private key of `--nats-cert`.
    #[arg(long, env = "DME_NATS_KEY")]
    pub nats_key: Option<PathBuf>,
    /// Subject prefix of this connection's reply inboxes: the server's permissions let each
    /// service read replies only on its own (`_INBOX_gateway`, ...; see `nats-auth.conf`).
    #[arg(long, env = "DME_NATS_INBOX_PREFIX", default_value = DEFAULT_INBOX_PREFIX)]
    pub nats_inbox_prefix: String,
    /// Seconds to keep trying to reach NATS at start-up.
    #[arg(long, env = "DME_CONNECT_TIMEOUT_S", default_value_t = DEFAULT_CONNECT_TIMEOUT_S)]
    pub connect_timeout_s: u64,
    /// Most bytes the object store may hold (a put beyond it fails; the gateway refuses new songs
    /// with 507 before). Every service sets it at start-up, so give all of them the same value.
    #[arg(long, env = "DME_STORE_MAX_BYTES", default_value_t = DEFAULT_STORE_MAX_BYTES)]
    pub store_max_bytes: u64,
    /// Servers that keep a copy of every stream, KV bucket and object store this service
    /// creates: 1 on one nats-server, 3 on a 3-node JetStream cluster (at most the cluster's
    /// size). Set when they are first created; give every service the same value.
    #[arg(
        long,
        env = "DME_REPLICAS",
        default_value_t = DEFAULT_REPLICAS,
        // JetStream keeps at most 5 copies.
        value_parser = TypedValueParser::map(clap::value_parser!(u16).range(1..=5), usize::from)
    )]
    pub replicas: usize,
}

impl std::fmt::Debug for NatsArgs {
    // Like a derived one, without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "***"))
            .field("nats_password_file", &self.nats_password_file)
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_creds", &self.nats_creds)
            .field("nats_ca", &self.nats_ca)
            .field("nats_cert", &self.nats_cert)
            .field("nats_key", &self.nats_key)
            .field("nats_inbox_prefix", &self.nats_inbox_prefix)
            .field("connect_timeout_s", &self.connect_timeout_s)
            .field("store_max_bytes", &self.store_max_bytes)
            .field("replicas", &self.replicas)
            .finish()
    }
}

impl NatsArgs {
    /// How long to keep trying to reach NATS at start-up.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s)
    }

    /// Who to be on the server: the credentials given, read from their files.
    ///
    /// # Errors
    /// When a file cannot be read, a user has no password or a password no user, or more than
    /// one kind of credentials is given.
    pub fn credentials(&self) -> std::result::Result<Credentials, CredentialsError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|source| CredentialsError::Read {
                    path: path.clone(),
                    source,
                })
        };
        let password = match (&self.nats_password, &self.nats_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(read(path)?),
            (None, None) => None,
        };
        let given = [
            self.nats_user.is_some() || password.is_some(),
            self.nats_nkey.is_some(),
            self.nats_creds.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(CredentialsError::Conflict);
        }
        Ok(match (&self.nats_user, password) {
            (Some(user), Some(password)) => Credentials::UserPassword {
                user: user.clone(),
                password,
            },
            (Some(_), None) | (None, Some(_)) => return Err(CredentialsError::Incomplete),
            (None, None) => match (&self.nats_nkey, &self.nats_creds) {
                (Some(path), _) => Credentials::Nkey { seed: read(path)? },
                (None, Some(path)) => Credentials::CredsFile(path.clone()),
                (None, None) => Credentials::None,
            },
        })
    }
}

/// How a connection authenticates to NATS.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (a server without users).
    None,
    /// A user and its password.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: String,
    },
    /// An nkey seed (`SU...`).
    Nkey {
        /// The seed.
        seed: String,
    },
    /// A `.creds` file (JWT and seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    // Never prints a secret (configurations are logged at start-up).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Credentials::Nkey { .. } => f.write_str("Nkey(***)"),
            Credentials::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// Credentials that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A credentials file could not be read.
    #[error("cannot read NATS credentials from {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A user without a password, or a password without a user.
    #[error(
        "DME_NATS_USER and a password (DME_NATS_PASSWORD or DME_NATS_PASSWORD_FILE) go together"
    )]
    Incomplete,
    /// More than one kind of credentials.
    #[error(
        "give one kind of NATS credentials: a user and password, DME_NATS_NKEY or DME_NATS_CREDS"
    )]
    Conflict,
}

/// Where a service keeps temporary files (uploads being received, decoded audio, tracks being
/// summed), so memory stays bounded whatever a song's length.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpoolArgs {
    /// Folder for temporary files, which replicas of the service may share; each process works
    /// in a locked folder of its own in it, and folders left by killed processes are removed at
    /// start-up. `<system temporary folder>/dme/<service>` when absent.
    #[arg(long, env = "DME_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
}

impl SpoolArgs {
    /// The spool folder of `service`: `--spool-dir`, else `<temp>/dme/<service>`.
    pub fn root(&self, service: &str) -> PathBuf {
        match &self.spool_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join("dme").join(service),
        }
    }

    /// Opens `service`'s spool folder on a blocking thread: sweeps what killed processes left
    /// there and creates this process's own folder ([`Spool::open`]).
    ///
    /// # Errors
    /// When the folder cannot be created, swept or locked; the error names the path.
    pub async fn open(&self, service: &str) -> std::io::Result<Spool> {
        let root = self.root(service);
        tokio::task::spawn_blocking(move || Spool::open(&root))
            .await
            .map_err(std::io::Error::other)?
    }
}

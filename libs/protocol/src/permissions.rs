//! Who may publish and subscribe to what: one NATS user per role, each allowed only the
//! subjects its job needs, rendered as a nats-server `authorization` block
//! ([`authorization`]). `dme up` generates it with random passwords; the repository's
//! `nats-auth.conf` is the same block with each password read from the server's environment.
//!
//! The lists were found by running the whole pipeline (upload, cut, separation, assembly, mix,
//! the JSON API over NATS, delete) with them on and reading the server's permission-violation
//! log lines, not by guessing; `dme/tests/nats_auth.rs` runs that pipeline and shows what each
//! role is refused.
//!
//! How JetStream maps onto subjects (what the lists are made of): every JetStream operation is
//! a request on `$JS.API.<operation>.<stream>[.<consumer>]`; a publish into a stream is a
//! publish on the stream's subject; acks go to `$JS.ACK.<stream>.<consumer>.…`; the flow
//! control of ordered consumers (object reads, KV key listings, event feeds) to
//! `$JS.FC.<stream>.…`; a KV write is a publish on `$KV.<bucket>.<key>`, an object's chunks and
//! metadata publishes on `$O.<bucket>.…`, and deleting an object purges its chunks
//! (`$JS.API.STREAM.PURGE.OBJ_<bucket>`). Replies come back on the connection's inbox: each
//! service has one of its own ([`Role::inbox_prefix`]), so no other user can read them; people
//! (operator, submitter) use the `nats` CLI's `_INBOX`.

use std::fmt::Write;

use crate::{streams, subjects};

/// Inbox prefix of people's tools (the `nats` CLI, nats.py, async-nats by default).
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// A NATS user of dme, one per kind of process or person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The HTTP and NATS API: uploads, records, selections, downloads, reset, deletes.
    Gateway,
    /// Cuts uploads into segments.
    Splitter,
    /// Separates segments (any number of processes share the user).
    Separator,
    /// Assembles tracks, mixes, fails work out of deliveries, reconciles.
    Mixer,
    /// A person watching: stream, consumer and bucket info, records and events, micro-service
    /// discovery; no writes.
    Operator,
    /// A person or program submitting songs over the JSON API (`dme.api.>`) and the uploads
    /// bucket.
    Submitter,
}

impl Role {
    /// Every role, services first.
    pub const ALL: [Role; 6] = [
        Role::Gateway,
        Role::Splitter,
        Role::Separator,
        Role::Mixer,
        Role::Operator,
        Role::Submitter,
    ];

    /// The user name (`nats --user <name>`).
    pub fn user(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Splitter => "splitter",
            Role::Separator => "separator",
            Role::Mixer => "mixer",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
        }
    }

    /// The role whose user is `user`.
    pub fn from_user(user: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.user() == user)
    }

    /// The inbox prefix the role's connections use (`DME_NATS_INBOX_PREFIX`): `_INBOX_<user>`
    /// for services, so their replies (records, object chunks) reach no one else; the `nats`
    /// CLI's `_INBOX` for people.
    pub fn inbox_prefix(self) -> String {
        match self {
            Role::Operator | Role::Submitter => DEFAULT_INBOX_PREFIX.to_string(),
            service => format!("{DEFAULT_INBOX_PREFIX}_{}", service.user()),
        }
    }

    /// The environment variable `nats-auth.conf` reads the role's password from
    /// (`DME_NATS_GATEWAY_PASSWORD`, ...).
    pub fn password_variable(self) -> String {
        format!("DME_NATS_{}_PASSWORD", self.user().to_uppercase())
    }

    /// What the role may do.
    pub fn permissions(self) -> Permissions {
        let mut p = Permissions::default();
        match self {
            Role::Gateway => {
                p.service(self);
                p.declare_all();
                p.serve(subjects::API_SERVICE);
                p.sub(format!("{}.>", subjects::API_PREFIX));
                p.publish.push(format!("{}.>", subjects::API_EVENT_PREFIX));
                // `GET /workers` asks every micro service for its info and stats.
                p.publish.push("$SRV.>".into());
                p.publish
                    .push(subjects::work_filter(subjects::WORK_UPLOADED));
                p.publish.push(subjects::work_filter(subjects::WORK_MIX));
                p.publish.push(subjects::EVENT_ALL.into());
                for bucket in [streams::MUSIC_BUCKET, streams::JOB_BUCKET] {
                    p.kv_read(bucket);
                    p.kv_keys(bucket);
                    p.kv_write(bucket);
                }
                p.kv_read(streams::SYSTEM_BUCKET);
                p.objects(streams::FILE_BUCKET, true);
                p.declare(&streams::object_stream(streams::UPLOAD_BUCKET));
                p.objects(streams::UPLOAD_BUCKET, true);
                // Event feeds (ordered pull consumers, one per open event stream, each pulling
                // by its generated name) and the shared JSON-copy consumer.
                p.ordered_reads(streams::EVENT_STREAM);
                p.publish.push(js(&format!(
                    "CONSUMER.MSG.NEXT.{}.*",
                    streams::EVENT_STREAM
                )));
                p.stream_reads(streams::EVENT_STREAM);
                p.durable(streams::EVENT_STREAM, streams::API_EVENT_CONSUMER);
                // Queue census, deleting a song's queued work, reset.
                p.stream_reads(streams::WORK_STREAM);
                for stream in [
                    streams::WORK_STREAM.to_string(),
                    streams::EVENT_STREAM.to_string(),
                    streams::ADVISORY_STREAM.to_string(),
                    streams::kv_stream(streams::MUSIC_BUCKET),
                    streams::kv_stream(streams::JOB_BUCKET),
                ] {
                    p.purge(&stream);
                }
            }
            Role::Splitter => {
                p.service(self);
                p.declare_all();
                p.worker(streams::WORK_STREAM, streams::SPLITTER_CONSUMER);
                p.publish.push(format!("{}.*.*", subjects::WORK_SEGMENT));
                p.pool_reads();
                p.events();
                p.kv_read(streams::MUSIC_BUCKET);
                p.kv_write(streams::MUSIC_BUCKET);
                p.kv_read(streams::JOB_BUCKET);
                p.kv_write(streams::JOB_BUCKET);
                p.kv_read(streams::SYSTEM_BUCKET);
                p.objects(streams::FILE_BUCKET, true);
            }
            Role::Separator => {
                p.service(self);
                p.declare_all();
                p.separator_pools();
                p.publish
                    .push(subjects::work_filter(subjects::WORK_SEPARATED));
                // Releases the next segment of a song (of its own model, any model's subject).
                p.publish.push(format!("{}.*.*", subjects::WORK_SEGMENT));
                // Fails the song of a segment it gives up on (a wrong model, a bad input): a
                // terminated message raises no advisory for the mixer to act on.
                p.kv_read(streams::MUSIC_BUCKET);
                p.kv_write(streams::MUSIC_BUCKET);
                p.events();
                p.kv_read(streams::JOB_BUCKET);
                p.kv_write(streams::JOB_BUCKET);
                // Registers the model it runs.
                p.kv_read(streams::SYSTEM_BUCKET);
                p.kv_write(streams::SYSTEM_BUCKET);
                p.objects(streams::FILE_BUCKET, true);
            }
            Role::Mixer => {
                p.service(self);
                p.declare_all();
                p.worker(streams::WORK_STREAM, streams::MIXER_ASSEMBLE_CONSUMER);
                p.worker(streams::WORK_STREAM, streams::MIXER_MIX_CONSUMER);
                p.worker(streams::ADVISORY_STREAM, streams::MIXER_ADVISORY_CONSUMER);
                p.pool_reads();
                // The reconciler drives any step again; the watchdog reads and removes the
                // work item an advisory names.
                p.publish.push(subjects::WORK_ALL.into());
                p.stream_reads(streams::WORK_STREAM);
                p.publish
                    .push(js(&format!("STREAM.MSG.DELETE.{}", streams::WORK_STREAM)));
                p.events();
                for bucket in [streams::MUSIC_BUCKET, streams::JOB_BUCKET] {
                    p.kv_read(bucket);
                    p.kv_keys(bucket);
                    p.kv_write(bucket);
                }
                p.kv_read(streams::SYSTEM_BUCKET);
                p.objects(streams::FILE_BUCKET, true);
            }
            Role::Operator => {
                p.subscribe.push(format!("{DEFAULT_INBOX_PREFIX}.>"));
                for read in [
                    "INFO",
                    "STREAM.NAMES",
                    "STREAM.LIST",
                    "STREAM.INFO.*",
                    "STREAM.MSG.GET.*",
                    "DIRECT.GET.>",
                    "CONSUMER.NAMES.*",
                    "CONSUMER.LIST.*",
                    "CONSUMER.INFO.*.*",
                ] {
                    p.publish.push(js(read));
                }
                p.publish.push("$SRV.>".into());
                p.publish.push(format!("{}.>", subjects::STATUS_GROUP));
                // Watching: progress events, work as it is published, advisories.
                p.subscribe.push("dme.>".into());
                p.subscribe.push("$JS.EVENT.>".into());
            }
            Role::Submitter => {
                p.subscribe.push(format!("{DEFAULT_INBOX_PREFIX}.>"));
                p.publish.push(format!("{}.>", subjects::API_PREFIX));
                // The JSON events are the gateway's to publish; wiping everything and deleting
                // songs are an administrator's (over HTTP, they need an admin token).
                p.publish_deny
                    .push(format!("{}.>", subjects::API_EVENT_PREFIX));
                for admin in subjects::API_ADMIN_ENDPOINTS {
                    p.publish_deny
                        .push(format!("{}.{admin}", subjects::API_PREFIX));
                }
                p.subscribe
                    .push(format!("{}.>", subjects::API_EVENT_PREFIX));
                // `nats micro ping|info|stats dme-api`.
                p.publish.push(format!("$SRV.*.{}", subjects::API_SERVICE));
                p.publish
                    .push(format!("$SRV.*.{}.>", subjects::API_SERVICE));
                p.publish.push(js(&format!(
                    "STREAM.INFO.{}",
                    streams::object_stream(streams::UPLOAD_BUCKET)
                )));
                p.objects(streams::UPLOAD_BUCKET, true);
                // nats.py finds the stream behind a subscription by its subject (listing the
                // bucket); the names of the streams are no secret.
                p.publish.push(js("STREAM.NAMES"));
            }
        }
        p
    }
}

/// `$JS.API.<rest>`.
fn js(rest: &str) -> String {
    format!("$JS.API.{rest}")
}

/// One user's permissions: subjects it may publish to (less those denied) and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (with wildcards) it may publish to.
    pub publish: Vec<String>,
    /// Subjects inside `publish` it may not publish to.
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

impl Permissions {
    fn sub(&mut self, subject: String) {
        self.subscribe.push(subject);
    }

    /// A service: replies on its own inbox, and a micro service of its own name.
    fn service(&mut self, role: Role) {
        self.subscribe.push(format!("{}.>", role.inbox_prefix()));
        let name = match role {
            Role::Splitter => subjects::SERVICE_SPLITTER,
            Role::Separator => subjects::SERVICE_SEPARATOR,
            Role::Mixer => subjects::SERVICE_MIXER,
            _ => return,
        };
        self.serve(name);
        self.subscribe
            .push(format!("{}.{name}.>", subjects::STATUS_GROUP));
    }

    /// Answers discovery (`$SRV.PING`, `$SRV.INFO.<name>`, ...) as micro service `name`, and
    /// its endpoints' requests. Answers may go to inboxes only (every role's, and the tools'
    /// `_INBOX`), not wherever a request's reply subject points: NATS's `allow_responses` would
    /// let any requester aim an answer at `$JS.API.STREAM.PURGE.<stream>` or a record's subject
    /// and have the service publish there with its rights.
    fn serve(&mut self, name: &str) {
        for role in Role::ALL {
            let inboxes = format!("{}.>", role.inbox_prefix());
            if !self.publish.contains(&inboxes) {
                self.publish.push(inboxes);
            }
        }
        self.subscribe.push("$SRV.*".into());
        self.subscribe.push(format!("$SRV.*.{name}"));
        self.subscribe.push(format!("$SRV.*.{name}.>"));
    }

    /// Looks up and creates (when missing) every stream and bucket, as every service does at
    /// start-up so the order they start in does not matter; a creation of a stream that exists
    /// with another configuration is refused by the server, so this changes nothing that is
    /// there. Sets the object store's maximum (`DME_STORE_MAX_BYTES`).
    fn declare_all(&mut self) {
        // The account's JetStream limits (the store's room).
        self.publish.push(js("INFO"));
        for stream in streams::declared_streams() {
            self.declare(&stream);
        }
        self.publish.push(js(&format!(
            "STREAM.UPDATE.{}",
            streams::object_stream(streams::FILE_BUCKET)
        )));
    }

    /// Looks up and creates `stream`.
    fn declare(&mut self, stream: &str) {
        self.publish.push(js(&format!("STREAM.INFO.{stream}")));
        self.publish.push(js(&format!("STREAM.CREATE.{stream}")));
    }

    /// Declares, reads and acks durable pull consumer `consumer` of `stream`.
    fn worker(&mut self, stream: &str, consumer: &str) {
        self.durable(stream, consumer);
    }

    /// Declares (creates or updates), pulls from and acks durable consumer `consumer`.
    /// Reads the info of any model's pool consumer (its waiting and busy workers size a
    /// song's segment window).
    fn pool_reads(&mut self) {
        self.publish
            .push(js(&format!("CONSUMER.INFO.{}.*", streams::WORK_STREAM)));
    }

    /// Declares, pulls from and acks the pool consumer of any model
    /// ([`streams::separator_consumer`]): its name is `separator-<fingerprint>`, which no
    /// subject wildcard spells, so the work stream's consumers are allowed by `*`, creating one
    /// only with a segment filter, and pulling from, acking or re-creating the other services'
    /// consumers is denied by name.
    fn separator_pools(&mut self) {
        let stream = streams::WORK_STREAM;
        self.publish.push(js(&format!("CONSUMER.INFO.{stream}.*")));
        self.publish.push(js(&format!(
            "CONSUMER.CREATE.{stream}.*.{}.>",
            subjects::WORK_SEGMENT
        )));
        self.publish
            .push(js(&format!("CONSUMER.MSG.NEXT.{stream}.*")));
        self.publish.push(format!("$JS.ACK.{stream}.*.>"));
        for other in [
            streams::SPLITTER_CONSUMER,
            streams::MIXER_ASSEMBLE_CONSUMER,
            streams::MIXER_MIX_CONSUMER,
        ] {
            self.publish_deny
                .push(js(&format!("CONSUMER.MSG.NEXT.{stream}.{other}")));
            // Nor re-point one at segments (a create with the same name updates its filter).
            self.publish_deny
                .push(js(&format!("CONSUMER.CREATE.{stream}.{other}.>")));
            self.publish_deny
                .push(format!("$JS.ACK.{stream}.{other}.>"));
        }
    }

    fn durable(&mut self, stream: &str, consumer: &str) {
        self.publish
            .push(js(&format!("CONSUMER.INFO.{stream}.{consumer}")));
        self.publish
            .push(js(&format!("CONSUMER.CREATE.{stream}.{consumer}")));
        self.publish
            .push(js(&format!("CONSUMER.CREATE.{stream}.{consumer}.>")));
        self.publish
            .push(js(&format!("CONSUMER.MSG.NEXT.{stream}.{consumer}")));
        self.publish.push(format!("$JS.ACK.{stream}.{consumer}.>"));
    }

    /// Reads `stream`'s info (with subject counts) and single messages.
    fn stream_reads(&mut self, stream: &str) {
        self.publish.push(js(&format!("STREAM.MSG.GET.{stream}")));
        self.publish.push(js(&format!("DIRECT.GET.{stream}")));
        self.publish.push(js(&format!("DIRECT.GET.{stream}.>")));
    }

    /// Ephemeral ordered consumers of `stream` (a feed read from a point; no acks).
    fn ordered_reads(&mut self, stream: &str) {
        self.publish.push(js(&format!("CONSUMER.CREATE.{stream}")));
        self.publish
            .push(js(&format!("CONSUMER.CREATE.{stream}.>")));
        self.publish
            .push(js(&format!("CONSUMER.DELETE.{stream}.>")));
        self.publish.push(format!("$JS.FC.{stream}.>"));
    }

    /// Publishes progress events, reading each song's last one first.
    fn events(&mut self) {
        self.publish.push(subjects::EVENT_ALL.into());
        self.stream_reads(streams::EVENT_STREAM);
    }

    /// Reads keys of KV bucket `bucket`.
    fn kv_read(&mut self, bucket: &str) {
        self.stream_reads(&streams::kv_stream(bucket));
    }

    /// Lists the keys of KV bucket `bucket`.
    fn kv_keys(&mut self, bucket: &str) {
        self.ordered_reads(&streams::kv_stream(bucket));
    }

    /// Writes, updates and deletes keys of KV bucket `bucket`.
    fn kv_write(&mut self, bucket: &str) {
        self.publish.push(format!("$KV.{bucket}.>"));
    }

    /// Reads objects of `bucket`, and with `write` puts and deletes them.
    fn objects(&mut self, bucket: &str, write: bool) {
        let stream = streams::object_stream(bucket);
        self.stream_reads(&stream);
        self.ordered_reads(&stream);
        if write {
            self.publish.push(format!("$O.{bucket}.>"));
            self.purge(&stream);
        }
    }

    /// Purges `stream` (whole, or by subject).
    fn purge(&mut self, stream: &str) {
        self.publish.push(js(&format!("STREAM.PURGE.{stream}")));
    }

    /// The lists without repeats, in their order.
    fn dedup(mut self) -> Permissions {
        for list in [
            &mut self.publish,
            &mut self.publish_deny,
            &mut self.subscribe,
        ] {
            let mut seen = std::collections::HashSet::new();
            list.retain(|s| seen.insert(s.clone()));
        }
        self
    }
}

/// How a user's password appears in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// Written into the file (`dme up`'s generated configuration, mode 0600).
    Literal(String),
    /// Read by nats-server from its environment ([`Role::password_variable`]), as in the
    /// repository's `nats-auth.conf`.
    FromEnvironment,
}

/// A random password: 32 hex digits (128 bits from the operating system), safe in a
/// configuration file and a command line without quoting.
///
/// # Panics
/// When the operating system has no randomness to give.
pub fn random_password() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The nats-server `authorization { users = [...] }` block for `users`, each with its role's
/// [`Permissions`]. Everything not allowed is denied; a connection without a user is refused.
pub fn authorization(users: &[(Role, Password)]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for (role, password) in users {
        let p = role.permissions().dedup();
        let password = match password {
            Password::Literal(p) => format!("\"{p}\""),
            Password::FromEnvironment => format!("${}", role.password_variable()),
        };
        let _ = writeln!(out, "    # {}", describe(*role));
        let _ = writeln!(
            out,
            "    {{ user: \"{}\", password: {password}, permissions: {{",
            role.user()
        );
        let _ = writeln!(out, "      publish: {{");
        let _ = writeln!(out, "        allow: {}", list(&p.publish, 8));
        if !p.publish_deny.is_empty() {
            let _ = writeln!(out, "        deny: {}", list(&p.publish_deny, 8));
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(
            out,
            "      subscribe: {{ allow: {} }}",
            list(&p.subscribe, 6)
        );
        let _ = writeln!(out, "    }} }}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// One line on what `role` does, above its user in the configuration.
fn describe(role: Role) -> &'static str {
    match role {
        Role::Gateway => "gateway: the HTTP and NATS API (uploads, records, reset, deletes)",
        Role::Splitter => "splitter: cuts uploads (dme.work.uploaded) into segments",
        Role::Separator => "separator: separates segments (dme.work.segment), every process",
        Role::Mixer => "mixer: assembles, mixes, fails exhausted work, reconciles",
        Role::Operator => "operator: read-only (info, records, events, micro services)",
        Role::Submitter => "submitter: the JSON API (dme.api.>) and the dme-uploads bucket",
    }
}

/// `[ "a", "b" ]`, one subject a line indented by `indent`.
fn list(subjects: &[String], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("[\n");
    for s in subjects {
        let _ = writeln!(out, "{pad}  \"{s}\"");
    }
    let _ = write!(out, "{pad}]");
    out
}

/// The repository's `nats-auth.conf`: `nats.conf` and the [`authorization`] of every role, each
/// password from the server's environment.
pub fn example_config() -> String {
    let mut out = String::from(
        "# NATS users of dme, one per role, each allowed only what it needs. Generated by\n\
         # dme_protocol::permissions (a test checks this file equals it); `dme up` writes the same\n\
         # block with random passwords into its data folder. Start with the passwords in the\n\
         # environment: DME_NATS_GATEWAY_PASSWORD=... (one per user) nats-server -c nats-auth.conf\n\
         include \"nats.conf\"\n\n",
    );
    let users: Vec<(Role, Password)> = Role::ALL
        .into_iter()
        .map(|r| (r, Password::FromEnvironment))
        .collect();
    out.push_str(&authorization(&users));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_example_is_what_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nats-auth.conf");
        if std::env::var_os("DME_WRITE_NATS_AUTH").is_some() {
            std::fs::write(path, example_config()).expect("nats-auth.conf written");
        }
        let committed = std::fs::read_to_string(path).expect("nats-auth.conf at the root");
        assert_eq!(
            committed,
            example_config(),
            "regenerate nats-auth.conf: DME_WRITE_NATS_AUTH=1 cargo test -p dme-protocol"
        );
    }

    #[test]
    fn services_read_replies_only_on_their_own_inbox() {
        for role in [Role::Gateway, Role::Splitter, Role::Separator, Role::Mixer] {
            let p = role.permissions();
            assert!(
                !p.subscribe.iter().any(|s| s.starts_with("_INBOX.")),
                "{role:?}"
            );
            assert!(p.subscribe.contains(&format!("{}.>", role.inbox_prefix())));
        }
    }

    #[test]
    fn passwords_are_long_and_differ() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}

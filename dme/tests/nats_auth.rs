//! NATS users per role, with least privilege (`dme_protocol::permissions`, `nats-auth.conf`).
//!
//! A whole system runs against a nats-server with one user per role, every service as its own
//! user: a short song separates and mixes, a NATS user submits, follows and deletes songs with
//! the submitter's credentials alone (`tests/clients/nats_api.py`), and `POST /reset` empties
//! everything, all without one permission violation in the server's log. Then raw clients show
//! what each role is refused: every refusal is paired with the same operation done by a role
//! that may do it, so no check passes because the operation could never work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use dme_protocol::permissions::{self, Password, Role};
use dme_protocol::{streams, subjects, MusicId};
use dme_testkit::system::{synth_wav, Options, System};
use dme_testkit::wait_for;
use tokio::sync::mpsc;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// How long a refused request waits before it gives up: the server drops a refused publish
/// without an answer, so a refused JetStream request ends only by this timeout (a hang guard).
const REFUSED_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Hang guard for the server's refusal to reach the client.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

/// Name of the test's own connections, so the server log tells them from the services'.
const TEST_CLIENT: &str = "nats-auth-test";

/// A raw client of one role, with the server's refusals of its operations.
struct RoleClient {
    client: async_nats::Client,
    js: jetstream::Context,
    refusals: mpsc::UnboundedReceiver<String>,
}

impl RoleClient {
    async fn connect(url: &str, role: Role, password: &str) -> RoleClient {
        let (tx, refusals) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("{TEST_CLIENT}-{}", role.user()))
            .user_and_password(role.user().into(), password.into())
            .custom_inbox_prefix(role.inbox_prefix())
            .request_timeout(Some(REFUSED_REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("{} connects: {e}", role.user()));
        let js = jetstream::new(client.clone());
        RoleClient {
            client,
            js,
            refusals,
        }
    }

    /// Waits for the server's permission violation naming `subject` (`Publish` or
    /// `Subscription`).
    async fn refused(&mut self, kind: &str, subject: &str) {
        let wanted = format!("Permissions Violation for {kind} to \"{subject}\"");
        let seen = tokio::time::timeout(REFUSAL_DEADLINE, async {
            while let Some(error) = self.refusals.recv().await {
                if error.contains(&wanted) {
                    return;
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "no refusal: {wanted}");
    }

    /// A JetStream publish of `payload` on `subject`: the stream's acknowledgement, or why not.
    async fn publish(&self, subject: &str) -> Result<jetstream::publish::PublishAck, String> {
        let ack = self
            .js
            .publish(subject.to_string(), "nats-auth test".into())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())
    }
}

/// The Python of the venv `scripts/setup.sh` made: the one beside its nats-server.
fn python() -> PathBuf {
    dme_testkit::nats_server_binary()
        .parent()
        .expect("nats-server lies in the venv's bin folder")
        .join("python")
}

/// `Permissions Violation` lines of the server's log not caused by this test's own clients
/// (nor by the submitter's client trying the administrator's subjects, which it must be
/// refused: [`admin_refusals`]).
fn service_violations(sys: &System) -> Vec<String> {
    let log = std::fs::read_to_string(sys.nats.log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("Violation") && !l.contains(TEST_CLIENT) && !is_admin_refusal(l))
        .map(str::to_string)
        .collect()
}

/// Whether a log line is the submitter refused an administrator's subject.
fn is_admin_refusal(line: &str) -> bool {
    line.contains("Violation")
        && line.contains("user:submitter")
        && subjects::API_ADMIN_ENDPOINTS
            .iter()
            .any(|e| line.contains(&format!("\"{}.{e}\"", subjects::API_PREFIX)))
}

/// How many times the server refused the submitter an administrator's subject.
fn admin_refusals(sys: &System) -> usize {
    let log = std::fs::read_to_string(sys.nats.log_path()).unwrap_or_default();
    log.lines().filter(|l| is_admin_refusal(l)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_works_with_its_own_user_and_is_refused_the_rest() {
    let passwords: HashMap<Role, String> = Role::ALL
        .into_iter()
        .map(|r| (r, permissions::random_password()))
        .collect();
    let users: Vec<(Role, Password)> = Role::ALL
        .into_iter()
        .map(|r| (r, Password::Literal(passwords[&r].clone())))
        .collect();
    let mut service_env = Vec::new();
    for (service, role) in [
        ("gateway", Role::Gateway),
        ("splitter", Role::Splitter),
        ("separator", Role::Separator),
        ("mixer", Role::Mixer),
    ] {
        for (key, value) in [
            ("DME_NATS_USER", role.user().to_string()),
            ("DME_NATS_PASSWORD", passwords[&role].clone()),
            ("DME_NATS_INBOX_PREFIX", role.inbox_prefix()),
        ] {
            service_env.push((service.to_string(), key.to_string(), value));
        }
    }
    let sys = System::start(
        DME,
        Options {
            nats_config: Some(permissions::authorization(&users)),
            service_env,
            ..Options::default()
        },
    )
    .await;
    let url = sys.nats.url();

    // Nobody gets in without a user.
    let anonymous = async_nats::ConnectOptions::new()
        .connect(url.as_str())
        .await;
    assert!(
        anonymous.is_err(),
        "a connection without credentials was accepted"
    );

    // The pipeline, every service as its own user: a short song separates and mixes.
    let id = sys
        .upload_and_select_all(synth_wav(44_100 * 3, 44_100, 0.4), "short.wav")
        .await;
    let done = sys.finished(id).await;
    let mix = sys
        .download(done["final"].as_str().expect("a mix link"))
        .await;
    assert_eq!(mix.status, 200, "the mix downloads");
    // Its event stream (an ordered pull consumer the gateway opens per stream) delivers.
    let mut events = sys
        .http
        .get(sys.url(&format!("/music/{id}/events")))
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(events.status(), 200);
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), events.chunk())
        .await
        .expect("an event within 30 s")
        .expect("the stream reads")
        .expect("a first chunk");
    assert!(
        String::from_utf8_lossy(&first).contains("event: mix"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    let replayed = sys
        .http
        .get(sys.url(&format!("/music/{id}/events")))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("the event stream opens");
    let mut replayed = replayed;
    let live = tokio::time::timeout(std::time::Duration::from_secs(30), replayed.chunk())
        .await
        .expect("a stored event within 30 s: the gateway pulls them from the stream")
        .expect("the stream reads")
        .expect("a first chunk");
    assert!(
        String::from_utf8_lossy(&live).contains("id: 1\n"),
        "{}",
        String::from_utf8_lossy(&live)
    );

    // The JSON API with the submitter's credentials alone: uploads inline and through the
    // uploads bucket, events, selection, reads, a delete, errors, discovery.
    let port = url.rsplit(':').next().expect("a port");
    let submitter_url = format!(
        "nats://{}:{}@127.0.0.1:{port}",
        Role::Submitter.user(),
        passwords[&Role::Submitter]
    );
    let folder = tempfile::tempdir().unwrap();
    let first = folder.path().join("first.wav");
    let second = folder.path().join("second.wav");
    std::fs::write(&first, synth_wav(44_100 * 3, 44_100, 0.3)).unwrap();
    std::fs::write(&second, synth_wav(44_100 * 2, 44_100, 0.7)).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/nats_api.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(submitter_url)
            .arg(&first)
            .arg(&second)
            .arg("--no-admin")
            .output()
            .expect("the venv's python runs (scripts/setup.sh installs it)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the submitter's NATS client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        seen["admin_refused"], true,
        "delete and reset refused to the submitter"
    );
    assert_eq!(
        admin_refusals(&sys),
        2,
        "the server refused the submitter both"
    );
    let violations = service_violations(&sys);
    assert!(violations.is_empty(), "refused: {violations:#?}");

    let mut separator =
        RoleClient::connect(&url, Role::Separator, &passwords[&Role::Separator]).await;
    let mut submitter =
        RoleClient::connect(&url, Role::Submitter, &passwords[&Role::Submitter]).await;
    let mut operator = RoleClient::connect(&url, Role::Operator, &passwords[&Role::Operator]).await;
    let gateway = RoleClient::connect(&url, Role::Gateway, &passwords[&Role::Gateway]).await;
    let mixer = RoleClient::connect(&url, Role::Mixer, &passwords[&Role::Mixer]).await;

    // An upload event: the gateway's to publish, never a separator's or a submitter's. (The
    // splitter terminates the gateway's empty one.)
    let uploaded = subjects::work(subjects::WORK_UPLOADED, MusicId(1));
    assert!(separator.publish(&uploaded).await.is_err());
    separator.refused("Publish", &uploaded).await;
    assert!(submitter.publish(&uploaded).await.is_err());
    submitter.refused("Publish", &uploaded).await;
    gateway
        .publish(&uploaded)
        .await
        .expect("the gateway publishes an upload event");

    // A music record: the services write them (a separator fails the song of a segment it
    // gives up on); the operator only reads them.
    let record_key = "nats-auth-test";
    let kv_subject = format!("$KV.{}.{record_key}", streams::MUSIC_BUCKET);
    let music = separator
        .js
        .get_key_value(streams::MUSIC_BUCKET)
        .await
        .expect("a separator reads music records");
    assert!(
        music.get(id.to_string()).await.expect("a read").is_some(),
        "a separator reads the song's record"
    );
    let read_only = operator
        .js
        .get_key_value(streams::MUSIC_BUCKET)
        .await
        .expect("the operator reads music records");
    assert!(read_only
        .get(id.to_string())
        .await
        .expect("a read")
        .is_some());
    assert!(read_only.put(record_key, "x".into()).await.is_err());
    operator.refused("Publish", &kv_subject).await;
    let writable = mixer.js.get_key_value(streams::MUSIC_BUCKET).await.unwrap();
    writable
        .put(record_key, "x".into())
        .await
        .expect("the mixer writes a record");
    writable.purge(record_key).await.expect("and removes it");

    // Purging a stream: the gateway's (reset, deletes), never a separator's.
    let purge = format!("$JS.API.STREAM.PURGE.{}", streams::WORK_STREAM);
    let [nothing, _] = subjects::song_work(MusicId(1));
    let work = separator
        .js
        .get_stream(streams::WORK_STREAM)
        .await
        .expect("a separator looks up the work stream");
    assert!(work.purge().filter(&nothing).await.is_err());
    separator.refused("Publish", &purge).await;
    // A separator pulls from any model's pool, never from another service's consumer.
    let splitters = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        streams::WORK_STREAM,
        streams::SPLITTER_CONSUMER
    );
    separator
        .client
        .publish(splitters.clone(), "{\"batch\":1}".into())
        .await
        .unwrap();
    separator.refused("Publish", &splitters).await;
    // Nor re-points another service's consumer at segments (a create updates its filter).
    let repoint = format!(
        "$JS.API.CONSUMER.CREATE.{}.{}.{}",
        streams::WORK_STREAM,
        streams::SPLITTER_CONSUMER,
        subjects::work_filter(subjects::WORK_SEGMENT)
    );
    separator
        .client
        .publish(repoint.clone(), "{}".into())
        .await
        .unwrap();
    separator.refused("Publish", &repoint).await;
    let work = gateway.js.get_stream(streams::WORK_STREAM).await.unwrap();
    work.purge()
        .filter(&nothing)
        .await
        .expect("the gateway purges a song's work");

    // Another bucket: the uploads bucket is the gateway's and the submitter's, not a
    // separator's; the file store's records and jobs are the services'.
    let info = format!(
        "$JS.API.STREAM.INFO.{}",
        streams::object_stream(streams::UPLOAD_BUCKET)
    );
    assert!(separator
        .js
        .get_object_store(streams::UPLOAD_BUCKET)
        .await
        .is_err());
    separator.refused("Publish", &info).await;
    submitter
        .js
        .get_object_store(streams::UPLOAD_BUCKET)
        .await
        .expect("the submitter opens the uploads bucket");
    // Replies to others: a separator reads only its own inbox.
    let others = format!("{}.>", permissions::DEFAULT_INBOX_PREFIX);
    let _denied = separator.client.subscribe(others.clone()).await;
    separator.refused("Subscription", &others).await;

    // The submitter: the JSON API, and nothing of the services' (work, records, jobs).
    let listed = submitter
        .client
        .request("dme.api.music.list", "".into())
        .await
        .expect("the submitter lists songs over the JSON API");
    let songs: serde_json::Value = serde_json::from_slice(&listed.payload).expect("JSON");
    assert!(
        songs
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["music_id"] == id)),
        "{songs}"
    );
    let kv_info = format!(
        "$JS.API.STREAM.INFO.{}",
        streams::kv_stream(streams::JOB_BUCKET)
    );
    assert!(submitter
        .js
        .get_key_value(streams::JOB_BUCKET)
        .await
        .is_err());
    submitter.refused("Publish", &kv_info).await;
    let segment = subjects::work(&subjects::work_segment("0123abcd"), MusicId(1));
    assert!(submitter.publish(&segment).await.is_err());
    submitter.refused("Publish", &segment).await;
    let fake_event = subjects::api_event(MusicId(1));
    submitter
        .client
        .publish(fake_event.clone(), "{}".into())
        .await
        .unwrap();
    submitter.refused("Publish", &fake_event).await;

    // Reset purges every stream and bucket, as the gateway's user.
    let reset = sys.post_json("/reset", "").await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    let songs = sys.get("/music").await;
    assert_eq!(songs.body, serde_json::json!([]), "reset left songs");
    let violations = service_violations(&sys);
    assert!(violations.is_empty(), "refused: {violations:#?}");
    // The log does record refusals: the test's own are in it.
    let log = std::fs::read_to_string(sys.nats.log_path()).expect("the server's log");
    assert!(
        log.lines()
            .any(|l| l.contains("Violation") && l.contains(TEST_CLIENT)),
        "the server's log shows no refusal at all"
    );

    // A request whose reply subject points at a JetStream operation does not make the service
    // that answers it do that operation: answers go to inboxes only.
    let id = sys
        .upload_and_select_all(synth_wav(44_100 * 2, 44_100, 0.6), "kept.wav")
        .await;
    sys.finished(id).await;
    let files = streams::object_stream(streams::FILE_BUCKET);
    let stored = |js: jetstream::Context, files: String| async move {
        let mut stream = js.get_stream(files).await.expect("the file stream");
        stream.info().await.expect("its info").state.messages
    };
    let before = stored(gateway.js.clone(), files.clone()).await;
    assert!(before > 0);
    let purge = format!("$JS.API.STREAM.PURGE.{files}");
    submitter
        .client
        .publish_with_reply(
            "dme.api.music.get",
            purge.clone(),
            r#"{"music_id": 1}"#.into(),
        )
        .await
        .unwrap();
    submitter
        .client
        .publish_with_reply("$SRV.PING.dme-api", purge.clone(), "".into())
        .await
        .unwrap();
    submitter.client.flush().await.unwrap();
    // The discovery answer (answered by async-nats itself) reached the JetStream API, which
    // refuses its JSON; the API's answer (an empty error body: a purge of everything) was never
    // sent. An answer from the same endpoint after them shows the gateway got that far.
    wait_for(
        "the ping's answer refused by JetStream",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(sys.nats.log_path()).unwrap_or_default();
            let seen = log
                .lines()
                .any(|l| l.contains("Invalid JetStream request") && l.contains(purge.as_str()));
            std::future::ready(seen.then_some(()))
        },
    )
    .await;
    let answer = submitter
        .client
        .request("dme.api.music.get", r#"{"music_id": 1}"#.into())
        .await
        .expect("an answer to the submitter's own inbox");
    assert!(answer.headers.is_some(), "a 404 service error");
    assert_eq!(
        stored(gateway.js.clone(), files.clone()).await,
        before,
        "the file store was not purged"
    );
}

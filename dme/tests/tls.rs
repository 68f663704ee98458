//! TLS end to end, with certificates this test makes: a CA, a certificate for `127.0.0.1` and
//! `localhost` that both the nats-server and the gateway serve, and a client certificate every
//! service presents. The nats-server accepts only TLS and verifies its clients
//! (`tls { verify: true }`); the gateway serves only HTTPS (`DME_TLS_CERT`, `DME_TLS_KEY`);
//! every service trusts the test CA alone (`DME_NATS_CA`) and presents the client certificate
//! (`DME_NATS_CERT`, `DME_NATS_KEY`).
//!
//! A song goes the whole way over HTTPS, the links the gateway hands out (over HTTP and over the
//! NATS API) say `https`, plain HTTP on the gateway's port gets no answer, and a service that
//! does not trust the CA, or has no client certificate, never gets into NATS.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use dme_testkit::system::{env, synth_wav, Options, System};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Start-up wait for NATS of the services that must fail: long enough for a few attempts.
const FAILING_CONNECT_TIMEOUT_S: &str = "3";

/// Hang guard for a service that must give up connecting (it waits
/// [`FAILING_CONNECT_TIMEOUT_S`]; a debug build's start takes seconds more on a loaded machine).
const FAILING_SERVICE_DEADLINE: Duration = Duration::from_secs(120);

/// The PEM files of the test's certificates.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// Makes a CA, a server certificate for `127.0.0.1` and `localhost`, and a client certificate,
/// all signed by the CA, and writes them as PEM files to a temporary folder.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().expect("a folder for the certificates");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("a PEM file written");
        path
    };

    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "dme test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "dme test server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "dme test service");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &ca).unwrap();

    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server-key.pem", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
        _dir: dir,
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// Every string in `value` that is a link.
fn links(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.contains("://") => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| links(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| links(v, out)),
        _ => {}
    }
}

/// Runs `dme splitter` of `sys` without the TLS settings in `remove`, giving up on NATS after
/// [`FAILING_CONNECT_TIMEOUT_S`]; returns how it ended.
async fn splitter_without(sys: &System, remove: &[&str]) -> Output {
    let mut cmd = sys.command("splitter", &[]);
    for key in remove {
        cmd.env_remove(key);
    }
    cmd.env("DME_CONNECT_TIMEOUT_S", FAILING_CONNECT_TIMEOUT_S)
        .env("DME_LOG", "warn")
        .stdin(std::process::Stdio::null());
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("dme splitter runs"));
    tokio::time::timeout(FAILING_SERVICE_DEADLINE, run)
        .await
        .expect("the splitter gives up within its connect timeout")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_runs_over_tls_only() {
    let pki = make_pki();
    let nats_tls = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}",
        text(&pki.server_cert),
        text(&pki.server_key),
        text(&pki.ca),
    );
    let sys = System::start(
        DME,
        Options {
            env: env(&[
                ("DME_NATS_CA", text(&pki.ca)),
                ("DME_NATS_CERT", text(&pki.client_cert)),
                ("DME_NATS_KEY", text(&pki.client_key)),
            ]),
            gateway_env: env(&[
                ("DME_TLS_CERT", text(&pki.server_cert)),
                ("DME_TLS_KEY", text(&pki.server_key)),
            ]),
            nats_config: Some(nats_tls),
            https_ca: Some(pki.ca.clone()),
            ..Options::default()
        },
    )
    .await;
    let origin = format!("https://127.0.0.1:{}/", sys.port);

    // A song, uploaded, separated and mixed over HTTPS by a client that trusts the test CA alone.
    let id = sys
        .upload_and_select_all(synth_wav(44_100 * 3, 44_100, 0.4), "tls.wav")
        .await;
    let done = sys.finished(id).await;
    let mut seen = Vec::new();
    links(&done, &mut seen);
    assert!(!seen.is_empty(), "the finished song has links: {done}");
    for link in &seen {
        assert!(link.starts_with(&origin), "{link} is not on {origin}");
    }
    let stem = done["instruments"][0]["track"]
        .as_str()
        .expect("a stem link");
    let download = sys.download(&format!("{stem}?format=wav32f")).await;
    assert_eq!(download.status, 200, "{stem}");
    let (audio, rate) = dme_audio::read_wav(&download.bytes).expect("a float WAV stem");
    assert_eq!(rate, 44_100);
    assert!(!audio.left.is_empty());

    // Plain HTTP on the same port gets no API answer, only a failed handshake.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/healthz", sys.port))
        .send()
        .await;
    let answered = match plain {
        Ok(response) => response.json::<Value>().await.ok(),
        Err(_) => None,
    };
    assert_eq!(answered, None, "plain HTTP got an API answer");

    // The NATS API's links (no request to take a scheme from) say https too, and a client with
    // the CA and a client certificate reaches the TLS-only server.
    let nats = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca.clone())
        .add_client_certificate(pki.client_cert.clone(), pki.client_key.clone())
        .require_tls(true)
        .connect(sys.nats.url())
        .await
        .expect("the test connects to NATS over TLS");
    let reply = nats
        .request(
            format!("{}.music.get", dme_protocol::subjects::API_PREFIX),
            json!({ "music_id": id }).to_string().into(),
        )
        .await
        .expect("dme.api.music.get answers");
    let over_nats: Value = serde_json::from_slice(&reply.payload).expect("a JSON answer");
    let mut seen = Vec::new();
    links(&over_nats, &mut seen);
    assert!(!seen.is_empty(), "the NATS answer has links: {over_nats}");
    for link in &seen {
        assert!(link.starts_with(&origin), "{link} is not on {origin}");
    }

    // A service that does not trust the test CA cannot get in (the server requires TLS, and
    // its certificate is no system root's); nor can one that trusts it but has no client
    // certificate (the server verifies clients). Each gives up at its connect timeout.
    let no_ca = splitter_without(&sys, &["DME_NATS_CA", "DME_NATS_CERT", "DME_NATS_KEY"]).await;
    let no_cert = splitter_without(&sys, &["DME_NATS_CERT", "DME_NATS_KEY"]).await;
    for (what, output) in [("no CA", no_ca), ("no client certificate", no_cert)] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: the splitter started");
        assert!(
            stderr.contains("not reachable"),
            "{what}: the splitter's error says NATS was not reached: {stderr}"
        );
    }
    // The server saw why: the first refused its certificate, the second presented none.
    let log = std::fs::read_to_string(sys.nats.log_path()).expect("the server's log");
    for why in [
        "tls: unknown certificate authority",
        "tls: client didn't provide a certificate",
    ] {
        assert!(log.contains(why), "the server's log says {why:?}:\n{log}");
    }
}

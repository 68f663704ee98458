//! Separators refuse a model that breaks the contract, at start-up, with a clear message.

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_separator_with_a_wrong_contract_model_stops_at_start_up_saying_why() {
    let nats = dme_testkit::NatsServer::start();
    let output = Command::new(env!("CARGO_BIN_EXE_dme"))
        .arg("separator")
        .env("DME_NATS_URL", nats.url())
        .env("DME_MODEL", dme_testkit::model("test/bad_contract.onnx"))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not fit dme's contract") && stderr.contains("`audio`"),
        "{stderr}"
    );
}

#[test]
fn a_separator_with_a_missing_model_file_stops_at_start_up_saying_why() {
    let output = Command::new(env!("CARGO_BIN_EXE_dme"))
        .args([
            "separator",
            "--model",
            "/nonexistent/model.onnx",
            "--connect-timeout-s",
            "1",
        ])
        .env("DME_NATS_URL", "nats://127.0.0.1:1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read model /nonexistent/model.onnx"),
        "{stderr}"
    );
}

/// Starts `dme up` on free ports and waits until it serves with a registered model.
fn start_up(data: &std::path::Path) -> (dme_testkit::Process, u16) {
    let port = dme_testkit::free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_dme"));
    c.arg("up")
        .env("DME_DATA_DIR", data)
        .env("DME_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DME_NATS_PORT", dme_testkit::free_port().to_string())
        .env("DME_NATS_SERVER", dme_testkit::nats_server_binary())
        .env("DME_NATS_CONF", dme_testkit::repo_root().join("nats.conf"))
        .env("DME_SEPARATORS", "2")
        .env("DME_LOG", "warn")
        .env_remove("DME_NATS_URL");
    let mut up = dme_testkit::Process::spawn("dme up", c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}/healthz");
        let health: serde_json::Value =
            dme_testkit::wait_for("dme up", Duration::from_secs(180), || {
                let url = url.clone();
                assert!(up.is_running(), "dme up exited early (its error is above)");
                async move {
                    let v: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                    (!v["model"].is_null()).then_some(v)
                }
            })
            .await;
        assert_eq!(health["status"], "ok");
        assert_eq!(health["model"]["name"], "dme-hpss-dsp");
    });
    (up, port)
}

#[test]
fn dme_up_runs_the_whole_system_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, _) = start_up(data.path());
    // Its separators share the machine with the rest: they run at nice 10, every thread.
    let separators = dme_testkit::children_running(up.id(), "separator");
    assert_eq!(separators.len(), 2, "{separators:?}");
    for pid in separators {
        let nices = dme_testkit::thread_nices(pid);
        assert!(
            !nices.is_empty() && nices.iter().all(|n| *n == 10),
            "{nices:?}"
        );
    }
    let status = up
        .terminate(Duration::from_secs(30))
        .expect("dme up stops within 30 s");
    assert!(status.success(), "{status}");
    assert!(
        data.path().join("nats/jetstream").exists(),
        "its nats-server kept a store in DME_DATA_DIR"
    );
}

#[test]
fn a_killed_dme_up_leaves_no_service_behind() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, port) = start_up(data.path());
    up.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway outlived its launcher"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

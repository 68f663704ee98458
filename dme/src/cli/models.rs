//! `dme models` and `dme models add`: the models a deployment offers.
//!
//! `dme models` asks the gateway (`GET /models`). `dme models add` is the one command that
//! speaks NATS instead of HTTP: it registers a model in the store, as a separator running it
//! does when it starts, so uploads for it are accepted (and wait in the queue) before any of its
//! separators runs. It takes the services' connection settings (`DME_NATS_URL`, and with a
//! nats-server that has users, a user that may write the system bucket: the separator's).

use std::path::PathBuf;

use clap::Args;
use dme_model::{Model, ModelOptions, ModelSource};
use dme_storage::{NatsArgs, Store};
use serde_json::{json, Value};

use super::client::{CliError, Client};
use super::output::{self, cell, Table};
use super::Server;

/// `dme models add [FILE]`.
#[derive(Args)]
pub struct AddArgs {
    /// The ONNX model to offer (the separators' contract: `mix` [1,2,T] -> `stems` [1,S,2,T]);
    /// the embedded default when absent.
    #[arg(value_name = "FILE", env = "DME_MODEL")]
    file: Option<PathBuf>,
    /// Where NATS is, as the services take it.
    #[command(flatten)]
    nats: NatsArgs,
    /// Print the registered model as JSON.
    #[arg(long)]
    json: bool,
}

/// `dme models`: `GET /models`, a table of the models offered and their pools.
///
/// # Errors
/// The request's; a gateway without `/models` (404) is [`CliError::Server`].
pub async fn list(server: &Server) -> Result<(), CliError> {
    let client = Client::new(&server.url)?.with_token(server.token.as_deref())?;
    let models = super::system::listing(&client, "/models", "models").await?;
    if server.json {
        return output::json(&models);
    }
    let models = models.as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        return output::line("no models registered (start a separator, or `dme models add FILE`)");
    }
    let mut table = Table::new(&["NAME", "FINGERPRINT", "STEMS", "SEPARATORS", "DEFAULT"]);
    for m in &models {
        let stems: Vec<String> = m["sources"]
            .as_array()
            .map(|s| s.iter().map(cell).collect())
            .unwrap_or_default();
        table.row(vec![
            cell(&m["name"]),
            cell(&m["fingerprint"]),
            stems.join(","),
            cell(&m["separators"]),
            if m["default"] == Value::Bool(true) {
                "yes".into()
            } else {
                String::new()
            },
        ]);
    }
    table.print()
}

/// `dme models add [FILE]`: loads the model (checking it keeps the separators' contract) and
/// registers it over NATS.
///
/// # Errors
/// [`CliError::Usage`] when the model cannot be loaded or breaks the contract;
/// [`CliError::Unreachable`] when NATS cannot be reached or refuses the write.
pub async fn add(args: &AddArgs) -> Result<(), CliError> {
    let source = match &args.file {
        Some(path) => ModelSource::File(path.clone()),
        None => ModelSource::Embedded,
    };
    let shown = args.file.as_ref().map_or_else(
        || "the embedded model".to_string(),
        |p| p.display().to_string(),
    );
    let info = tokio::task::spawn_blocking(move || {
        Model::load(&source, &ModelOptions::default()).map(|m| m.info().clone())
    })
    .await
    .map_err(|e| CliError::Usage(format!("loading {shown}: {e}")))?
    .map_err(|e| CliError::Usage(format!("{shown}: {}", dme_storage::error_chain(&e))))?;
    let unreachable = |e: dme_storage::StoreError| CliError::Unreachable {
        url: args.nats.nats_url.clone(),
        cause: dme_storage::error_chain(&e),
    };
    let store = Store::connect_with(&args.nats, "dme-models-add")
        .await
        .map_err(unreachable)?;
    store.register_model(&info).await.map_err(unreachable)?;
    if args.json {
        return output::json(&json!(info));
    }
    output::line(&format!(
        "registered {} ({}): stems {}",
        info.name,
        info.fingerprint,
        info.sources.join(",")
    ))
}

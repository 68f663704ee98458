//! The registered model ([`dme_protocol::streams::MODEL_KEY`] in the system bucket).

use dme_protocol::records::ModelInfo;
use dme_protocol::streams;

use crate::{kv, nats, Result, Store};

impl Store {
    /// The model the separators run, once one has registered.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn model(&self) -> Result<Option<ModelInfo>> {
        kv::get(&self.system, streams::MODEL_KEY).await
    }

    /// Registers the model this separator runs (the last one to start wins).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn register_model(&self, model: &ModelInfo) -> Result<()> {
        self.system
            .put(streams::MODEL_KEY, dme_protocol::encode(model).into())
            .await
            .map_err(nats("register model"))?;
        Ok(())
    }
}

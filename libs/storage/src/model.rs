//! The registered models: one [`ModelInfo`] per model a deployment offers, under
//! [`dme_protocol::streams::model_key`] in the system bucket. A separator registers the model it
//! runs when it starts; `dme models add` (and `dme up`) register one before any separator runs,
//! so uploads for it are accepted and wait in the queue.

use dme_protocol::records::ModelInfo;
use dme_protocol::streams;

use futures::TryStreamExt;

use crate::{kv, nats, Result, Store};

impl Store {
    /// Every registered model, sorted by name, then fingerprint. The keys are found in the
    /// system bucket's stream info (no consumer is created: `/healthz` asks often).
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn models(&self) -> Result<Vec<ModelInfo>> {
        let stream = self
            .js
            .get_stream(streams::kv_stream(streams::SYSTEM_BUCKET))
            .await
            .map_err(nats("get system bucket stream"))?;
        let keys = streams::kv_subject(streams::SYSTEM_BUCKET, "");
        let filter = format!(
            "{}>",
            streams::kv_subject(streams::SYSTEM_BUCKET, streams::MODEL_KEY_PREFIX)
        );
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(nats("system bucket subjects"))?;
        let mut models = Vec::new();
        while let Some((subject, _)) = subjects
            .try_next()
            .await
            .map_err(nats("system bucket subjects"))?
        {
            let Some(key) = subject.strip_prefix(&keys) else {
                continue;
            };
            // A removed key's subject holds its delete marker: no model.
            if let Some(model) = kv::get::<ModelInfo>(&self.system, key).await? {
                models.push(model);
            }
        }
        models.sort_by(|a, b| (&a.name, &a.fingerprint).cmp(&(&b.name, &b.fingerprint)));
        Ok(models)
    }

    /// The registered model whose fingerprint is `fingerprint`.
    ///
    /// # Errors
    /// On NATS failure or an undecodable record.
    pub async fn model(&self, fingerprint: &str) -> Result<Option<ModelInfo>> {
        if !is_fingerprint(fingerprint) {
            return Ok(None);
        }
        kv::get(&self.system, &streams::model_key(fingerprint)).await
    }

    /// Registers `model` (or refreshes its record): uploads may name it from now on.
    ///
    /// # Errors
    /// On NATS failure, or when `model`'s fingerprint is not one subject token of hex digits.
    pub async fn register_model(&self, model: &ModelInfo) -> Result<()> {
        if !is_fingerprint(&model.fingerprint) {
            return Err(crate::StoreError::Invalid(format!(
                "model fingerprint {:?} is not hex",
                model.fingerprint
            )));
        }
        self.system
            .put(
                streams::model_key(&model.fingerprint),
                dme_protocol::encode(model).into(),
            )
            .await
            .map_err(nats("register model"))?;
        Ok(())
    }
}

/// Whether `s` can be a model's fingerprint: lower-case hex, so it is one subject token and one
/// key word.
pub fn is_fingerprint(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

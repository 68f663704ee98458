//! The uploads bucket (`dme-uploads`): where a NATS user puts a file (`nats object put
//! dme-uploads song.mp3`) before asking `dme.api.music.upload` to make it a song.

use async_nats::jetstream::object_store::ObjectStore;
use dme_protocol::streams;

use crate::{nats, ObjectReader, Result, Store};

/// The uploads bucket, opened (and created when missing) by the gateway.
#[derive(Clone)]
pub struct UploadBucket {
    js: async_nats::jetstream::Context,
    bucket: ObjectStore,
}

impl Store {
    /// The uploads bucket, created with this store's replicas (`DME_REPLICAS`) when missing.
    ///
    /// # Errors
    /// When JetStream refuses to create it (for example, the server's store is too small for
    /// its maximum).
    pub async fn upload_bucket(&self) -> Result<UploadBucket> {
        let bucket = match self.js.get_object_store(streams::UPLOAD_BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => match self
                .js
                .create_object_store(streams::upload_bucket(self.replicas))
                .await
            {
                Ok(bucket) => bucket,
                // Another gateway created it at the same moment.
                Err(create) => self
                    .js
                    .get_object_store(streams::UPLOAD_BUCKET)
                    .await
                    .map_err(|_| nats("declare uploads bucket")(create))?,
            },
        };
        Ok(UploadBucket {
            js: self.js.clone(),
            bucket,
        })
    }
}

impl UploadBucket {
    /// A reader of the file `name`, or `None` when there is no such file. The reader fails
    /// instead of waiting forever when the file goes while it is read (deleted, expired).
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn open(&self, name: &str) -> Result<Option<ObjectReader>> {
        crate::objects::open_object(&self.js, &self.bucket, name).await
    }

    /// Deletes the file `name` (done with it: it is a song now). A file already gone is fine.
    ///
    /// # Errors
    /// On NATS failure.
    pub async fn delete(&self, name: &str) -> Result<()> {
        use async_nats::jetstream::object_store::DeleteErrorKind;
        match self.bucket.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(nats("delete an uploaded file")(e)),
        }
    }
}

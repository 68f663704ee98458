//! Progress events ([`dme_protocol::streams::EVENT_STREAM`]): one subject per song, for live
//! views. Records are the truth; events are a convenience.

use bytes::Bytes;
use dme_protocol::messages::ProgressEvent;
use dme_protocol::subjects;

use crate::Store;

impl Store {
    /// Publishes `event` on its song's subject. Events are a convenience for live views (records
    /// are the truth), so a failure is logged, not returned.
    pub async fn publish_progress(&self, event: &ProgressEvent) {
        let subject = subjects::event(event.music_id);
        let payload = Bytes::from(dme_protocol::encode(event));
        if let Err(e) = self.js.publish(subject, payload).await {
            tracing::warn!(error = %e, music_id = %event.music_id, "progress event not published");
        }
    }
}

//! Watching the object store from a test: which objects are written or deleted while it runs
//! (each put or delete publishes the object's metadata on `$O.<bucket>.M.<name>`).

use std::sync::{Arc, Mutex};

use dme_protocol::streams;
use dme_storage::Store;
use futures::StreamExt;
use serde_json::Value;

/// The names of the objects written or deleted since [`ObjectWrites::watch`], in order.
pub struct ObjectWrites {
    task: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ObjectWrites {
    /// Starts watching; every write after it returns is seen.
    ///
    /// # Panics
    /// When NATS refuses the subscription.
    pub async fn watch(store: &Store) -> ObjectWrites {
        let mut sub = store
            .client()
            .subscribe(format!("$O.{}.M.>", streams::FILE_BUCKET))
            .await
            .expect("a subscription to object metadata");
        store
            .client()
            .flush()
            .await
            .expect("the subscription is in place");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let name = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v["name"].as_str().map(String::from))
                    .unwrap_or_else(|| m.subject.to_string());
                out.lock().expect("not poisoned").push(name);
            }
        });
        ObjectWrites { task, seen }
    }

    /// The names seen so far.
    pub fn names(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for ObjectWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Object reads against a real nats-server.

use std::time::{Duration, Instant};

use dme_storage::{Store, OBJECT_READ_IDLE};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn reading_an_object_deleted_midway_fails_instead_of_hanging() {
    let nats = dme_testkit::NatsServer::start();
    let store = Store::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    // Streamed, so in 128 KiB chunks: 32 of them, far more than arrive before the reset.
    store.put_object_from("big", &mut &data[..]).await.unwrap();
    assert_eq!(store.get_object("big").await.unwrap().unwrap(), data);

    let mut reader = store.object_reader("big").await.unwrap().unwrap();
    assert_eq!(reader.size(), data.len() as u64);
    let mut first = vec![0u8; 1000];
    reader.read_exact(&mut first).await.unwrap();
    store.reset().await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let result = tokio::time::timeout(OBJECT_READ_IDLE * 2, reader.read_to_end(&mut rest))
        .await
        .expect("the read of a deleted object hung");
    // Either the reader notices the chunks are gone, or it times out; it never hangs.
    assert!(
        result.is_err() || rest.len() + 1000 < data.len(),
        "{result:?}"
    );
    assert!(started.elapsed() < OBJECT_READ_IDLE + Duration::from_secs(10));
    assert!(store.get_object("big").await.unwrap().is_none());
}

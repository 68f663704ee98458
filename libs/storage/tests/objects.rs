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
    let data: Vec<u8> = (0..16_000_000u32).map(|i| (i % 251) as u8).collect();
    // In 512 KiB chunks: 31 of them, far more than arrive before the reset.
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

/// Every chunk is a message acknowledged before the next is sent: an object put from memory,
/// or from a file through compression (short reads), goes in whole 512 KiB chunks, not in
/// zstd's 128 KiB blocks or in what a short read left of async-nats' buffer.
#[tokio::test]
async fn objects_are_stored_in_chunks_of_the_largest_size() {
    let nats = dme_testkit::NatsServer::start();
    let store = Store::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let files = async_nats::jetstream::new(client)
        .get_object_store(dme_protocol::streams::FILE_BUCKET)
        .await
        .unwrap();
    // 16 MB that zstd cannot shrink much: music-like f32 samples.
    let data: Vec<u8> = (0..4_000_000u32)
        .flat_map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) as f32).to_le_bytes())
        .collect();
    store.put_object("memory", &data).await.unwrap();
    let chunks = files.info("memory").await.unwrap().chunks;
    assert_eq!(chunks, data.len().div_ceil(512 * 1024), "from memory");

    let path = std::env::temp_dir().join(format!("dme-chunks-{}", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    store.put_compressed_file("packed", &path).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let info = files.info("packed").await.unwrap();
    // The file is read, and compressed, in short reads: the put still gathers whole chunks.
    assert_eq!(
        info.chunks,
        info.size.div_ceil(512 * 1024),
        "{} bytes compressed",
        info.size
    );
    let mut back = Vec::new();
    store
        .unpacked_object_reader("packed")
        .await
        .unwrap()
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert!(back == data);
}

//! The storage layer against a real S3-protocol server on loopback.
//!
//! `.ci/run` starts the server and sets `LIFEBOAT_TEST_S3_ENDPOINT` (e.g.
//! `http://127.0.0.1:9000`), `LIFEBOAT_TEST_S3_BUCKET` and the AWS credential variables. Without
//! the endpoint these tests print that they are skipped and pass.

mod common;

use bytes::Bytes;
use lifeboat_storage::{NetworkOptions, Storage, StorageError};

/// A fresh, empty location in the test bucket, or `None` (with a line saying so) without a server.
fn s3_location(test: &str) -> Option<String> {
    common::object_store_location(
        test,
        "s3",
        "LIFEBOAT_TEST_S3_ENDPOINT",
        "LIFEBOAT_TEST_S3_BUCKET",
    )
}

#[test]
fn s3_put_get_range_list_stat_delete() {
    let Some(location) = s3_location("basics") else {
        return;
    };
    let storage = Storage::create(&location).unwrap();
    assert_eq!(storage.location(), location);
    assert!(storage.local_root().is_none());
    assert!(storage.list("a/").unwrap().is_empty());
    storage
        .put("a/b/one", Bytes::from_static(b"hello"))
        .unwrap();
    storage.put("a/two", Bytes::from_static(b"world!")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    storage.put("data/big", Bytes::from(big.clone())).unwrap();
    assert_eq!(
        storage.get("a/b/one").unwrap(),
        Bytes::from_static(b"hello")
    );
    assert_eq!(
        storage.get_range("a/two", 1..4).unwrap(),
        Bytes::from_static(b"orl")
    );
    assert_eq!(
        storage.get_range("data/big", 1_000_000..2_500_000).unwrap(),
        Bytes::copy_from_slice(&big[1_000_000..2_500_000])
    );
    assert_eq!(storage.get("data/big").unwrap().len(), big.len());
    assert_eq!(storage.size("a/two").unwrap(), 6);
    let keys: Vec<_> = storage
        .list("a/")
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        keys,
        vec![("a/b/one".to_string(), 5), ("a/two".to_string(), 6)]
    );
    assert!(storage.get("a/missing").unwrap_err().is_not_found());
    assert!(!storage.exists("a/missing").unwrap());
    assert!(storage.list("nothing/").unwrap().is_empty());
    // Create-only puts are conditional writes: the second one is refused, the object unchanged.
    storage
        .put_new("config", Bytes::from_static(b"first"))
        .unwrap();
    let err = storage
        .put_new("config", Bytes::from_static(b"second"))
        .unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(storage.get("config").unwrap(), Bytes::from_static(b"first"));
    storage
        .put_new("config", Bytes::from_static(b"first"))
        .unwrap();
    storage.delete("a/two").unwrap();
    storage.delete("a/two").unwrap();
    assert!(!storage.exists("a/two").unwrap());
    let stats = storage.request_stats();
    assert_eq!(stats.puts, 6, "{stats:?}");
    assert_eq!(stats.deletes, 2, "{stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");
    assert!(stats.bytes_written >= big.len() as u64);
    // A second handle sees everything (no listing cache between handles).
    let again = Storage::open(&location).unwrap();
    assert_eq!(again.list("").unwrap().len(), 3);
}

#[test]
fn unreachable_endpoint_fails_naming_it_after_bounded_retries() {
    if s3_location("unreachable").is_none() {
        return;
    }
    // A port nothing listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let location = format!("s3:http://127.0.0.1:{port}/lifeboat-test/x");
    let network = NetworkOptions {
        retries: 3,
        min_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
        ..NetworkOptions::default()
    };
    let storage = Storage::open_with(&location, false, &network).unwrap();
    let started = std::time::Instant::now();
    let err = storage.get("config").unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let stats = storage.request_stats();
    assert_eq!(stats.retries, 3, "{stats:?}");
    assert_eq!(stats.gets, 4, "every retry counts as a request: {stats:?}");
}

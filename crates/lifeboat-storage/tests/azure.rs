//! The storage layer against a real Azure Blob server on loopback (Azurite).
//!
//! `.ci/run` starts Azurite and sets `LIFEBOAT_TEST_AZURE_ENDPOINT`
//! (`http://127.0.0.1:PORT/devstoreaccount1`), `LIFEBOAT_TEST_AZURE_CONTAINER` and
//! `AZURE_STORAGE_KEY`. Without the endpoint these tests print that they are skipped and pass.

mod common;

use bytes::Bytes;
use lifeboat_storage::{Storage, StorageError};

/// A fresh, empty location in the test container, or `None` (with a line saying so).
fn azure_location(test: &str) -> Option<String> {
    common::object_store_location(
        test,
        "azure",
        "LIFEBOAT_TEST_AZURE_ENDPOINT",
        "LIFEBOAT_TEST_AZURE_CONTAINER",
    )
}

#[test]
fn azure_put_get_range_list_conditional_put_delete() {
    let Some(location) = azure_location("basics") else {
        return;
    };
    let storage = Storage::create(&location).unwrap();
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
    // Create-only puts are conditional: the second is refused and the object stays.
    storage
        .put_new("config", Bytes::from_static(b"first"))
        .unwrap();
    let err = storage
        .put_new("config", Bytes::from_static(b"second"))
        .unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(storage.get("config").unwrap(), Bytes::from_static(b"first"));
    storage.delete("a/two").unwrap();
    storage.delete("a/two").unwrap();
    assert!(!storage.exists("a/two").unwrap());
    let again = Storage::open(&location).unwrap();
    assert_eq!(again.list("").unwrap().len(), 3);
}

#[test]
fn azure_without_credentials_or_account_is_refused_clearly() {
    let err = Storage::open("azure:container/x").unwrap_err().to_string();
    assert!(
        err.contains("AZURE_STORAGE_ACCOUNT") || err.contains("AZURE_STORAGE_KEY"),
        "{err}"
    );
}

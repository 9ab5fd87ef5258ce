//! Backup, restore and copy against a real S3-protocol server on loopback, directly and through
//! a fault-injecting proxy.
//!
//! `.ci/run` starts the server and sets `LIFEBOAT_TEST_S3_ENDPOINT` (`http://127.0.0.1:PORT`),
//! `LIFEBOAT_TEST_S3_BUCKET` and the AWS credential variables. Without the endpoint these tests
//! print that they are skipped and pass.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::faultproxy::{FaultConfig, FaultProxy};
use common::{assert_same_tree, random_tree, restored_path, small_repo};
use lifeboat_files::{
    BackupOptions, BackupOutcome, BackupProgress, RestoreOptions, RestoreProgress, backup, restore,
};
use lifeboat_repo::{
    CopyOptions, IndexedRepository, InitOptions, KdfParams, Repository, copy_snapshots,
};
use lifeboat_storage::{NetworkOptions, Storage};

const PASSWORD: &[u8] = b"test password";

/// `(endpoint, bucket)` of the test server, or `None` (with a line saying so) without one.
fn s3_server(test: &str) -> Option<(String, String)> {
    let Ok(endpoint) = std::env::var("LIFEBOAT_TEST_S3_ENDPOINT") else {
        println!("SKIPPED {test}: LIFEBOAT_TEST_S3_ENDPOINT is not set (.ci/run sets it)");
        return None;
    };
    let bucket =
        std::env::var("LIFEBOAT_TEST_S3_BUCKET").unwrap_or_else(|_| "lifeboat-test".into());
    Some((endpoint, bucket))
}

/// A fresh prefix in the test bucket, reached through `endpoint`.
fn s3_url(endpoint: &str, bucket: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "s3:{endpoint}/{bucket}/files-{test}-{}-{nanos}",
        std::process::id()
    )
}

/// Short timeouts and quick retries, so stalls and outages cost seconds, not minutes.
fn impatient() -> NetworkOptions {
    NetworkOptions {
        timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(2),
        retries: 12,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
    }
}

/// Adds `count` files of random bytes, so that there are enough packs and requests to matter.
fn write_incompressible(dir: &Path, count: usize, size: usize) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(size as u64 + count as u64);
    for i in 0..count {
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        fs::write(dir.join(format!("random-{i}")), data).unwrap();
    }
}

fn options(path: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![path.to_path_buf()],
        hostname: "test-host".into(),
        username: "tester".into(),
        ..Default::default()
    }
}

fn backup_ok(repo: &mut IndexedRepository, path: &Path) -> BackupOutcome {
    let outcome = backup(repo, &options(path), &BackupProgress::default()).unwrap();
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    outcome
}

fn restore_and_compare(repo: &IndexedRepository, outcome: &BackupOutcome, source: &Path) {
    let target = tempfile::tempdir().unwrap();
    let summary = restore(
        repo,
        &outcome.snapshot,
        target.path(),
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_same_tree(source, &restored_path(target.path(), source));
}

fn open(location: &str, network: &NetworkOptions) -> IndexedRepository {
    let storage = Storage::open_with(location, false, network).unwrap();
    Repository::open(storage, PASSWORD)
        .unwrap()
        .load_index()
        .unwrap()
}

/// `check --read-data`: structure, every pack read in full, every blob authenticated and
/// checked against its id.
fn check_read_data(repo: &IndexedRepository) {
    let report = lifeboat_repo::check::check(
        repo,
        lifeboat_repo::check::ReadData::All,
        &std::collections::HashMap::new(),
        &Default::default(),
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.packs_read, report.packs, "{report:?}");
    assert!(report.blobs_verified > 0, "{report:?}");
}

/// Every error in a chain, joined, as a user sees it with `{:#}`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[test]
fn s3_backup_restore_round_trip_bit_for_bit() {
    let Some((endpoint, bucket)) = s3_server("round_trip") else {
        return;
    };
    let location = s3_url(&endpoint, &bucket, "roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 11);
    let mut repo = small_repo(Storage::create(&location).unwrap());
    let first = backup_ok(&mut repo, &source);
    let summary = first.snapshot.summary.clone().unwrap();
    assert!(summary.packs_written > 1, "{summary:?}");
    // Puts: every pack, at least one index object, the snapshot; nothing else.
    let puts_before = repo.storage().request_stats().puts;
    assert!(puts_before > summary.packs_written);

    // A second handle (another host) sees the snapshot and restores it bit for bit.
    let other = open(&location, &NetworkOptions::default());
    assert_eq!(other.snapshots().unwrap().len(), 1);
    restore_and_compare(&other, &first, &source);

    // An unchanged second backup reads no file again and writes at most three objects: a tree
    // pack for the ancestors of the path (whose times changed as tests ran), an index object,
    // the snapshot.
    let second = backup_ok(&mut repo, &source);
    let again = second.snapshot.summary.clone().unwrap();
    assert_eq!((again.files_new, again.files_changed), (0, 0), "{again:?}");
    assert!(
        second.requests.puts - puts_before <= 3,
        "{:?}",
        second.requests
    );
    assert_eq!(second.requests.retries, 0);

    // A change is seen and restored.
    fs::write(source.join("new file"), vec![7u8; 100_000]).unwrap();
    let third = backup_ok(&mut repo, &source);
    assert_ne!(third.snapshot.tree, first.snapshot.tree);
    let reopened = open(&location, &NetworkOptions::default());
    restore_and_compare(&reopened, &third, &source);
    check_read_data(&reopened);
}

#[test]
fn s3_backup_and_restore_succeed_with_ten_percent_of_requests_failing() {
    let Some((endpoint, bucket)) = s3_server("faults") else {
        return;
    };
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(
        &upstream,
        FaultConfig {
            rate: 0.10,
            stall: Duration::from_secs(4),
            seed: 4,
            deny_deletes: false,
        },
    );
    let location = s3_url(&proxy.endpoint(), &bucket, "faults");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 23);
    write_incompressible(&source, 6, 400_000);

    let storage = Storage::open_with(&location, true, &impatient()).unwrap();
    let mut repo = small_repo(storage);
    let first = backup_ok(&mut repo, &source);
    fs::write(source.join("added later"), vec![3u8; 300_000]).unwrap();
    let second = backup_ok(&mut repo, &source);

    let reader = open(&location, &impatient());
    restore_and_compare(&reader, &second, &source);
    check_read_data(&reader);
    assert_eq!(reader.snapshots().unwrap().len(), 2);
    assert_ne!(first.snapshot.tree, second.snapshot.tree);

    let counts = proxy.counts();
    let retries = repo.storage().request_stats().retries + reader.storage().request_stats().retries;
    println!("proxy: {}; client retries: {retries}", counts.summary());
    assert!(
        counts.faults() >= 8,
        "too few faults to mean anything: {}",
        counts.summary()
    );
    for (kind, n) in [
        ("5xx", &counts.errors_5xx),
        ("reset", &counts.resets),
        ("stall", &counts.stalls),
        ("truncate", &counts.truncations),
    ] {
        assert!(
            n.load(Ordering::Relaxed) > 0,
            "no {kind}: {}",
            counts.summary()
        );
    }
    assert!(retries > 0);
}

#[test]
fn s3_server_gone_fails_naming_the_endpoint_and_leaves_a_valid_repository() {
    let Some((endpoint, bucket)) = s3_server("server_gone") else {
        return;
    };
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(
        &upstream,
        FaultConfig {
            rate: 0.0,
            stall: Duration::from_secs(4),
            seed: 1,
            deny_deletes: false,
        },
    );
    let location = s3_url(&proxy.endpoint(), &bucket, "gone");
    let network = NetworkOptions {
        retries: 3,
        ..impatient()
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 5);
    let mut repo = small_repo(Storage::open_with(&location, true, &network).unwrap());
    let first = backup_ok(&mut repo, &source);

    // Gone before the backup starts.
    proxy.stop();
    let error = backup(&mut repo, &options(&source), &BackupProgress::default()).unwrap_err();
    let text = chain(&error);
    let host = proxy.endpoint().trim_start_matches("http://").to_string();
    assert!(text.contains(&host), "{text}");
    proxy.start_again();

    // Gone in the middle of a backup of new data.
    let big = dir.path().join("big");
    fs::create_dir(&big).unwrap();
    random_tree(&big, 99);
    write_incompressible(&big, 8, 400_000);
    let forwarded_before = proxy.counts().forwarded.load(Ordering::Relaxed);
    std::thread::scope(|scope| {
        let stopper = scope.spawn(|| stop_after(&proxy, forwarded_before + 3));
        let result = backup(&mut repo, &options(&big), &BackupProgress::default());
        stopper.join().unwrap();
        let error = result.expect_err("the server went away during the backup");
        let text = chain(&error);
        assert!(text.contains(&host), "{text}");
    });

    // Back again: the repository opens, every stored blob checks, the old snapshot restores,
    // and the interrupted backup can be redone.
    proxy.start_again();
    let mut reopened = open(&location, &network);
    check_read_data(&reopened);
    assert_eq!(reopened.snapshots().unwrap().len(), 1);
    restore_and_compare(&reopened, &first, &source);
    let redone = backup_ok(&mut reopened, &big);
    restore_and_compare(&open(&location, &network), &redone, &big);
}

/// Stops the proxy (the server is gone) once it has forwarded `requests` requests in all.
fn stop_after(proxy: &FaultProxy, requests: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.counts().forwarded.load(Ordering::Relaxed) < requests {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {requests} requests were made"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy.stop();
}

fn init_sibling(storage: Storage, of: &Repository) -> IndexedRepository {
    let options = InitOptions {
        kdf: KdfParams::insecure_for_tests(),
        content_keys: Some(of.config().content_keys.clone()),
        chunker: of.config().chunker,
        pack_size: of.config().pack_size,
        ..InitOptions::default()
    };
    Repository::init(storage, b"other password", &options)
        .unwrap()
        .load_index()
        .unwrap()
}

#[test]
fn copy_local_to_s3_to_local_round_trips_and_moves_only_missing_blobs() {
    let Some((endpoint, bucket)) = s3_server("copy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 31);
    write_incompressible(&source, 3, 300_000);
    let mut local = small_repo(Storage::local_create(&dir.path().join("local")).unwrap());
    let first = backup_ok(&mut local, &source);
    fs::write(source.join("second"), vec![9u8; 200_000]).unwrap();
    let second = backup_ok(&mut local, &source);
    let all = local.snapshots().unwrap();
    assert_eq!(all.len(), 2);

    // Local → S3: the first snapshot, then both (the first is skipped, only new blobs move).
    let location = s3_url(&endpoint, &bucket, "copy");
    let mut remote = init_sibling(Storage::create(&location).unwrap(), &local);
    let one = copy_snapshots(&local, &mut remote, &all[..1], &CopyOptions::default()).unwrap();
    assert_eq!(one.copied.len(), 1);
    assert!(one.blobs_copied > 0);
    let both = copy_snapshots(&local, &mut remote, &all, &CopyOptions::default()).unwrap();
    assert_eq!(both.skipped, vec![all[0].id]);
    assert_eq!(both.copied.len(), 1);
    assert!(both.blobs_present > 0, "{both:?}");
    assert!(both.bytes_copied < one.bytes_copied, "{both:?} vs {one:?}");
    // Idempotent: nothing more to do, nothing written.
    let puts = remote.storage().request_stats().puts;
    let again = copy_snapshots(&local, &mut remote, &all, &CopyOptions::default()).unwrap();
    assert!(
        again.copied.is_empty() && again.blobs_copied == 0,
        "{again:?}"
    );
    assert_eq!(remote.storage().request_stats().puts, puts);

    // The copies are the same snapshots under the other repository's keys.
    let remote = Repository::open(Storage::open(&location).unwrap(), b"other password")
        .unwrap()
        .load_index()
        .unwrap();
    assert!(Repository::open(remote.storage().clone(), PASSWORD).is_err());
    let copied = remote.snapshots().unwrap();
    assert_eq!(copied.len(), 2);
    assert_eq!(copied[0].snapshot, first.snapshot);
    assert_eq!(copied[1].snapshot, second.snapshot);
    check_read_data(&remote);
    restore_and_compare(&remote, &second, &source);

    // S3 → another local repository, and restore from there.
    let mut back = init_sibling(
        Storage::local_create(&dir.path().join("back")).unwrap(),
        &local,
    );
    let gets_before = remote.storage().request_stats().gets;
    let stats = copy_snapshots(&remote, &mut back, &copied, &CopyOptions::default()).unwrap();
    assert_eq!(stats.copied.len(), 2);
    // Nearby blobs of a pack are read with one range request.
    let gets = remote.storage().request_stats().gets - gets_before;
    assert!(gets < stats.blobs_copied, "{gets} requests for {stats:?}");
    let back_snapshots: Vec<_> = back
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|e| e.snapshot)
        .collect();
    assert_eq!(
        back_snapshots,
        vec![first.snapshot.clone(), second.snapshot.clone()]
    );
    check_read_data(&back);
    restore_and_compare(&back, &second, &source);

    // Repositories with their own content keys refuse, saying how to make a compatible one.
    let mut stranger = small_repo(Storage::local_create(&dir.path().join("stranger")).unwrap());
    let error = copy_snapshots(&local, &mut stranger, &all, &CopyOptions::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("--copy-content-keys-from"), "{error}");
}

#[test]
fn an_interrupted_copy_to_s3_is_resumed_reusing_what_was_indexed() {
    let Some((endpoint, bucket)) = s3_server("copy_resume") else {
        return;
    };
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(
        &upstream,
        FaultConfig {
            rate: 0.0,
            stall: Duration::from_secs(4),
            seed: 2,
            deny_deletes: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    // About 48 packs of 256 KiB: more than the 32 packs after which an index object is written.
    write_incompressible(&source, 12, 1_000_000);
    let mut local = small_repo(Storage::local_create(&dir.path().join("local")).unwrap());
    let outcome = backup_ok(&mut local, &source);
    let all = local.snapshots().unwrap();

    let location = s3_url(&proxy.endpoint(), &bucket, "resume");
    let network = NetworkOptions {
        retries: 2,
        ..impatient()
    };
    let mut remote = init_sibling(
        Storage::open_with(&location, true, &network).unwrap(),
        &local,
    );
    let before = proxy.counts().forwarded.load(Ordering::Relaxed);
    std::thread::scope(|scope| {
        let stopper = scope.spawn(|| stop_after(&proxy, before + 40));
        let result = copy_snapshots(&local, &mut remote, &all, &CopyOptions::default());
        stopper.join().unwrap();
        assert!(result.is_err(), "the server went away during the copy");
    });
    proxy.start_again();
    let mut remote = open_with_password(&location, &network, b"other password");
    assert!(remote.snapshots().unwrap().is_empty());
    let indexed = remote.index().blob_count();
    assert!(indexed > 0, "the first 32 packs were indexed");
    let resumed = copy_snapshots(&local, &mut remote, &all, &CopyOptions::default()).unwrap();
    assert_eq!(resumed.copied.len(), 1);
    assert!(resumed.blobs_present as usize >= indexed, "{resumed:?}");
    let remote = open_with_password(&location, &network, b"other password");
    check_read_data(&remote);
    restore_and_compare(&remote, &outcome, &source);
}

fn open_with_password(
    location: &str,
    network: &NetworkOptions,
    password: &[u8],
) -> IndexedRepository {
    let storage = Storage::open_with(location, false, network).unwrap();
    Repository::open(storage, password)
        .unwrap()
        .load_index()
        .unwrap()
}

#[test]
fn append_only_credentials_back_up_and_copy_but_cannot_forget() {
    let Some((endpoint, bucket)) = s3_server("append_only") else {
        return;
    };
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(
        &upstream,
        FaultConfig {
            rate: 0.0,
            stall: Duration::from_secs(4),
            seed: 3,
            deny_deletes: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 41);
    write_incompressible(&source, 2, 300_000);

    // Backup straight into the append-only repository, twice (the second has a parent).
    let location = s3_url(&proxy.endpoint(), &bucket, "appendonly");
    let mut repo = small_repo(Storage::create(&location).unwrap());
    backup_ok(&mut repo, &source);
    fs::write(source.join("later"), b"more").unwrap();
    let outcome = backup_ok(&mut repo, &source);
    assert_eq!(outcome.requests.deletes, 0);

    // Copy into another append-only repository.
    let copy_location = s3_url(&proxy.endpoint(), &bucket, "appendonly-copy");
    let mut copy = init_sibling(Storage::create(&copy_location).unwrap(), &repo);
    let stats = copy_snapshots(
        &repo,
        &mut copy,
        &repo.snapshots().unwrap(),
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(stats.copied.len(), 2);
    assert_eq!(copy.storage().request_stats().deletes, 0);
    assert_eq!(proxy.counts().denied.load(Ordering::Relaxed), 0);
    restore_and_compare(&copy, &outcome, &source);

    // Forgetting needs DELETE: refused, with a message that says why and what to do.
    let error = repo.forget_snapshot(&outcome.snapshot_id).unwrap_err();
    let text = chain(&error);
    assert!(
        text.contains("permission denied") && text.contains("append-only"),
        "{text}"
    );
    assert_eq!(proxy.counts().denied.load(Ordering::Relaxed), 1);
    assert_eq!(repo.snapshots().unwrap().len(), 2);
    check_read_data(&repo);
}

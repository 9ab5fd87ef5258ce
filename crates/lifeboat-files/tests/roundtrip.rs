//! Backup and restore round trips through a real repository, compared bit for bit.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{assert_same_tree, random_tree, reopen, restored_path, small_repo};
use lifeboat_files::{
    BackupOptions, BackupProgress, RestoreOptions, RestoreProgress, backup, restore,
};
use lifeboat_repo::IndexedRepository;
use lifeboat_storage::Storage;
use proptest::prelude::*;

fn options(path: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![path.to_path_buf()],
        hostname: "test-host".into(),
        username: "tester".into(),
        ..Default::default()
    }
}

fn backup_of(
    repo: &mut IndexedRepository,
    options: &BackupOptions,
) -> lifeboat_files::BackupOutcome {
    let outcome = backup(repo, options, &BackupProgress::default()).unwrap();
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    outcome
}

fn restore_all(
    repo: &IndexedRepository,
    outcome: &lifeboat_files::BackupOutcome,
    target: &Path,
) -> lifeboat_files::RestoreSummary {
    let summary = restore(
        repo,
        &outcome.snapshot,
        target,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    summary
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_bit_for_bit(seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        fs::create_dir(&source).unwrap();
        random_tree(&source, seed);
        let mut repo = small_repo(Storage::local_create(&dir.path().join("repo")).unwrap());
        let outcome = backup_of(&mut repo, &options(&source));
        let repo = reopen(&repo);
        let target = dir.path().join("target");
        restore_all(&repo, &outcome, &target);
        assert_same_tree(&source, &restored_path(&target, &source));
    }
}

#[test]
fn unchanged_files_are_not_read_again_and_changes_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 7);
    fs::write(source.join("edit-me"), b"version one").unwrap();
    let mut repo = small_repo(Storage::memory().unwrap());
    let first = backup_of(&mut repo, &options(&source));
    let files = first.snapshot.summary.as_ref().unwrap().files_new;
    assert!(files > 1);

    let mut repo = reopen(&repo);
    let second = backup_of(&mut repo, &options(&source));
    let summary = second.snapshot.summary.clone().unwrap();
    assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
    assert_eq!(
        (
            summary.files_new,
            summary.files_changed,
            summary.files_unchanged
        ),
        (0, 0, files)
    );
    assert_eq!(summary.bytes_read, 0);
    assert_eq!(summary.blobs_added, 0, "an unchanged tree adds nothing");
    assert_eq!(second.snapshot.tree, first.snapshot.tree);

    fs::write(source.join("edit-me"), b"version two, longer").unwrap();
    let mut repo = reopen(&repo);
    let third = backup_of(&mut repo, &options(&source));
    let summary = third.snapshot.summary.clone().unwrap();
    assert_eq!((summary.files_changed, summary.bytes_read), (1, 19));

    let forced = backup_of(
        &mut reopen(&repo),
        &BackupOptions {
            force: true,
            ..options(&source)
        },
    );
    let summary = forced.snapshot.summary.unwrap();
    assert_eq!(summary.files_new, files, "--force reads everything");
    assert_eq!(summary.blobs_added, 0, "but stores nothing new");

    let target = dir.path().join("target");
    restore_all(&reopen(&repo), &third, &target);
    assert_same_tree(&source, &restored_path(&target, &source));
}

#[test]
fn identical_data_is_stored_once_and_shifted_data_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    let mut data = vec![0u8; 4 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    fs::write(source.join("one"), &data).unwrap();
    fs::write(source.join("two"), &data).unwrap();
    let mut repo = small_repo(Storage::memory().unwrap());
    let first = backup_of(&mut repo, &options(&source))
        .snapshot
        .summary
        .unwrap();
    assert_eq!(first.bytes_read, 8 << 20);
    assert!(
        first.bytes_added < (4 << 20) + 100_000,
        "stored twice: {}",
        first.bytes_added
    );

    let mut shifted = b"inserted!".to_vec();
    shifted.extend_from_slice(&data);
    fs::write(source.join("three"), &shifted).unwrap();
    let second = backup_of(&mut reopen(&repo), &options(&source))
        .snapshot
        .summary
        .unwrap();
    // Only the chunk around the insertion (at most a max-size chunk) is new.
    assert!(
        second.bytes_added < 200_000,
        "shift broke dedup: {} bytes added",
        second.bytes_added
    );
}

#[test]
fn include_restores_a_subset_and_non_empty_targets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir_all(source.join("keep/inner")).unwrap();
    fs::create_dir_all(source.join("skip")).unwrap();
    fs::write(source.join("keep/inner/a.txt"), b"a").unwrap();
    fs::write(source.join("keep/b.toml"), b"b").unwrap();
    fs::write(source.join("skip/c.txt"), b"c").unwrap();
    fs::write(source.join("top.toml"), b"t").unwrap();
    let mut repo = small_repo(Storage::memory().unwrap());
    let outcome = backup_of(&mut repo, &options(&source));

    let target = dir.path().join("target");
    let include = format!("{}/keep", source.display());
    let options = RestoreOptions {
        include: vec![include, "**/*.toml".into()],
        ..Default::default()
    };
    let summary = restore(
        &repo,
        &outcome.snapshot,
        &target,
        &options,
        &RestoreProgress::default(),
    )
    .unwrap();
    assert_eq!(summary.files, 3);
    let root = restored_path(&target, &source);
    assert_eq!(fs::read(root.join("keep/inner/a.txt")).unwrap(), b"a");
    assert!(root.join("top.toml").exists());
    assert!(!root.join("skip").exists());

    let err = restore(
        &repo,
        &outcome.snapshot,
        &target,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let overwrite = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    restore(
        &repo,
        &outcome.snapshot,
        &target,
        &overwrite,
        &RestoreProgress::default(),
    )
    .unwrap();
    assert_same_tree(&source, &root);
}

#[test]
fn excluded_entries_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir_all(source.join("target/debug")).unwrap();
    fs::write(source.join("target/debug/big"), b"x").unwrap();
    fs::write(source.join("main.o"), b"o").unwrap();
    fs::write(source.join("main.rs"), b"rs").unwrap();
    let mut repo = small_repo(Storage::memory().unwrap());
    let opts = BackupOptions {
        excludes: vec!["target".into(), "*.o".into()],
        ..options(&source)
    };
    let outcome = backup_of(&mut repo, &opts);
    let target = dir.path().join("restored");
    restore_all(&repo, &outcome, &target);
    let root = restored_path(&target, &source);
    assert!(root.join("main.rs").exists());
    assert!(!root.join("main.o").exists() && !root.join("target").exists());
}

/// A multi-GiB sparse file with data islands: read in full (holes read as zeros), stored as a
/// handful of blobs, restored sparse and identical.
#[test]
fn multi_gib_sparse_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    let path = source.join("disk.img");
    let file = fs::File::create(&path).unwrap();
    let size: u64 = 3 << 30;
    file.set_len(size).unwrap();
    let mut island = vec![0u8; 1 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut island);
    for offset in [0, 1 << 30, (2 << 30) + 12345, size - (1 << 20)] {
        std::os::unix::fs::FileExt::write_all_at(&file, &island, offset).unwrap();
    }
    drop(file);
    let mut repo = small_repo(Storage::local_create(&dir.path().join("repo")).unwrap());
    let outcome = backup_of(&mut repo, &options(&source));
    let summary = outcome.snapshot.summary.clone().unwrap();
    assert_eq!(summary.bytes_read, size);
    assert!(
        summary.bytes_stored < 16 << 20,
        "zeros must dedup: stored {}",
        summary.bytes_stored
    );
    let target = dir.path().join("target");
    restore_all(&reopen(&repo), &outcome, &target);
    let restored = restored_path(&target, &source).join("disk.img");
    let meta = fs::metadata(&restored).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "restored file is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    let hash = |p: &Path| {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(fs::File::open(p).unwrap()).unwrap();
        hasher.finalize()
    };
    assert_eq!(hash(&path), hash(&restored));
}

/// Two backups into one repository at the same time, from two handles (as from two hosts):
/// no lock, both succeed, both restore exactly, and shared data is usable by both.
#[test]
fn concurrent_backups_need_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let first = small_repo(Storage::local_create(&repo_dir).unwrap());
    let sources: Vec<_> = (0..2)
        .map(|i| {
            let source = dir.path().join(format!("source{i}"));
            fs::create_dir(&source).unwrap();
            random_tree(&source, 100 + i);
            // Both trees share this file, so both backups store the same new blobs at once.
            fs::write(source.join("shared"), "same in both trees ".repeat(50_000)).unwrap();
            source
        })
        .collect();
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|source| {
                let mut repo = reopen(&first);
                scope.spawn(move || backup_of(&mut repo, &options(source)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let repo = reopen(&first);
    assert_eq!(repo.snapshots().unwrap().len(), 2);
    for (i, (source, outcome)) in sources.iter().zip(&outcomes).enumerate() {
        let target = dir.path().join(format!("target{i}"));
        restore_all(&repo, outcome, &target);
        assert_same_tree(source, &restored_path(&target, source));
    }
}

/// --one-file-system keeps a mount point but not what is mounted there. Needs root (tmpfs).
#[test]
fn one_file_system_stops_at_mount_points() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let mount = source.join("mnt");
    fs::create_dir_all(&mount).unwrap();
    fs::write(source.join("local"), b"on the same filesystem").unwrap();
    assert!(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap()
            .success()
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());
    fs::write(mount.join("elsewhere"), b"on another filesystem").unwrap();

    let mut repo = small_repo(Storage::memory().unwrap());
    let crossing = backup_of(&mut repo, &options(&source));
    let staying = backup_of(
        &mut repo,
        &BackupOptions {
            one_file_system: true,
            ..options(&source)
        },
    );
    for (outcome, expect_elsewhere) in [(&crossing, true), (&staying, false)] {
        let target = dir.path().join(format!("t{expect_elsewhere}"));
        restore_all(&repo, outcome, &target);
        let root = restored_path(&target, &source);
        assert!(root.join("local").exists());
        assert!(root.join("mnt").is_dir(), "the mount point itself is kept");
        assert_eq!(root.join("mnt/elsewhere").exists(), expect_elsewhere);
    }
}

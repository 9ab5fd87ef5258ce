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

fn restore_with(
    repo: &IndexedRepository,
    outcome: &lifeboat_files::BackupOutcome,
    target: &Path,
    options: &RestoreOptions,
) -> lifeboat_files::RestoreSummary {
    restore(
        repo,
        &outcome.snapshot,
        target,
        options,
        &RestoreProgress::default(),
    )
    .unwrap()
}

fn delta() -> RestoreOptions {
    RestoreOptions {
        delta: true,
        ..Default::default()
    }
}

/// Temporary files of a delta restore left anywhere below `dir`.
fn leftover_temps(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(leftover_temps(&entry.path()));
        } else if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".lifeboat-tmp-")
        {
            out.push(entry.path());
        }
    }
    out
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    bytes
}

fn set_mtime_of(path: &Path, like: &fs::Metadata) {
    let t = filetime::FileTime::from_last_modification_time(like);
    filetime::set_file_times(path, t, t).unwrap();
}

#[test]
fn delta_restore_over_an_identical_tree_reuses_every_file_and_reads_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 11);
    fs::write(source.join("big"), random_bytes(400_000, 1)).unwrap();
    let mut repo = small_repo(Storage::memory().unwrap());
    let outcome = backup_of(&mut repo, &options(&source));
    let target = dir.path().join("target");
    let first = restore_all(&repo, &outcome, &target);
    let root = restored_path(&target, &source);
    // Metadata drift on an unchanged file is fixed without rewriting it.
    let big = root.join("big");
    fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    filetime::set_file_mtime(&big, filetime::FileTime::from_unix_time(1_000_000, 0)).unwrap();
    let inode = fs::metadata(&big).unwrap().ino();
    // An extended attribute the snapshot lacks goes (where the filesystem has user xattrs).
    let xattrs = xattr::set(&big, "user.added-later", b"x").is_ok();
    // What a killed delta restore leaves behind is removed by the next one; a file of the
    // user's that merely looks similar is not.
    // (In the target's top directory, whose times the comparison below does not check.)
    fs::write(target.join(".lifeboat-tmp-4242-7"), b"half a file").unwrap();
    fs::write(target.join(".lifeboat-tmp-notes"), b"mine").unwrap();

    let summary = restore_with(&repo, &outcome, &target, &delta());
    assert!(!target.join(".lifeboat-tmp-4242-7").exists());
    if xattrs {
        assert_eq!(xattr::get(&big, "user.added-later").unwrap(), None);
    } else {
        eprintln!("this filesystem has no user xattrs: their removal was not checked");
    }
    assert!(target.join(".lifeboat-tmp-notes").exists());
    fs::remove_file(target.join(".lifeboat-tmp-notes")).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(summary.files, first.files);
    assert_eq!(summary.reused_files, summary.files, "{summary:?}");
    assert_eq!(summary.reused_bytes, first.bytes);
    assert_eq!((summary.written_files, summary.written_bytes), (0, 0));
    assert_eq!(summary.blobs_read, 0);
    assert_eq!(fs::metadata(&big).unwrap().ino(), inode, "kept in place");
    assert_same_tree(&source, &root);
    assert!(leftover_temps(&target).is_empty());
}

#[test]
fn delta_restore_rewrites_files_whose_bytes_differ_even_with_the_same_size_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    let names = [
        "same",
        "middle",
        "truncated",
        "extended",
        "dir-in-way",
        "gone",
    ];
    for (i, name) in names.iter().enumerate() {
        fs::write(source.join(name), random_bytes(300_000, i as u64)).unwrap();
    }
    let mut repo = small_repo(Storage::memory().unwrap());
    let outcome = backup_of(&mut repo, &options(&source));
    let target = dir.path().join("target");
    restore_all(&repo, &outcome, &target);
    let root = restored_path(&target, &source);
    let all_blobs = restore_with(
        &repo,
        &outcome,
        &dir.path().join("scratch"),
        &RestoreOptions::default(),
    )
    .blobs_read;

    // A page rewritten in place, with size and mtime put back as they were.
    let middle = root.join("middle");
    let before = fs::metadata(&middle).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&middle).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xAB; 100], 150_000).unwrap();
    drop(file);
    set_mtime_of(&middle, &before);
    let after = fs::metadata(&middle).unwrap();
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.mtime(), before.mtime_nsec())
    );
    let truncated = root.join("truncated");
    fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(200_000)
        .unwrap();
    let extended = root.join("extended");
    let mut bytes = fs::read(&extended).unwrap();
    bytes.extend_from_slice(b"appended");
    fs::write(&extended, bytes).unwrap();
    fs::remove_file(root.join("dir-in-way")).unwrap();
    fs::create_dir_all(root.join("dir-in-way/inner")).unwrap();
    fs::remove_file(root.join("gone")).unwrap();
    fs::write(root.join("extra"), b"not in the snapshot").unwrap();

    // With size and mtime trusted, the page rewritten in place goes unnoticed: that is why
    // the shortcut is opt-in.
    let trusting = RestoreOptions {
        trust_mtime: true,
        ..delta()
    };
    let scratch = dir.path().join("trusting");
    restore_all(&repo, &outcome, &scratch);
    let scratch_middle = restored_path(&scratch, &source).join("middle");
    fs::copy(&middle, &scratch_middle).unwrap();
    set_mtime_of(&scratch_middle, &before);
    let trusted = restore_with(&repo, &outcome, &scratch, &trusting);
    assert_eq!(trusted.reused_files, names.len() as u64);
    assert_ne!(
        fs::read(&scratch_middle).unwrap(),
        fs::read(source.join("middle")).unwrap()
    );

    let summary = restore_with(&repo, &outcome, &target, &delta());
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(summary.files, names.len() as u64);
    assert_eq!(summary.reused_files, 1, "{summary:?}");
    assert_eq!(summary.reused_bytes, 300_000);
    assert_eq!(summary.written_files, 5);
    assert_eq!(summary.written_bytes, 5 * 300_000);
    // middle (all but the changed chunks) and truncated (its first two thirds) are rebuilt
    // mostly from their old bytes; extended from all of them.
    assert!(
        summary.local_bytes > 550_000 && summary.local_bytes <= 800_000,
        "{summary:?}"
    );
    // dir-in-way and gone are read whole, the others only where they differ.
    assert!(
        summary.blobs_read > 0 && summary.blobs_read < all_blobs * 2 / 3,
        "{} of {all_blobs} blobs read",
        summary.blobs_read
    );
    for name in names {
        let restored = root.join(name);
        assert_eq!(
            fs::read(&restored).unwrap(),
            fs::read(source.join(name)).unwrap(),
            "{name}"
        );
        let (a, b) = (
            fs::metadata(source.join(name)).unwrap(),
            fs::metadata(&restored).unwrap(),
        );
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
        assert_eq!(a.mode(), b.mode());
    }
    assert_eq!(
        fs::read(root.join("extra")).unwrap(),
        b"not in the snapshot"
    );
    assert!(leftover_temps(&target).is_empty());
}

#[test]
fn delta_restore_that_cannot_read_a_blob_leaves_the_old_file_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("data"), random_bytes(300_000, 5)).unwrap();
    fs::write(source.join("other"), random_bytes(100_000, 6)).unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = small_repo(Storage::local_create(&repo_dir).unwrap());
    let outcome = backup_of(&mut repo, &options(&source));
    let target = dir.path().join("target");
    restore_all(&repo, &outcome, &target);
    let root = restored_path(&target, &source);
    let data = root.join("data");
    let file = fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"changed", 10).unwrap();
    drop(file);
    let changed = fs::read(&data).unwrap();

    // Damage the blob holding the changed bytes.
    let tree = {
        let mut tree = repo.read_tree(&outcome.snapshot.tree).unwrap();
        for part in source.strip_prefix("/").unwrap().components() {
            let node = tree
                .find(part.as_os_str().as_encoded_bytes())
                .unwrap()
                .clone();
            tree = repo.read_tree(&node.subtree.unwrap()).unwrap();
        }
        tree
    };
    let first = tree.find(b"data").unwrap().content[0];
    let location = repo.index().get(&first).unwrap();
    let pack_id = repo.index().pack(location).id.to_hex();
    let pack = repo_dir.join("data").join(&pack_id[..2]).join(&pack_id);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[location.offset as usize + 5] ^= 0x40;
    fs::write(&pack, bytes).unwrap();

    let summary = restore_with(&reopen(&repo), &outcome, &target, &delta());
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert_eq!(summary.warnings[0].path, data);
    assert_eq!(summary.reused_files, 1);
    assert_eq!(summary.written_files, 0);
    assert_eq!(
        fs::read(&data).unwrap(),
        changed,
        "the old file stays whole"
    );
    assert!(leftover_temps(&target).is_empty());
}

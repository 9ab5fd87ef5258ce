//! Bad input gets a clear error and loses nothing: wrong passwords, tampered, truncated and
//! missing objects of every kind, and a repository disk that fills up.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_same_tree, random_tree, reopen, restored_path, small_repo};
use lifeboat_files::{
    BackupOptions, BackupProgress, RestoreOptions, RestoreProgress, backup, restore,
};
use lifeboat_repo::{Error as RepoError, IndexedRepository, Repository};
use lifeboat_storage::Storage;

struct Fixture {
    _dir: tempfile::TempDir,
    source: PathBuf,
    repo_dir: PathBuf,
    work: PathBuf,
}

fn fixture() -> (Fixture, IndexedRepository) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    fs::create_dir(&source).unwrap();
    random_tree(&source, 42);
    for i in 0..5 {
        fs::write(
            source.join(format!("file{i}")),
            format!("content {i} ").repeat(5000),
        )
        .unwrap();
    }
    let repo_dir = dir.path().join("repo");
    let mut repo = small_repo(Storage::local_create(&repo_dir).unwrap());
    let options = BackupOptions {
        paths: vec![source.clone()],
        hostname: "h".into(),
        ..Default::default()
    };
    backup(&mut repo, &options, &BackupProgress::default()).unwrap();
    let work = dir.path().to_path_buf();
    (
        Fixture {
            _dir: dir,
            source,
            repo_dir,
            work,
        },
        repo,
    )
}

fn objects(repo_dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo_dir.join(prefix)];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path)
            } else {
                out.push(path)
            }
        }
    }
    out.sort();
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn open(f: &Fixture) -> Result<IndexedRepository, RepoError> {
    Repository::open(Storage::local(&f.repo_dir).unwrap(), b"test password")?.load_index()
}

fn restore_latest(
    repo: &IndexedRepository,
    target: &Path,
) -> lifeboat_files::Result<lifeboat_files::RestoreSummary> {
    let snapshot = repo.find_snapshot("latest")?.snapshot;
    restore(
        repo,
        &snapshot,
        target,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
}

#[test]
fn wrong_password_and_wrong_location_are_named() {
    let (f, _) = fixture();
    let err = Repository::open(Storage::local(&f.repo_dir).unwrap(), b"not it").unwrap_err();
    assert!(
        matches!(err, RepoError::WrongPassword { keys: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("wrong password"));
    let err = Repository::open(Storage::local(&f.source).unwrap(), b"x").unwrap_err();
    assert!(matches!(err, RepoError::NotARepository { .. }), "{err}");
    let err = Repository::init(
        Storage::local(&f.repo_dir).unwrap(),
        b"x",
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RepoError::AlreadyInitialised { .. }), "{err}");
}

#[test]
fn tampered_config_is_detected() {
    let (f, _) = fixture();
    flip_byte(&f.repo_dir.join("config"), 60);
    let err = open(&f).unwrap_err();
    assert!(
        matches!(&err, RepoError::Corrupt { what } if what == "config"),
        "{err}"
    );
}

#[test]
fn tampered_or_truncated_key_file_does_not_open() {
    let (f, _) = fixture();
    let key = objects(&f.repo_dir, "keys").remove(0);
    let text = fs::read_to_string(&key).unwrap();
    // Change one character of the wrapped key: authentication of the key fails.
    let at = text.find("\"wrapped\": \"").unwrap() + 14;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    fs::write(&key, &bytes).unwrap();
    assert!(matches!(
        open(&f).unwrap_err(),
        RepoError::WrongPassword { .. }
    ));
    fs::write(&key, &bytes[..bytes.len() / 2]).unwrap();
    let err = open(&f).unwrap_err();
    assert!(
        matches!(&err, RepoError::Malformed { what, .. } if what.starts_with("keys/")),
        "{err}"
    );
}

#[test]
fn tampered_snapshot_and_index_are_named() {
    let (f, _) = fixture();
    let snapshot = objects(&f.repo_dir, "snapshots").remove(0);
    flip_byte(&snapshot, 100);
    let repo = open(&f).unwrap();
    let err = repo.snapshots().unwrap_err();
    let name = snapshot.file_name().unwrap().to_str().unwrap().to_string();
    assert!(err.to_string().contains(&name), "{err}");

    let (f, _) = fixture();
    let index = objects(&f.repo_dir, "index").remove(0);
    flip_byte(&index, 50);
    let err = open(&f).unwrap_err();
    let name = index.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        matches!(&err, RepoError::Corrupt { what } if what.contains(&name)),
        "{err}"
    );

    // The other snapshots stay usable.
    let (f, mut repo) = fixture();
    let options = BackupOptions {
        paths: vec![f.source.clone()],
        hostname: "h".into(),
        ..Default::default()
    };
    let second = backup(&mut repo, &options, &BackupProgress::default()).unwrap();
    let first = objects(&f.repo_dir, "snapshots")
        .into_iter()
        .find(|p| !p.ends_with(second.snapshot_id.to_hex()))
        .unwrap();
    flip_byte(&first, 100);
    let (readable, unreadable) = repo.readable_snapshots().unwrap();
    assert_eq!((readable.len(), unreadable.len()), (1, 1));
    assert_eq!(repo.find_snapshot("latest").unwrap().id, second.snapshot_id);

    // An intact object under another object's name is caught too.
    let (f, _) = fixture();
    let indexes = objects(&f.repo_dir, "index");
    let other = f.repo_dir.join("index").join("0".repeat(64));
    fs::copy(&indexes[0], &other).unwrap();
    assert!(matches!(open(&f).unwrap_err(), RepoError::Corrupt { .. }));
}

#[test]
fn damaged_packs_fail_only_the_files_they_hold() {
    let (f, repo) = fixture();
    // Find which pack holds `file0`'s data and damage it in three ways across three runs.
    let snapshot = repo.find_snapshot("latest").unwrap().snapshot;
    let file0 = {
        let mut tree = repo.read_tree(&snapshot.tree).unwrap();
        for part in f.source.strip_prefix("/").unwrap().components() {
            let node = tree
                .find(part.as_os_str().as_encoded_bytes())
                .unwrap()
                .clone();
            tree = repo.read_tree(&node.subtree.unwrap()).unwrap();
        }
        tree.find(b"file0").unwrap().clone()
    };
    let location = repo.index().get(&file0.content[0]).unwrap();
    let pack_id = repo.index().pack(location).id.to_hex();
    let pack = f.repo_dir.join("data").join(&pack_id[..2]).join(&pack_id);
    let original = fs::read(&pack).unwrap();

    for (damage, expect) in [
        ("flip", "failed authentication"),
        ("truncate", "truncated"),
        ("remove", "does not exist"),
    ] {
        match damage {
            "flip" => flip_byte(&pack, location.offset as usize + 5),
            "truncate" => fs::write(&pack, &original[..location.offset as usize + 3]).unwrap(),
            _ => fs::remove_file(&pack).unwrap(),
        }
        let target = f.work.join(format!("target-{damage}"));
        let summary = restore_latest(&open(&f).unwrap(), &target).unwrap();
        let failed: Vec<_> = summary
            .warnings
            .iter()
            .filter(|w| w.path.ends_with("file0"))
            .collect();
        assert_eq!(failed.len(), 1, "{damage}: {:?}", summary.warnings);
        assert!(
            failed[0].message.contains(expect),
            "{damage}: {}",
            failed[0].message
        );
        assert!(
            failed[0].message.contains(&pack_id),
            "{damage}: the pack is named: {}",
            failed[0].message
        );
        // No silent damage: every file is either reported or restored exactly; a flipped byte
        // costs only the blob it hits.
        let restored = restored_path(&target, &f.source);
        for i in 0..5 {
            let name = format!("file{i}");
            let reported = summary.warnings.iter().any(|w| w.path.ends_with(&name));
            let intact = fs::read(restored.join(&name)).ok() == fs::read(f.source.join(&name)).ok();
            assert!(
                reported != intact,
                "{damage}: {name} reported={reported} intact={intact}"
            );
            if damage == "flip" && i > 0 {
                assert!(intact, "{damage}: {name} lost with another blob");
            }
        }
        fs::write(&pack, &original).unwrap();
    }
    // Repaired storage restores everything again.
    let target = f.work.join("target-ok");
    let summary = restore_latest(&open(&f).unwrap(), &target).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_same_tree(&f.source, &restored_path(&target, &f.source));
}

#[test]
fn tampered_tree_stops_restore_with_its_name() {
    let (f, repo) = fixture();
    let snapshot = repo.find_snapshot("latest").unwrap().snapshot;
    let location = repo.index().get(&snapshot.tree).unwrap();
    let pack_id = repo.index().pack(location).id.to_hex();
    let pack = f.repo_dir.join("data").join(&pack_id[..2]).join(&pack_id);
    flip_byte(&pack, location.offset as usize + 1);
    let err = restore_latest(&open(&f).unwrap(), &f.work.join("t")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&snapshot.tree.to_hex()) && text.contains("failed authentication"),
        "{text}"
    );
}

/// A repository on a nearly full filesystem: the backup fails with the OS's reason, and the
/// repository stays readable with every earlier snapshot intact. Needs root (for a small tmpfs).
#[test]
fn full_repository_disk_fails_cleanly() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    fs::create_dir(&mount).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());

    let small = dir.path().join("small-source");
    fs::create_dir(&small).unwrap();
    fs::write(small.join("a"), b"fits easily").unwrap();
    let big = dir.path().join("big-source");
    fs::create_dir(&big).unwrap();
    for i in 0..4 {
        let mut data = vec![0u8; 3 << 20];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
        fs::write(big.join(format!("random{i}")), data).unwrap();
    }

    let mut repo = small_repo(Storage::local_create(&mount.join("repo")).unwrap());
    let options = |p: &Path| BackupOptions {
        paths: vec![p.to_path_buf()],
        hostname: "h".into(),
        ..Default::default()
    };
    backup(&mut repo, &options(&small), &BackupProgress::default()).unwrap();
    let err = backup(
        &mut reopen(&repo),
        &options(&big),
        &BackupProgress::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");

    let repo = reopen(&repo);
    let snapshots = repo.snapshots().unwrap();
    assert_eq!(
        snapshots.len(),
        1,
        "the failed backup must not leave a snapshot"
    );
    let target = dir.path().join("restored");
    let summary = restore(
        &repo,
        &snapshots[0].snapshot,
        &target,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_same_tree(&small, &restored_path(&target, &small));
}

mod check {
    use super::*;
    use lifeboat_repo::check::{ReadData, check};
    use std::collections::HashMap;

    #[test]
    fn a_clean_repository_checks_clean_at_every_level() {
        let (_f, repo) = fixture();
        for read in [
            ReadData::None,
            ReadData::Fraction(0.3),
            ReadData::Part { n: 2, m: 3 },
            ReadData::All,
        ] {
            let report = check(&repo, read, &HashMap::new(), &Default::default()).unwrap();
            assert!(report.is_clean(), "{read:?}: {:?}", report.errors);
            assert_eq!(report.snapshots, 1);
            assert!(report.trees > 1 && report.packs > 1);
        }
        let all = check(&repo, ReadData::All, &HashMap::new(), &Default::default()).unwrap();
        assert_eq!(all.packs_read, all.packs);
        assert_eq!(all.blobs_verified as usize, repo.index().blob_count());
    }

    #[test]
    fn subsets_rotate_until_every_pack_is_verified() {
        let (_f, repo) = fixture();
        let mut record = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for round in 0..4 {
            let report = check(
                &repo,
                ReadData::Fraction(0.25),
                &record,
                &Default::default(),
            )
            .unwrap();
            assert!(report.is_clean());
            for id in &report.verified {
                record.insert(*id, round);
                seen.insert(*id);
            }
        }
        assert_eq!(
            seen.len() as u64,
            check(&repo, ReadData::None, &HashMap::new(), &Default::default())
                .unwrap()
                .packs
        );
    }

    #[test]
    fn flipped_and_missing_packs_are_named() {
        let (f, repo) = fixture();
        let packs = objects(&f.repo_dir, "data");
        flip_byte(&packs[0], 10);
        let name = packs[0].file_name().unwrap().to_str().unwrap().to_string();
        // Structure alone reads only headers: a flip in blob data needs --read-data.
        let report = check(&repo, ReadData::All, &HashMap::new(), &Default::default()).unwrap();
        assert!(
            report.errors.iter().any(|p| p.object.contains(&name)),
            "{:?}",
            report.errors
        );

        fs::remove_file(&packs[1]).unwrap();
        let gone = packs[1].file_name().unwrap().to_str().unwrap().to_string();
        let report = check(&repo, ReadData::None, &HashMap::new(), &Default::default()).unwrap();
        let missing: Vec<_> = report
            .errors
            .iter()
            .filter(|p| p.object.contains(&gone))
            .collect();
        assert_eq!(missing.len(), 1, "{:?}", report.errors);
        assert!(missing[0].message.contains("missing"));
    }

    #[test]
    fn lost_index_is_rebuilt_from_pack_headers() {
        let (f, _) = fixture();
        for path in objects(&f.repo_dir, "index") {
            fs::remove_file(path).unwrap();
        }
        let repo =
            Repository::open(Storage::local(&f.repo_dir).unwrap(), b"test password").unwrap();
        let report = lifeboat_repo::repair::rebuild_index(&repo).unwrap();
        assert_eq!(
            report.packs_indexed as usize,
            objects(&f.repo_dir, "data").len()
        );
        assert!(report.unreadable_packs.is_empty());
        let repo = open(&f).unwrap();
        let checked = check(&repo, ReadData::All, &HashMap::new(), &Default::default()).unwrap();
        assert!(
            checked.is_clean() && checked.unindexed_packs.is_empty(),
            "{:?}",
            checked.errors
        );
        let target = f.work.join("after-repair");
        let summary = restore_latest(&repo, &target).unwrap();
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
        assert_same_tree(&f.source, &restored_path(&target, &f.source));

        // A damaged pack is named and left out; the rest is indexed.
        let packs = objects(&f.repo_dir, "data");
        let len = fs::metadata(&packs[0]).unwrap().len() as usize;
        flip_byte(&packs[0], len - 60);
        let repo =
            Repository::open(Storage::local(&f.repo_dir).unwrap(), b"test password").unwrap();
        let report = lifeboat_repo::repair::rebuild_index(&repo).unwrap();
        assert_eq!(report.unreadable_packs.len(), 1);
        assert_eq!(report.packs_indexed as usize, packs.len() - 1);
        assert_eq!(
            objects(&f.repo_dir, "index").len() as u64,
            report.index_files_written
        );
    }

    #[test]
    fn unindexed_packs_are_reported_not_errors() {
        let (f, repo) = fixture();
        let index = objects(&f.repo_dir, "index");
        // Losing an index object (as if a backup died before writing it) leaves packs unindexed
        // and the snapshot pointing at blobs the index no longer knows.
        for path in &index {
            fs::remove_file(path).unwrap();
        }
        let reopened = open(&f).unwrap();
        let report = check(
            &reopened,
            ReadData::None,
            &HashMap::new(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            report.unindexed_packs.len(),
            objects(&f.repo_dir, "data").len()
        );
        assert!(
            !report.is_clean(),
            "the snapshot's blobs are not in any index"
        );
        drop(repo);
    }
}

//! Helpers shared by the file-source integration tests: random trees with every kind of
//! metadata, and a bit-for-bit comparison of two trees.

#![allow(dead_code)]

pub mod faultproxy;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use lifeboat_repo::{ChunkerParams, IndexedRepository, InitOptions, KdfParams, Repository};
use lifeboat_storage::Storage;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// A fresh repository with small chunks and packs, so that small test trees still exercise
/// multi-chunk files and multi-pack repositories.
pub fn small_repo(storage: Storage) -> IndexedRepository {
    let options = InitOptions {
        kdf: KdfParams::insecure_for_tests(),
        chunker: ChunkerParams {
            min_size: 4 * 1024,
            avg_size: 16 * 1024,
            max_size: 64 * 1024,
        },
        pack_size: 256 * 1024,
        ..Default::default()
    };
    Repository::init(storage, b"test password", &options)
        .unwrap()
        .load_index()
        .unwrap()
}

/// Reopens a repository (a new index load sees what earlier writers stored).
pub fn reopen(repo: &IndexedRepository) -> IndexedRepository {
    Repository::open(repo.storage().clone(), b"test password")
        .unwrap()
        .load_index()
        .unwrap()
}

fn random_name(rng: &mut StdRng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"a",
        b"b",
        b"file",
        b" ",
        b"-",
        b"\xff",
        b"\xc3(",
        "ü".as_bytes(),
        "日本".as_bytes(),
        b".x",
        b"_",
    ];
    loop {
        let mut name = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            name.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
        }
        if name != b"." && name != b".." {
            return name;
        }
    }
}

fn random_content(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => 1,
        2..=6 => rng.random_range(2..20_000),
        7 | 8 => rng.random_range(20_000..300_000),
        _ => rng.random_range(300_000..1_500_000),
    };
    let mut data = vec![0u8; len];
    if rng.random_bool(0.5) {
        rng.fill_bytes(&mut data);
    } else {
        // Compressible text with repeats, so chunks dedup within and across files.
        let words: [&[u8]; 4] = [b"lifeboat ", b"backup ", b"restore\n", b"0123456789"];
        let mut pos = 0;
        while pos < len {
            let w = words[rng.random_range(0..4)];
            let n = w.len().min(len - pos);
            data[pos..pos + n].copy_from_slice(&w[..n]);
            pos += n;
        }
    }
    data
}

fn set_mtime(path: &Path, rng: &mut StdRng) {
    let t = filetime::FileTime::from_unix_time(
        rng.random_range(946_684_800..1_900_000_000),
        rng.random_range(0..1_000_000_000),
    );
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// Builds a random tree under `root` (which must exist) from `seed`: files (empty, small, large,
/// sparse), directories, symlinks, hard links, FIFOs, non-UTF-8 names, modes, owners (when
/// root), mtimes with nanoseconds and extended attributes.
pub fn random_tree(root: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut files = Vec::new();
    build_dir(root, 0, &mut rng, &mut files);
}

fn build_dir(dir: &Path, depth: usize, rng: &mut StdRng, files: &mut Vec<PathBuf>) {
    let as_root = rustix::process::geteuid().is_root();
    let count = rng.random_range(0..7);
    for _ in 0..count {
        let path = dir.join(OsStr::from_bytes(&random_name(rng)));
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        let roll = rng.random_range(0..100);
        match roll {
            0..=54 => {
                fs::write(&path, random_content(rng)).unwrap();
                files.push(path.clone());
            }
            55..=59 => {
                // Sparse: holes at the start, in the middle and at the end.
                let mut f = fs::File::create(&path).unwrap();
                f.seek(SeekFrom::Start(rng.random_range(0..3_000_000)))
                    .unwrap();
                f.write_all(&random_content(rng)).unwrap();
                let len = f.metadata().unwrap().len() + rng.random_range(0..2_000_000);
                f.set_len(len).unwrap();
                files.push(path.clone());
            }
            60..=79 if depth < 3 => {
                fs::create_dir(&path).unwrap();
                build_dir(&path, depth + 1, rng, files);
            }
            80..=87 => {
                let target = random_name(rng);
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).unwrap();
            }
            88..=94 if !files.is_empty() => {
                let original = files[rng.random_range(0..files.len())].clone();
                // The kernel's protected_hardlinks may refuse links to files of other owners.
                let _ = fs::hard_link(&original, &path);
                continue;
            }
            95..=99 => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o640),
                    0,
                )
                .unwrap();
            }
            _ => continue,
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        if !meta.file_type().is_symlink() {
            if (meta.is_file() || meta.is_dir()) && rng.random_bool(0.3) {
                let mut value = vec![0u8; rng.random_range(0..40)];
                rng.fill_bytes(&mut value);
                xattr::set(&path, "user.lifeboat-test", &value).unwrap();
            }
            let modes = [0o644, 0o600, 0o755, 0o700, 0o444, 0o4755, 0o2750, 0o1777];
            let mode = if meta.is_dir() {
                [0o755, 0o700, 0o1777, 0o2755][rng.random_range(0..4)]
            } else {
                modes[rng.random_range(0..modes.len())]
            };
            if as_root {
                let ids = [0, 1000, 65534];
                std::os::unix::fs::lchown(
                    &path,
                    Some(ids[rng.random_range(0..3)]),
                    Some(ids[rng.random_range(0..3)]),
                )
                .unwrap();
            }
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        } else if as_root {
            std::os::unix::fs::lchown(&path, Some(1000), Some(1000)).unwrap();
        }
        set_mtime(&path, rng);
    }
    set_mtime(dir, rng);
}

fn read_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    xattr::list(path)
        .unwrap()
        .map(|name| {
            let value = xattr::get(path, &name).unwrap().unwrap_or_default();
            (name.as_bytes().to_vec(), value)
        })
        .collect()
}

/// Asserts that `restored` is a bit-for-bit copy of `source`: entries, types, contents, link
/// targets, permission bits, owners, mtimes (to the nanosecond), xattrs and hard-link structure.
pub fn assert_same_tree(source: &Path, restored: &Path) {
    let mut links: HashMap<u64, u64> = HashMap::new();
    compare(source, restored, &mut links);
}

fn compare(a: &Path, b: &Path, links: &mut HashMap<u64, u64>) {
    let ma = fs::symlink_metadata(a).unwrap();
    let mb = fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{} missing: {e}", b.display()));
    let ctx = a.display();
    assert_eq!(ma.file_type(), mb.file_type(), "type of {ctx}");
    if !ma.file_type().is_symlink() {
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {ctx}");
        assert_eq!(read_xattrs(a), read_xattrs(b), "xattrs of {ctx}");
    }
    if rustix::process::geteuid().is_root() {
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "owner of {ctx}");
    }
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "mtime of {ctx}"
    );
    if ma.file_type().is_symlink() {
        assert_eq!(
            fs::read_link(a).unwrap(),
            fs::read_link(b).unwrap(),
            "target of {ctx}"
        );
    } else if ma.is_file() {
        assert_eq!(ma.len(), mb.len(), "size of {ctx}");
        assert!(
            fs::read(a).unwrap() == fs::read(b).unwrap(),
            "content of {ctx}"
        );
        if ma.nlink() > 1 {
            let seen = *links.entry(ma.ino()).or_insert(mb.ino());
            assert_eq!(seen, mb.ino(), "hard link structure of {ctx}");
            assert_eq!(ma.nlink(), mb.nlink(), "link count of {ctx}");
        }
        // Holes stay holes: the copy allocates no more than the original (plus a block).
        assert!(
            mb.blocks() <= ma.blocks() + 8,
            "{ctx} lost its holes: {} > {}",
            mb.blocks(),
            ma.blocks()
        );
    } else if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries of {ctx}");
        for name in na {
            compare(&a.join(&name), &b.join(&name), links);
        }
    } else {
        assert!(ma.file_type().is_fifo());
    }
}

/// Where a restore puts an absolute source path below `target`.
pub fn restored_path(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

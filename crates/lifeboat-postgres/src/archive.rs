//! The WAL archive: one stream object per WAL file, in the stream of its cluster.
//!
//! A cluster's stream is `pg-<system identifier>`: every cluster made by `initdb` has its own
//! identifier, restored copies and standbys keep it, and a new timeline after a point-in-time
//! recovery writes new names (the timeline is part of each name). So one stream holds a
//! cluster's whole history and two clusters never mix. Objects are sealed, compressed and bound
//! to their name by the repository (see `Repository::put_stream_object`), so the storage
//! provider cannot swap, reorder or edit segments unnoticed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use lifeboat_repo::Repository;
use lifeboat_storage::StorageError;

use crate::error::{Error, Result};
use crate::wal::WalFile;

/// Prefix of the streams this crate writes.
pub const STREAM_PREFIX: &str = "pg-";

/// The stream that holds the WAL archive of the cluster with this system identifier.
pub fn stream_for(system_identifier: u64) -> String {
    format!("{STREAM_PREFIX}{system_identifier}")
}

/// The system identifier of a stream name, if it is one of ours.
pub fn system_identifier_of(stream: &str) -> Option<u64> {
    stream.strip_prefix(STREAM_PREFIX)?.parse().ok()
}

/// Reads the system identifier from `global/pg_control` of a data directory.
///
/// It is the first field of the control file (a native-endian 64-bit integer) in every
/// PostgreSQL version, so no connection is needed: `archive_command` runs in the data
/// directory and can name its stream without asking the server.
pub fn read_system_identifier(data_dir: &Path) -> Result<u64> {
    let path = data_dir.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| Error::io("read control file", &path, e))?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::Unusable(format!(
                "{} is too short to be a control file",
                path.display()
            ))
        })?;
    Ok(u64::from_ne_bytes(first))
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file is now stored.
    Stored,
    /// The same bytes were archived before (PostgreSQL retries a file after a crash).
    AlreadyArchived,
}

/// The WAL file name of a path, checked.
pub fn wal_name(path: &Path) -> Result<(String, WalFile)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::NotWalFile {
            name: path.display().to_string(),
        })?;
    let file = WalFile::parse(name).ok_or_else(|| Error::NotWalFile {
        name: name.to_string(),
    })?;
    Ok((name.to_string(), file))
}

/// Archives the WAL file at `path` into `stream`. Returns once the object is durably stored
/// (or was already stored with the same bytes); a different object under the same name is an
/// error, never replaced.
pub fn push(repo: &Repository, stream: &str, path: &Path) -> Result<PushOutcome> {
    let (name, _) = wal_name(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io("read WAL file", path, e))?;
    push_bytes(repo, stream, &name, &bytes)
}

/// Archives `bytes` as WAL file `name` (see [`push`]).
pub fn push_bytes(
    repo: &Repository,
    stream: &str,
    name: &str,
    bytes: &[u8],
) -> Result<PushOutcome> {
    if WalFile::parse(name).is_none() {
        return Err(Error::NotWalFile {
            name: name.to_string(),
        });
    }
    match repo.put_stream_object(stream, name, bytes) {
        Ok(()) => Ok(PushOutcome::Stored),
        Err(lifeboat_repo::Error::Storage(StorageError::AlreadyExists { .. })) => {
            let existing = repo.get_stream_object(stream, name)?;
            if existing == bytes {
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(Error::ArchivedDiffers {
                    stream: stream.to_string(),
                    name: name.to_string(),
                })
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What `get` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetOutcome {
    /// The file was written.
    Restored,
    /// The archive has no such file (PostgreSQL asks for files that may not exist, such as
    /// the next timeline's history file, and treats this as the end of the archive).
    Missing,
}

/// Fetches WAL file `name` of `stream`, authenticates it and writes it to `dest` atomically
/// (a temporary file beside it, fsync, rename, fsync of the directory).
pub fn get(repo: &Repository, stream: &str, name: &str, dest: &Path) -> Result<GetOutcome> {
    if WalFile::parse(name).is_none() {
        return Err(Error::NotWalFile {
            name: name.to_string(),
        });
    }
    let bytes = match repo.get_stream_object(stream, name) {
        Ok(bytes) => bytes,
        Err(lifeboat_repo::Error::Storage(e)) if e.is_not_found() => {
            return Ok(GetOutcome::Missing);
        }
        Err(e) => return Err(e.into()),
    };
    write_atomically(dest, &bytes)?;
    Ok(GetOutcome::Restored)
}

/// Writes `bytes` to `dest` so that a crash leaves either the old state or the whole file.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = dest.as_os_str().to_owned();
    temp.push(".lifeboat-tmp");
    let temp = PathBuf::from(temp);
    let mut file = File::create(&temp).map_err(|e| Error::io("create", &temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", &temp, e))?;
    drop(file);
    std::fs::rename(&temp, dest).map_err(|e| Error::io("rename into place", dest, e))?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))?;
    Ok(())
}

/// The archived WAL files of `stream`, parsed and sorted (names that are not WAL files are
/// skipped).
pub fn list(repo: &Repository, stream: &str) -> Result<Vec<(String, WalFile)>> {
    Ok(repo
        .list_stream_objects(stream)?
        .into_iter()
        .filter_map(|name| WalFile::parse(&name).map(|file| (name, file)))
        .collect())
}

#[cfg(test)]
mod tests {
    use lifeboat_repo::{InitOptions, KdfParams};
    use lifeboat_storage::Storage;

    use super::*;

    fn repo() -> Repository {
        let options = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            ..Default::default()
        };
        Repository::init(Storage::memory().unwrap(), b"pw", &options).unwrap()
    }

    #[test]
    fn push_is_idempotent_for_the_same_bytes_and_refuses_others() {
        let repo = repo();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000010000000000000001");
        std::fs::write(&path, b"segment one").unwrap();
        assert_eq!(push(&repo, "pg-1", &path).unwrap(), PushOutcome::Stored);
        assert_eq!(
            push(&repo, "pg-1", &path).unwrap(),
            PushOutcome::AlreadyArchived
        );
        std::fs::write(&path, b"something else").unwrap();
        let err = push(&repo, "pg-1", &path).unwrap_err();
        assert!(matches!(err, Error::ArchivedDiffers { .. }), "{err}");

        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            get(&repo, "pg-1", "000000010000000000000001", &dest).unwrap(),
            GetOutcome::Restored
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"segment one");
        assert_eq!(
            get(&repo, "pg-1", "00000002.history", &dest).unwrap(),
            GetOutcome::Missing
        );
        assert_eq!(list(&repo, "pg-1").unwrap().len(), 1);
    }

    #[test]
    fn push_refuses_names_that_are_not_wal_files() {
        let repo = repo();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgresql.conf");
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            push(&repo, "pg-1", &path),
            Err(Error::NotWalFile { .. })
        ));
    }

    #[test]
    fn streams_name_the_cluster() {
        assert_eq!(
            stream_for(7_312_345_678_901_234_567),
            "pg-7312345678901234567"
        );
        assert_eq!(system_identifier_of("pg-42"), Some(42));
        assert_eq!(system_identifier_of("sqlite-42"), None);
    }
}

/// Pushing ahead: one `archive-push` that has paid for opening the repository also archives
/// the other segments PostgreSQL has marked ready, and leaves a marker for each in a local
/// spool directory. When PostgreSQL then calls `archive-push` for one of them, the marker
/// (the BLAKE3 hash of the bytes that were stored) answers without opening the repository.
/// A marker is written only after its object is durably stored, and it is consumed (removed)
/// when PostgreSQL asks, so the spool holds at most a few markers.
pub mod ahead {
    use std::path::{Path, PathBuf};

    use lifeboat_repo::Repository;

    use super::{PushOutcome, push_bytes, wal_name, write_atomically};
    use crate::error::{Error, Result};

    fn marker(spool: &Path, stream: &str, name: &str) -> PathBuf {
        spool.join(stream).join(format!("{name}.archived"))
    }

    /// If `path` was pushed ahead with exactly these bytes, consumes the marker and returns
    /// true.
    pub fn already_pushed(spool: &Path, stream: &str, path: &Path) -> Result<bool> {
        let (name, _) = wal_name(path)?;
        let marker = marker(spool, stream, &name);
        let Ok(recorded) = std::fs::read_to_string(&marker) else {
            return Ok(false);
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io("read WAL file", path, e))?;
        if recorded.trim() != blake3::hash(&bytes).to_hex().as_str() {
            // Other bytes than were stored: let the full path compare with the archive.
            return Ok(false);
        }
        let _ = std::fs::remove_file(&marker);
        Ok(true)
    }

    /// Archives up to `max` segments that PostgreSQL marked ready in `wal_dir/archive_status`
    /// (oldest first, skipping `current` and those already marked), `threads` at a time.
    /// Returns how many were stored; failures are left for PostgreSQL's own calls.
    pub fn push_ready(
        repo: &Repository,
        stream: &str,
        wal_dir: &Path,
        spool: &Path,
        current: &str,
        max: usize,
        threads: usize,
    ) -> Result<usize> {
        let dir = spool.join(stream);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create spool directory", &dir, e))?;
        let status = wal_dir.join("archive_status");
        let Ok(entries) = std::fs::read_dir(&status) else {
            return Ok(0);
        };
        let mut ready: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".ready").map(str::to_string))
            .filter(|n| n != current && crate::wal::WalFile::parse(n).is_some())
            .filter(|n| !marker(spool, stream, n).exists())
            .collect();
        ready.sort();
        ready.truncate(max);
        // Workers pop from the end: put the oldest there.
        ready.reverse();
        let queue = std::sync::Mutex::new(ready);
        let stored = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    // The guard is dropped inside `and_then`, before the upload.
                    while let Some(name) = queue.lock().ok().and_then(|mut q| q.pop()) {
                        let path = wal_dir.join(&name);
                        let Ok(bytes) = std::fs::read(&path) else {
                            continue;
                        };
                        match push_bytes(repo, stream, &name, &bytes) {
                            Ok(PushOutcome::Stored | PushOutcome::AlreadyArchived) => {
                                let hash = blake3::hash(&bytes).to_hex();
                                if write_atomically(&marker(spool, stream, &name), hash.as_bytes())
                                    .is_ok()
                                {
                                    stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            Err(_) => {}
                        }
                    }
                });
            }
        });
        Ok(stored.into_inner())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ready_segments_are_pushed_ahead_and_answered_from_markers() {
            let options = lifeboat_repo::InitOptions {
                kdf: lifeboat_repo::KdfParams::insecure_for_tests(),
                ..Default::default()
            };
            let repo = Repository::init(
                lifeboat_storage::Storage::memory().unwrap(),
                b"pw",
                &options,
            )
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let wal = dir.path().join("pg_wal");
            std::fs::create_dir_all(wal.join("archive_status")).unwrap();
            for n in 1..=4 {
                let name = format!("00000001000000000000000{n}");
                std::fs::write(wal.join(&name), format!("segment {n}")).unwrap();
                std::fs::write(wal.join("archive_status").join(format!("{name}.ready")), "")
                    .unwrap();
            }
            let spool = dir.path().join("spool");
            let current = "000000010000000000000001";
            let pushed = push_ready(&repo, "pg-1", &wal, &spool, current, 2, 2).unwrap();
            assert_eq!(pushed, 2);
            // The two oldest after the current one, stored for real.
            assert_eq!(
                repo.list_stream_objects("pg-1").unwrap(),
                ["000000010000000000000002", "000000010000000000000003"]
            );
            let second = wal.join("000000010000000000000002");
            assert!(already_pushed(&spool, "pg-1", &second).unwrap());
            // Consumed: a second call goes the full way.
            assert!(!already_pushed(&spool, "pg-1", &second).unwrap());
            // Different bytes than were stored are not answered from the marker.
            let third = wal.join("000000010000000000000003");
            std::fs::write(&third, "changed").unwrap();
            assert!(!already_pushed(&spool, "pg-1", &third).unwrap());
            assert!(!already_pushed(&spool, "pg-1", &wal.join(current)).unwrap());
        }
    }
}

/// Prefetching for `restore_command`: a call that has opened the repository also fetches the
/// next segments of the same timeline, in parallel, into a spool directory; PostgreSQL's calls
/// for them are then answered from the spool without opening the repository. Spooled files
/// were authenticated when fetched, and archived files never change, so a spooled file is as
/// good as a fresh fetch. Files behind the one asked for are removed as replay moves on.
pub mod prefetch {
    use std::path::{Path, PathBuf};

    use lifeboat_repo::Repository;

    use super::{GetOutcome, get, write_atomically};
    use crate::error::{Error, Result};
    use crate::wal::{DEFAULT_SEGMENT_SIZE, WalFile};

    fn spooled(spool: &Path, stream: &str, name: &str) -> PathBuf {
        spool.join(stream).join(name)
    }

    /// If `name` was prefetched, moves it to `dest` and returns true.
    pub fn take(spool: &Path, stream: &str, name: &str, dest: &Path) -> Result<bool> {
        let path = spooled(spool, stream, name);
        // The spool file was written whole and synced when it was fetched, so a rename hands it
        // over complete; PostgreSQL syncs restored files itself where it keeps them.
        if std::fs::rename(&path, dest).is_ok() {
            return Ok(true);
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("read prefetched WAL file", &path, e)),
        };
        // A copy, not a rename: the spool may be on another filesystem than pg_wal.
        write_atomically(dest, &bytes)?;
        let _ = std::fs::remove_file(&path);
        Ok(true)
    }

    /// After segment `name` was fetched (`segment_size` bytes long), fetches the next `ahead`
    /// segments of its timeline into the spool, `threads` at a time, and removes spooled
    /// segments of that timeline that come before it. Returns how many were fetched.
    pub fn fetch_ahead(
        repo: &Repository,
        stream: &str,
        name: &str,
        segment_size: u64,
        spool: &Path,
        ahead: usize,
        threads: usize,
    ) -> Result<usize> {
        let Some(file @ WalFile::Segment { timeline, .. }) = WalFile::parse(name) else {
            return Ok(0);
        };
        let segment_size = if segment_size.is_power_of_two() && segment_size >= 1 << 20 {
            segment_size
        } else {
            DEFAULT_SEGMENT_SIZE
        };
        let segno = file.segno(segment_size).expect("a segment has a number");
        let dir = spool.join(stream);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create spool directory", &dir, e))?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let Some(old) = entry.file_name().to_str().and_then(WalFile::parse) else {
                    continue;
                };
                if old.timeline() == timeline && old.segno(segment_size) < Some(segno) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let wanted: Vec<String> = (1..=ahead as u64)
            .map(|k| WalFile::segment(timeline, segno + k, segment_size).to_string())
            .filter(|n| !spooled(spool, stream, n).exists())
            .collect();
        let queue = std::sync::Mutex::new(wanted.into_iter().rev().collect::<Vec<_>>());
        let fetched = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    while let Some(next) = queue.lock().ok().and_then(|mut q| q.pop()) {
                        let path = spooled(spool, stream, &next);
                        if let Ok(GetOutcome::Restored) = get(repo, stream, &next, &path) {
                            fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Ok(fetched.into_inner())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn next_segments_are_prefetched_and_taken_once() {
            let options = lifeboat_repo::InitOptions {
                kdf: lifeboat_repo::KdfParams::insecure_for_tests(),
                ..Default::default()
            };
            let repo = Repository::init(
                lifeboat_storage::Storage::memory().unwrap(),
                b"pw",
                &options,
            )
            .unwrap();
            let size = 1u64 << 20;
            for segno in 1..=3u64 {
                let name = WalFile::segment(1, segno, size).to_string();
                super::super::push_bytes(&repo, "pg-1", &name, format!("seg {segno}").as_bytes())
                    .unwrap();
            }
            let dir = tempfile::tempdir().unwrap();
            let spool = dir.path().join("spool");
            let first = WalFile::segment(1, 1, size).to_string();
            // Segments 2 and 3 exist, 4 and 5 do not (yet).
            assert_eq!(
                fetch_ahead(&repo, "pg-1", &first, size, &spool, 4, 2).unwrap(),
                2
            );
            let dest = dir.path().join("RECOVERYXLOG");
            let second = WalFile::segment(1, 2, size).to_string();
            assert!(take(&spool, "pg-1", &second, &dest).unwrap());
            assert_eq!(std::fs::read(&dest).unwrap(), b"seg 2");
            assert!(!take(&spool, "pg-1", &second, &dest).unwrap());
            // Moving on removes what is behind.
            let third = WalFile::segment(1, 3, size).to_string();
            fetch_ahead(
                &repo,
                "pg-1",
                &WalFile::segment(1, 4, size).to_string(),
                size,
                &spool,
                1,
                1,
            )
            .unwrap();
            assert!(!take(&spool, "pg-1", &third, &dest).unwrap());
        }
    }
}

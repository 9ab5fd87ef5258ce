//! Follow mode: a read-only replica kept up to date from the repository.
//!
//! The replica is restored once (latest), left in rollback-journal mode, and then every new
//! segment of the generation is applied under SQLite's own EXCLUSIVE lock, so readers (which
//! take SHARED locks) never see a half-applied transaction. After each batch the header's
//! change counter is bumped, which is how readers in rollback mode learn that their page cache
//! is stale. When the replicator starts a new generation, the new snapshot is copied into the
//! replica the same way. Readers should open the replica read-only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lifeboat_repo::IndexedRepository;

use crate::catalog::{self, Selector};
use crate::error::{Error, Result};
use crate::restore::{self, RestoreOutcome, RestorePoint};
use crate::segment;

/// Keeps a replica current.
pub struct Follower {
    repo: IndexedRepository,
    selector: Selector,
    target: PathBuf,
    /// Held open for the follower's life: closing another descriptor of the file would drop
    /// SQLite's POSIX locks on it (they belong to the process, not the descriptor).
    file: File,
    state: RestoreOutcome,
}

impl Follower {
    /// Restores the latest state of the database into `target` (which must not exist).
    pub fn start(repo: IndexedRepository, selector: Selector, target: &Path) -> Result<Follower> {
        let state = restore::restore_as(&repo, &selector, target, RestorePoint::Latest, true)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(target)
            .map_err(|e| Error::io("open", target, e))?;
        Ok(Follower {
            repo,
            selector,
            target: target.to_path_buf(),
            file,
            state,
        })
    }

    /// Where the replica stands.
    pub fn state(&self) -> &RestoreOutcome {
        &self.state
    }

    /// Applies what is new in the repository; returns the segments applied.
    pub fn poll(&mut self) -> Result<u64> {
        let snapshots = catalog::database_snapshots(&self.repo, Some(&self.selector))?;
        if let Some(newest) = snapshots.last()
            && newest.state.generation > self.state.generation
        {
            self.switch_generation()?;
        }
        let stream = self.state.stream.clone();
        let segments = catalog::generation_segments(&self.repo, &stream, &self.state.generation)?;
        let mut applied = 0;
        let from = self.state.position;
        // Parts of a large transaction wait (verified) for the segment with their commit;
        // then all are written under one lock, so readers never see half of it.
        let mut parts: Vec<String> = Vec::new();
        let mut position = self.state.position;
        let mut cursor = self.state.cursor;
        for listed in segments.into_iter().filter(|s| s.position >= from) {
            let bad = |reason: String| Error::Segment {
                stream: stream.clone(),
                name: listed.name.clone(),
                reason: format!(
                    "{reason}; the replica stays at {} (position {})",
                    self.state.captured, self.state.position
                ),
            };
            if listed.position != position {
                return Err(bad("a segment before it is missing".to_string()));
            }
            let bytes = self
                .repo
                .get_stream_object(&stream, &listed.name)
                .map_err(|e| bad(format!("cannot be read: {e}")))?;
            let (header, frames) = segment::decode(&bytes).map_err(&bad)?;
            if !header.new_cycle && cursor.is_some_and(|c| c != header.start) {
                return Err(bad(
                    "it does not continue the previous segment's WAL checksum chain".to_string(),
                ));
            }
            let verified = restore::verify_frames(&header, frames).map_err(&bad)?;
            position = header.end_position;
            cursor = Some(header.end);
            if header.part {
                parts.push(listed.name.clone());
                continue;
            }
            let repo = &self.repo;
            let earlier = parts.len() as u64;
            let transactions = self.locked(|file, path| {
                for part in parts.drain(..) {
                    let again = restore::read_part(repo, &stream, &part).map_err(&bad)?;
                    let (part_header, part_frames) = segment::decode(&again).map_err(&bad)?;
                    let part_verified =
                        restore::verify_frames(&part_header, part_frames).map_err(&bad)?;
                    restore::write_frames(file, path, part_header.page_size, &part_verified)?;
                }
                restore::write_frames(file, path, header.page_size, &verified)
            })?;
            self.state.transactions += transactions;
            self.state.segments += 1 + earlier;
            self.state.position = header.end_position;
            self.state.cursor = Some(header.end);
            self.state.captured = header.captured;
            applied += 1 + earlier;
        }
        Ok(applied)
    }

    /// The replicator started a new generation: copy its snapshot (and segments) in.
    fn switch_generation(&mut self) -> Result<()> {
        let dir = self.target.parent().unwrap_or(Path::new("."));
        let work = tempfile::Builder::new()
            .prefix(".lifeboat-sqlite-follow-")
            .tempdir_in(dir)
            .map_err(|e| Error::io("create a work directory in", dir, e))?;
        let fresh = work.path().join("replica.db");
        let state = restore::restore_as(
            &self.repo,
            &self.selector,
            &fresh,
            RestorePoint::Latest,
            true,
        )?;
        let source = File::open(&fresh).map_err(|e| Error::io("open", &fresh, e))?;
        self.locked(|file, path| {
            let mut buf = vec![0u8; 1 << 20];
            let mut offset = 0u64;
            loop {
                let n = source
                    .read_at(&mut buf, offset)
                    .map_err(|e| Error::io("read", &fresh, e))?;
                if n == 0 {
                    break;
                }
                file.write_all_at(&buf[..n], offset)
                    .map_err(|e| Error::io("write", path, e))?;
                offset += n as u64;
            }
            file.set_len(offset)
                .map_err(|e| Error::io("resize", path, e))?;
            Ok(0)
        })?;
        self.state = state;
        self.state.path = self.target.clone();
        Ok(())
    }

    /// Runs `apply` on the replica file while holding SQLite's EXCLUSIVE lock on it, then
    /// marks the file changed for readers' caches.
    fn locked(&self, apply: impl FnOnce(&File, &Path) -> Result<u64>) -> Result<u64> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.target,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sqlite("open the replica", &self.target, e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| Error::sqlite("set busy timeout", &self.target, e))?;
        conn.execute_batch("BEGIN EXCLUSIVE")
            .map_err(|e| Error::sqlite("lock the replica", &self.target, e))?;
        let mut counter = [0u8; 4];
        self.file
            .read_exact_at(&mut counter, 24)
            .map_err(|e| Error::io("read", &self.target, e))?;
        let outcome = apply(&self.file, &self.target).and_then(|n| {
            let next = u32::from_be_bytes(counter).wrapping_add(1).to_be_bytes();
            for (bytes, offset) in [(&[1u8, 1][..], 18), (&next[..], 24), (&next[..], 92)] {
                self.file
                    .write_all_at(bytes, offset)
                    .map_err(|e| Error::io("write", &self.target, e))?;
            }
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.target, e))?;
            Ok(n)
        });
        // Nothing changed through SQLite, so this only releases the lock.
        let _ = conn.execute_batch("ROLLBACK");
        outcome
    }

    /// Polls every `interval` until `stop` is set; errors are logged and retried.
    pub fn run(&mut self, interval: Duration, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll() {
                tracing::warn!(replica = %self.target.display(), "follow: {e}");
            }
            let until = Instant::now() + interval;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20).min(interval));
            }
        }
    }
}

//! Point-in-time restore: a snapshot, then the journal's transactions on top, up to a moment.
//!
//! The database is rebuilt in a temporary file beside the target, checked with `PRAGMA
//! integrity_check`, and only then linked to the target name, which must not exist: a restore
//! never replaces a file, live or not.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use lifeboat_files::{RestoreOptions, RestoreProgress};
use lifeboat_repo::{Id, IndexedRepository};
use serde::Serialize;

use crate::catalog::{self, DatabaseSnapshot, Selector};
use crate::error::{Error, Result};
use crate::segment;
use crate::wal;

/// Which moment to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// Everything shipped.
    Latest,
    /// The state as captured at or before this time.
    Time(jiff::Timestamp),
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    /// Where the database was written.
    pub path: PathBuf,
    /// The base snapshot.
    pub snapshot: Id,
    /// Its generation.
    pub generation: String,
    /// Journal position reached.
    pub position: u64,
    /// Segments applied on top of the snapshot.
    pub segments: u64,
    /// Transactions applied.
    pub transactions: u64,
    /// The moment the restored database was captured at (the last segment applied, or the
    /// snapshot's).
    pub captured: jiff::Timestamp,
    /// Size of the restored database in bytes.
    pub bytes: u64,
    /// The database's journal stream.
    pub stream: String,
    /// Where the WAL stood after the last segment applied (for a follower to go on from).
    #[serde(skip)]
    pub(crate) cursor: Option<crate::wal::WalCursor>,
}

/// Restores the database chosen by `selector` as of `point` into a new file `target`.
pub fn restore(
    repo: &IndexedRepository,
    selector: &Selector,
    target: &Path,
    point: RestorePoint,
) -> Result<RestoreOutcome> {
    restore_as(repo, selector, target, point, false)
}

/// [`restore`], optionally leaving the database in rollback-journal mode (for a read-only
/// replica that a follower updates under SQLite's file locks).
pub(crate) fn restore_as(
    repo: &IndexedRepository,
    selector: &Selector,
    target: &Path,
    point: RestorePoint,
    rollback_mode: bool,
) -> Result<RestoreOutcome> {
    refuse_existing(target)?;
    let snapshots = catalog::database_snapshots(repo, Some(selector))?;
    if snapshots.is_empty() {
        return Err(Error::NotFound(format!(
            "the repository holds no SQLite snapshot of {selector}; `lifeboat sqlite status` lists the databases it holds"
        )));
    }
    let base = choose_snapshot(&snapshots, point, selector)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".lifeboat-sqlite-restore-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io("create a work directory in", &parent, e))?;
    lifeboat_files::restore(
        repo,
        &base.snapshot,
        work.path(),
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )?;
    let name = base
        .snapshot
        .paths
        .first()
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| Error::BadSnapshot {
            snapshot: base.id.short(),
            reason: "it holds no database file".to_string(),
        })?;
    let file_path = work.path().join(name);
    let mut outcome = RestoreOutcome {
        path: target.to_path_buf(),
        snapshot: base.id,
        generation: base.state.generation.clone(),
        position: base.state.position,
        segments: 0,
        transactions: 0,
        captured: base.state.captured,
        bytes: 0,
        stream: base.state.stream.clone(),
        cursor: base.state.wal,
    };
    apply_segments(repo, base, &file_path, point, &mut outcome)?;
    outcome.bytes = std::fs::metadata(&file_path)
        .map_err(|e| Error::io("read", &file_path, e))?
        .len();
    integrity_check(&file_path, target)?;
    if rollback_mode {
        set_rollback_mode(&file_path)?;
    }
    refuse_existing(target)?;
    // A hard link never replaces an existing name, so a file that appeared meanwhile is safe.
    std::fs::hard_link(&file_path, target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::TargetExists(target.to_path_buf())
        } else {
            Error::io("create", target, e)
        }
    })?;
    if let Ok(dir) = std::fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(outcome)
}

fn refuse_existing(target: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-journal"] {
        let mut name = target.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::TargetExists(path));
        }
    }
    Ok(())
}

fn choose_snapshot<'a>(
    snapshots: &'a [DatabaseSnapshot],
    point: RestorePoint,
    selector: &Selector,
) -> Result<&'a DatabaseSnapshot> {
    match point {
        // The newest generation's latest snapshot: its journal reaches furthest.
        RestorePoint::Latest => Ok(snapshots.last().expect("not empty")),
        RestorePoint::Time(time) => snapshots
            .iter()
            .filter(|s| s.state.captured <= time)
            .max_by(|a, b| {
                (a.state.captured, &a.state.generation, a.state.position).cmp(&(
                    b.state.captured,
                    &b.state.generation,
                    b.state.position,
                ))
            })
            .ok_or_else(|| {
                let earliest = snapshots
                    .iter()
                    .map(|s| s.state.captured)
                    .min()
                    .expect("not empty");
                Error::NotFound(format!(
                    "no snapshot of {selector} was captured at or before {time}; the earliest restorable moment is {earliest}"
                ))
            }),
    }
}

fn apply_segments(
    repo: &IndexedRepository,
    base: &DatabaseSnapshot,
    file_path: &Path,
    point: RestorePoint,
    outcome: &mut RestoreOutcome,
) -> Result<()> {
    let stream = &base.state.stream;
    let segments = catalog::generation_segments(repo, stream, &base.state.generation)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file_path)
        .map_err(|e| Error::io("open", file_path, e))?;
    let mut cursor = outcome.cursor;
    let last_good = |outcome: &RestoreOutcome| {
        format!(
            "the database can be restored up to {} (pass --time {} to get that state)",
            outcome.captured, outcome.captured
        )
    };
    // Parts of a transaction larger than a segment, verified and waiting for the segment with
    // their commit: only then are they read again and written, so no restore ever holds half
    // a transaction, and memory stays at one segment.
    let mut parts: Vec<String> = Vec::new();
    let mut position_so_far = outcome.position;
    for listed in segments {
        let (name, position) = (listed.name, listed.position);
        if position < base.state.position {
            continue;
        }
        if let RestorePoint::Time(time) = point
            && listed.captured > time
        {
            break;
        }
        let bad = |reason: String, outcome: &RestoreOutcome| Error::Segment {
            stream: stream.clone(),
            name: name.clone(),
            reason: format!("{reason}; {}", last_good(outcome)),
        };
        if position != position_so_far {
            return Err(bad(
                format!(
                    "it starts at position {position} but the journal so far ends at {position_so_far}: a segment is missing"
                ),
                outcome,
            ));
        }
        let bytes = repo
            .get_stream_object(stream, &name)
            .map_err(|e| bad(format!("cannot be read: {e}"), outcome))?;
        let (header, frames) = segment::decode(&bytes).map_err(|e| bad(e, outcome))?;
        if header.captured != listed.captured
            || header.position != position
            || header.generation != base.state.generation
        {
            return Err(bad(
                "its header does not match its name".to_string(),
                outcome,
            ));
        }
        if !header.new_cycle && cursor.is_some_and(|c| c != header.start) {
            return Err(bad(
                "it does not continue the previous segment's WAL checksum chain".to_string(),
                outcome,
            ));
        }
        let verified = verify_frames(&header, frames).map_err(|reason| bad(reason, outcome))?;
        cursor = Some(header.end);
        position_so_far = header.end_position;
        if header.part {
            parts.push(name);
            continue;
        }
        for part in parts.drain(..) {
            let again = read_part(repo, stream, &part).map_err(|reason| bad(reason, outcome))?;
            let (part_header, part_frames) =
                segment::decode(&again).map_err(|e| bad(e, outcome))?;
            let part_verified =
                verify_frames(&part_header, part_frames).map_err(|reason| bad(reason, outcome))?;
            write_frames(&file, file_path, part_header.page_size, &part_verified)?;
            outcome.segments += 1;
        }
        outcome.transactions += write_frames(&file, file_path, header.page_size, &verified)?;
        outcome.position = header.end_position;
        outcome.cursor = cursor;
        outcome.captured = header.captured;
        outcome.segments += 1;
    }
    // Parts left without their commit (a restore to a moment between them and the end of
    // their round, or a replicator stopped between parts) are not applied.
    file.sync_all()
        .map_err(|e| Error::io("sync", file_path, e))?;
    Ok(())
}

/// Reads a part again (it was verified once; objects never change, and it is verified again).
pub(crate) fn read_part(
    repo: &IndexedRepository,
    stream: &str,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    repo.get_stream_object(stream, name)
        .map_err(|e| format!("part {name} cannot be read again: {e}"))
}

/// Sets the header's read and write versions (bytes 18 and 19) to 1, rollback journal: the
/// frames of a WAL-mode database carry 2 there.
pub(crate) fn set_rollback_mode(path: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    file.write_all_at(&[1, 1], 18)
        .map_err(|e| Error::io("write", path, e))
}

/// A frame's header and page.
pub(crate) type Frame<'a> = (wal::FrameHeader, &'a [u8]);

/// Checks every frame of a segment (checksum chain, whole transactions) before any is used.
pub(crate) fn verify_frames<'a>(
    header: &segment::SegmentHeader,
    frames: &'a [u8],
) -> std::result::Result<Vec<Frame<'a>>, String> {
    let verified = wal::frames(
        frames,
        header.page_size,
        header.big_endian,
        header.start.salt,
        header.start.checksum,
    )
    .collect::<std::result::Result<Vec<_>, usize>>()
    .map_err(|index| format!("frame {index} fails its WAL checksum"))?;
    if header.part {
        if verified.is_empty() || verified.iter().any(|(h, _)| h.is_commit()) {
            return Err("a part of a transaction must hold frames and no commit".to_string());
        }
    } else if !verified.last().is_some_and(|(h, _)| h.is_commit()) {
        return Err("it does not end with a complete transaction".to_string());
    }
    Ok(verified)
}

/// Writes verified frames into a database file: each page at its place, and the file's length
/// set at each commit. Returns the transactions applied.
pub(crate) fn write_frames(
    file: &std::fs::File,
    file_path: &Path,
    page_size: u32,
    frames: &[Frame<'_>],
) -> Result<u64> {
    let mut transactions = 0;
    for (frame_header, page) in frames {
        let offset = u64::from(frame_header.page - 1) * u64::from(page_size);
        file.write_all_at(page, offset)
            .map_err(|e| Error::io("write", file_path, e))?;
        if frame_header.is_commit() {
            file.set_len(u64::from(frame_header.db_pages) * u64::from(page_size))
                .map_err(|e| Error::io("resize", file_path, e))?;
            transactions += 1;
        }
    }
    Ok(transactions)
}

fn integrity_check(path: &Path, target: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open the restored database", path, e))?;
    let mut statement = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite("check", path, e))?;
    let lines: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| Error::sqlite("check", path, e))?;
    if lines != ["ok"] {
        return Err(Error::Integrity {
            path: target.to_path_buf(),
            report: lines.into_iter().take(5).collect::<Vec<_>>().join("; "),
        });
    }
    Ok(())
}

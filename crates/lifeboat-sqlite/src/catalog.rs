//! What the repository holds for a database: its snapshots (with the journal position each was
//! taken at) and its journal stream.
//!
//! A database is identified by the absolute path it was replicated from, recorded (encrypted)
//! in each snapshot together with its stream id. The stream id is random, so object names on
//! storage say nothing about which database they belong to.

use std::path::Path;

use lifeboat_repo::{Id, Repository, Snapshot, SourceKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::segment::{self, SegmentName};
use crate::wal::WalCursor;

/// Version of [`SnapshotState`].
pub const STATE_FORMAT: u32 = 1;

/// The `source_state` of an SQLite snapshot: where in the journal the snapshot stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Format of this record.
    pub format: u32,
    /// Absolute path of the replicated database.
    pub database: String,
    /// Journal stream of the database.
    pub stream: String,
    /// Generation the snapshot starts or belongs to.
    pub generation: String,
    /// Journal position (within the generation) the snapshot is consistent with: segments from
    /// this position on apply on top of it.
    pub position: u64,
    /// When the database was in the state the snapshot holds.
    pub captured: jiff::Timestamp,
    /// Where the WAL stood (`None` if the WAL was empty or absent).
    pub wal: Option<WalCursor>,
    /// Database page size.
    pub page_size: u32,
}

/// An SQLite snapshot with its parsed state.
#[derive(Debug, Clone)]
pub struct DatabaseSnapshot {
    /// Snapshot id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its journal position.
    pub state: SnapshotState,
}

/// Which database a command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The path it was replicated from.
    Path(String),
    /// Its stream id.
    Stream(String),
}

impl Selector {
    /// Selects by path: the canonical path if the file exists, else the absolute path.
    pub fn path(path: &Path) -> Selector {
        let absolute = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        Selector::Path(absolute.to_string_lossy().into_owned())
    }

    fn matches(&self, state: &SnapshotState) -> bool {
        match self {
            Selector::Path(path) => state.database == *path,
            Selector::Stream(stream) => state.stream == *stream,
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Path(path) => write!(f, "database {path}"),
            Selector::Stream(stream) => write!(f, "stream {stream}"),
        }
    }
}

/// All SQLite snapshots in the repository (optionally of one database), oldest captured first.
pub fn database_snapshots(
    repo: &Repository,
    selector: Option<&Selector>,
) -> Result<Vec<DatabaseSnapshot>> {
    let (all, _unreadable) = repo.readable_snapshots()?;
    let mut found = Vec::new();
    for entry in all {
        if entry.snapshot.source != SourceKind::Sqlite {
            continue;
        }
        let Some(value) = entry.snapshot.source_state.clone() else {
            continue;
        };
        let state: SnapshotState =
            serde_json::from_value(value).map_err(|e| Error::BadSnapshot {
                snapshot: entry.id.short(),
                reason: format!("its SQLite journal position cannot be read: {e}"),
            })?;
        if state.format != STATE_FORMAT {
            return Err(Error::BadSnapshot {
                snapshot: entry.id.short(),
                reason: format!(
                    "SQLite state format {} is not supported; upgrade Lifeboat",
                    state.format
                ),
            });
        }
        if selector.is_none_or(|s| s.matches(&state)) {
            found.push(DatabaseSnapshot {
                id: entry.id,
                snapshot: entry.snapshot,
                state,
            });
        }
    }
    found.sort_by(|a, b| {
        (&a.state.generation, a.state.position, a.state.captured).cmp(&(
            &b.state.generation,
            b.state.position,
            b.state.captured,
        ))
    });
    Ok(found)
}

/// The timeline an SQLite snapshot is a base of, for retention
/// (`lifeboat_repo::retention::apply_with_timelines`): its database's journal stream. `None`
/// for other snapshots.
pub fn timeline(snapshot: &Snapshot) -> Option<String> {
    if snapshot.source != SourceKind::Sqlite {
        return None;
    }
    let state: SnapshotState = serde_json::from_value(snapshot.source_state.clone()?).ok()?;
    Some(format!("sqlite {}", state.stream))
}

/// The segments of `generation` in `stream`, in order.
pub fn generation_segments(
    repo: &Repository,
    stream: &str,
    generation: &str,
) -> Result<Vec<SegmentName>> {
    Ok(repo
        .list_stream_objects(stream)?
        .into_iter()
        .filter_map(|name| segment::parse_name(&name))
        .filter(|s| s.generation == generation)
        .collect())
}

/// A fresh random stream id (32 hex digits).
pub fn new_stream_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A generation id for a generation starting now: µs since the epoch as 16 hex digits, so
/// later generations sort after earlier ones.
pub fn new_generation() -> String {
    format!(
        "{:016x}",
        jiff::Timestamp::now().as_microsecond().max(0) as u64
    )
}

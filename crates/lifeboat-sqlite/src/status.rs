//! Status of the databases a repository protects: what is restorable, and how far the journal
//! lags behind the live database when it is on this machine.

use std::path::Path;

use lifeboat_repo::Repository;
use serde::Serialize;

use crate::catalog::{self, Selector};
use crate::error::{Error, Result};
use crate::segment;
use crate::wal;

/// The last segment of a database's journal.
#[derive(Debug, Clone, Serialize)]
pub struct LastSegment {
    /// Object name.
    pub name: String,
    /// When its frames were captured.
    pub captured: jiff::Timestamp,
    /// Position after it.
    pub end_position: u64,
}

/// How far the stored journal is behind the live database.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// Committed WAL bytes not in the repository.
    pub bytes: u64,
    /// Seconds since the last segment, if anything is waiting; else 0.
    pub seconds: f64,
}

/// One database in one repository.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatus {
    /// The repository this is about, when the caller names it (several destinations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The replicated database.
    pub database: String,
    /// Its journal stream.
    pub stream: String,
    /// The newest generation.
    pub generation: String,
    /// Snapshots of the database.
    pub snapshots: usize,
    /// Segments of the newest generation.
    pub segments: usize,
    /// The earliest moment a restore can reach.
    pub restorable_from: jiff::Timestamp,
    /// The latest moment a restore can reach.
    pub restorable_to: jiff::Timestamp,
    /// The newest snapshot's capture time.
    pub last_snapshot: jiff::Timestamp,
    /// The newest generation's last segment.
    pub last_segment: Option<LastSegment>,
    /// Lag behind the live database, when it can be read from here.
    pub lag: Option<Lag>,
}

/// Status of every SQLite database in `repo` (or of the one `selector` names).
pub fn status(repo: &Repository, selector: Option<&Selector>) -> Result<Vec<DatabaseStatus>> {
    let snapshots = catalog::database_snapshots(repo, selector)?;
    let mut databases: Vec<String> = snapshots.iter().map(|s| s.state.database.clone()).collect();
    databases.sort();
    databases.dedup();
    let mut out = Vec::new();
    for database in databases {
        let own: Vec<_> = snapshots
            .iter()
            .filter(|s| s.state.database == database)
            .collect();
        let latest = own.last().expect("one at least");
        let stream = latest.state.stream.clone();
        let generation = latest.state.generation.clone();
        let segments = catalog::generation_segments(repo, &stream, &generation)?;
        let last_segment = match segments.last() {
            Some(last) => {
                let name = &last.name;
                let bytes = repo.get_stream_object(&stream, name)?;
                let (header, _) = segment::decode(&bytes).map_err(|reason| Error::Segment {
                    stream: stream.clone(),
                    name: name.clone(),
                    reason,
                })?;
                Some((name.clone(), header))
            }
            None => None,
        };
        let end_cursor = last_segment
            .as_ref()
            .map_or(latest.state.wal, |(_, h)| Some(h.end));
        let last_time = last_segment
            .as_ref()
            .map_or(latest.state.captured, |(_, h)| h.captured)
            .max(latest.state.captured);
        let lag = local_lag(Path::new(&database), end_cursor, last_time);
        out.push(DatabaseStatus {
            repository: None,
            stream,
            generation,
            snapshots: own.len(),
            segments: segments.len(),
            restorable_from: own.iter().map(|s| s.state.captured).min().expect("one"),
            restorable_to: last_time,
            last_snapshot: own.iter().map(|s| s.state.captured).max().expect("one"),
            last_segment: last_segment.map(|(name, h)| LastSegment {
                name,
                captured: h.captured,
                end_position: h.end_position,
            }),
            lag,
            database,
        });
    }
    Ok(out)
}

/// Committed bytes in the local WAL after `cursor` (all of a newer WAL cycle if the cursor's
/// cycle is gone); `None` if the database is not here.
fn local_lag(
    database: &Path,
    cursor: Option<wal::WalCursor>,
    last_time: jiff::Timestamp,
) -> Option<Lag> {
    if !database.exists() {
        return None;
    }
    let mut wal_name = database.as_os_str().to_owned();
    wal_name.push("-wal");
    let wal_path = std::path::PathBuf::from(wal_name);
    let mut position = cursor;
    let mut bytes = 0u64;
    loop {
        match wal::scan_committed(&wal_path, position.as_ref(), 16 << 20).ok()? {
            Some(read) if read.commits > 0 => {
                bytes += read.bytes;
                position = Some(read.end);
            }
            _ => break,
        }
    }
    let seconds = if bytes > 0 {
        (jiff::Timestamp::now() - last_time)
            .total(jiff::Unit::Second)
            .unwrap_or(0.0)
            .max(0.0)
    } else {
        0.0
    };
    Some(Lag { bytes, seconds })
}

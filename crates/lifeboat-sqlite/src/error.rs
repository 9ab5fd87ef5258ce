//! The one error type of the SQLite source.

use std::path::PathBuf;

/// Errors of replication, restore and status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::Error),
    /// Storing or restoring a snapshot failed.
    #[error(transparent)]
    Files(#[from] lifeboat_files::Error),
    /// A filesystem operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused an operation.
    #[error("SQLite: {operation} {path}: {source}")]
    Sqlite {
        /// What was attempted.
        operation: &'static str,
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database does not use a write-ahead log.
    #[error(
        "{path} is in journal mode {mode:?}, not WAL: run `PRAGMA journal_mode=WAL;` on it once (the setting is persistent) and start replication again"
    )]
    NotWal {
        /// The database.
        path: PathBuf,
        /// Its journal mode.
        mode: String,
    },
    /// A journal segment is damaged, missing or out of place.
    #[error("journal segment {name} of stream {stream}: {reason}")]
    Segment {
        /// The stream (one per database).
        stream: String,
        /// The segment's object name.
        name: String,
        /// What is wrong and what can still be restored.
        reason: String,
    },
    /// Nothing in the repository matches the request.
    #[error("{0}")]
    NotFound(String),
    /// A restore would replace an existing file.
    #[error(
        "restore target {0} already exists; Lifeboat never overwrites a database: choose a new path, or move the old file away first"
    )]
    TargetExists(PathBuf),
    /// The restored database fails `PRAGMA integrity_check`.
    #[error(
        "the restored database fails PRAGMA integrity_check (nothing was written to {path}): {report}"
    )]
    Integrity {
        /// The target that was not written.
        path: PathBuf,
        /// The first lines of SQLite's report.
        report: String,
    },
    /// The copy of the database a snapshot is read from could not be made.
    #[error("cannot copy {path} for a snapshot: {reason}")]
    SnapshotCopy {
        /// The database.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Destinations did not store what was committed in time.
    #[error(
        "replication of {database} is behind at {destinations}; check that the repository answers (`lifeboat snapshots` on it)"
    )]
    Behind {
        /// The database.
        database: String,
        /// Which destinations, how far behind, and their last error.
        destinations: String,
    },
    /// The source state recorded in a snapshot is not one this version understands.
    #[error("snapshot {snapshot}: {reason}")]
    BadSnapshot {
        /// Snapshot id.
        snapshot: String,
        /// Why.
        reason: String,
    },
}

/// Result of the SQLite source.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sqlite(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: rusqlite::Error,
    ) -> Self {
        Error::Sqlite {
            operation,
            path: path.into(),
            source,
        }
    }
}

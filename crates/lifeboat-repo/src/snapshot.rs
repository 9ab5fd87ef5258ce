//! Snapshots: the root of one backup, stored as a sealed object under `snapshots/`.

use serde::{Deserialize, Serialize};

use crate::Id;

/// What kind of source a snapshot protects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A file tree.
    #[default]
    Files,
    /// An SQLite database.
    Sqlite,
    /// A PostgreSQL cluster.
    Postgres,
}

/// Figures recorded at the end of a backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files whose metadata changed since the parent, so they were read again.
    pub files_changed: u64,
    /// Files skipped unread because they match the parent.
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries (symlinks, devices, pipes).
    pub others: u64,
    /// Entries that could not be read (and are missing from the snapshot).
    pub errors: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Total size of the files in the snapshot.
    pub bytes_total: u64,
    /// Blobs added to the repository.
    pub blobs_added: u64,
    /// Plaintext bytes of the blobs added.
    pub bytes_added: u64,
    /// Bytes written to storage for them (compressed and encrypted, with pack overhead).
    pub bytes_stored: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// Snapshot format version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// When the backup started.
    pub time: jiff::Timestamp,
    /// Root tree: one entry per backed-up path.
    pub tree: Id,
    /// What was backed up (absolute paths).
    pub paths: Vec<String>,
    /// Machine name.
    pub hostname: String,
    /// User that ran the backup.
    pub username: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Snapshot used for change detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Kind of source.
    pub source: SourceKind,
    /// Lifeboat version that wrote it.
    pub program_version: String,
    /// Figures of the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<BackupSummary>,
    /// Where a database source's journal stood when this snapshot was taken (for SQLite the
    /// WAL generation and offset, for PostgreSQL the start/stop LSN and timeline), so that a
    /// restore knows which stream objects to replay on top. Its shape belongs to the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_state: Option<serde_json::Value>,
}

/// A snapshot with its id (the object name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotEntry {
    /// Object name.
    pub id: Id,
    /// Contents.
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

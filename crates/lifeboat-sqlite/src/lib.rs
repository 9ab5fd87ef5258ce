//! The SQLite source of Lifeboat: continuous protection of a live database in WAL mode.
//!
//! # How it works
//!
//! A [`Replicator`] runs beside the application (a sidecar: another process writes the
//! database). It keeps a read transaction open, so SQLite cannot restart the write-ahead log
//! over frames it has not shipped, reads new frames straight from the `-wal` file, and stores
//! each batch of whole transactions as an encrypted stream object (a *segment*, see
//! [`segment`]). Now and then it takes the write lock for a moment, ships the last frames,
//! runs a PASSIVE checkpoint and opens a new read transaction, so the log can be restarted
//! without losing anything. Periodic whole-database snapshots go through the engine's
//! content-defined chunking, so successive ones share most of their data.
//!
//! One replicator can feed several repositories ([`Destination`]s, e.g. a local one and S3):
//! one reader holds the read transaction, and each destination has its own queue, thread,
//! cursor and lag. One that is down or slow is released past the lag limit (it no longer holds
//! the WAL back) and resyncs with a fresh snapshot when it answers.
//!
//! [`restore()`] rebuilds the database as of any captured moment: the newest snapshot at or
//! before it, then the segments' frames in order up to the last one captured by then, checked
//! with SQLite's checksums and `PRAGMA integrity_check`.
//!
//! # Invariants
//!
//! * A segment holds whole transactions only, up to a commit frame whose checksum chain is
//!   valid; nothing uncommitted is ever shipped.
//! * A generation starts with its snapshot: no segment of a generation is written before the
//!   snapshot it applies to is saved.
//! * Positions within a generation are contiguous: each segment starts where the previous one
//!   ended; a restore refuses a gap instead of skipping it.
//! * The replicator never writes to the database: it reads, takes the write lock without
//!   writing, and checkpoints (PASSIVE only).
//!
//! See `docs/sqlite.md` for the guarantees and how to run it.
//!
//! ```
//! use lifeboat_repo::{InitOptions, KdfParams, Repository};
//! use lifeboat_sqlite::{ReplicateOptions, Replicator, RestorePoint, Selector};
//!
//! let dir = tempfile::tempdir()?;
//! let db = dir.path().join("app.db");
//! let app = rusqlite::Connection::open(&db)?;
//! app.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
//! app.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")?;
//!
//! let options = InitOptions { kdf: KdfParams::insecure_for_tests(), ..Default::default() };
//! let repo = Repository::init(lifeboat_storage::Storage::memory()?, b"pw", &options)?;
//! // Opening takes the base snapshot; each tick ships what was committed since.
//! let mut replicator = Replicator::open(&db, repo.clone().load_index()?, ReplicateOptions::default())?;
//! app.execute("INSERT INTO t VALUES (2)", [])?;
//! replicator.tick()?;
//! // Each destination stores on its own thread; wait until they have it.
//! replicator.sync(std::time::Duration::from_secs(60))?;
//!
//! let restored = dir.path().join("restored.db");
//! let repo = Repository::open(repo.storage().clone(), b"pw")?.load_index()?;
//! lifeboat_sqlite::restore(&repo, &Selector::path(&db), &restored, RestorePoint::Latest)?;
//! let n: i64 = rusqlite::Connection::open(&restored)?.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
//! assert_eq!(n, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod catalog;
mod error;
pub mod follow;
pub mod replicate;
pub mod restore;
pub mod retention;
pub mod segment;
pub mod status;
pub mod wal;

pub use catalog::{DatabaseSnapshot, Selector, SnapshotState};
pub use error::{Error, Result};
pub use follow::Follower;
pub use replicate::{
    Destination, DestinationState, DestinationStatus, Opener, ReplicateOptions, ReplicationStatus,
    Replicator, open_destination,
};
pub use restore::{RestoreOutcome, RestorePoint, restore};

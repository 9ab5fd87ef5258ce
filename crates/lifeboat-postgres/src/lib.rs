//! PostgreSQL point-in-time recovery on a Lifeboat repository.
//!
//! * [`archive`]: `archive_command` / `restore_command` — each WAL file is one sealed stream
//!   object in the cluster's stream `pg-<system identifier>`, stored create-only.
//! * [`backup`]: base backups of a running cluster through `pg_backup_start`/`pg_backup_stop`,
//!   stored as ordinary deduplicated snapshots with the backup label in `source_state`.
//! * [`restore`]: the newest base backup before a target, plus recovery settings that make
//!   PostgreSQL replay archived WAL to exactly that target.
//! * [`check`]: gaps in the WAL chain and the archive's figures.
//! * [`timeline`]: which branch of the WAL history a restore follows, from the archived
//!   history files.
//! * [`expire`]: retention: the newest N base backups and the WAL they need.
//!
//! # Invariants
//!
//! * `archive::push` returns only once the WAL file is durably stored; an archived file is
//!   never replaced (the same bytes again succeed, other bytes fail).
//! * A base backup is usable only once `pg_backup_stop` has returned (having waited for the
//!   WAL it needs to be archived): until then its snapshot says `complete: false`.
//! * Restore never writes into a non-empty directory unless asked (`delta`).
//!
//! The user-facing description is `docs/postgres.md`.
//!
//! ```
//! use lifeboat_postgres::archive::{self, GetOutcome, PushOutcome};
//! use lifeboat_repo::{InitOptions, KdfParams, Repository};
//! use lifeboat_storage::Storage;
//!
//! let options = InitOptions { kdf: KdfParams::insecure_for_tests(), ..Default::default() };
//! let repo = Repository::init(Storage::memory()?, b"secret", &options)?;
//! let stream = archive::stream_for(7_312_345_678_901_234_567);
//! let dir = tempfile::tempdir()?;
//! let segment = dir.path().join("000000010000000000000001");
//! std::fs::write(&segment, b"WAL bytes")?;
//! // PostgreSQL may call archive_command twice for one file: the same bytes succeed again.
//! assert_eq!(archive::push(&repo, &stream, &segment)?, PushOutcome::Stored);
//! assert_eq!(archive::push(&repo, &stream, &segment)?, PushOutcome::AlreadyArchived);
//! let dest = dir.path().join("RECOVERYXLOG");
//! assert_eq!(archive::get(&repo, &stream, "000000010000000000000001", &dest)?, GetOutcome::Restored);
//! assert_eq!(archive::get(&repo, &stream, "00000002.history", &dest)?, GetOutcome::Missing);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod archive;
pub mod backup;
pub mod check;
mod error;
pub mod expire;
pub mod restore;
pub mod session;
pub mod timeline;
pub mod wal;

pub use backup::{BackupState, BaseBackupOptions, BaseBackupOutcome, base_backup};
pub use error::{Error, Result};
pub use restore::{PgRestoreOptions, PgRestoreOutcome, RecoveryTarget};
pub use session::{ConnectOptions, Session};
pub use wal::{Lsn, WalFile};

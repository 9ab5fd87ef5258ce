//! The file-tree source of Lifeboat: back up directories with their metadata, and restore them.
//!
//! What is kept for each entry: type (file, directory, symlink, FIFO, character and block device,
//! socket), permission bits, owner and group ids, modification and access times, size, inode,
//! device and link count (for change detection and hard links), extended attributes, and names
//! as raw bytes. Restores recreate hard links as links, keep sparse files sparse, and set owners
//! only when running as root. Sockets are recorded but not restored.
//!
//! This crate knows nothing about encryption or storage: it gives blobs to a
//! [`lifeboat_repo::BlobWriter`] and reads them back through an
//! [`lifeboat_repo::IndexedRepository`].

mod backup;
mod error;
pub mod meta;
mod restore;

pub use backup::{BackupOptions, BackupOutcome, BackupProgress, backup, backup_stream};
pub use error::{Error, Result, Warning};
pub use restore::{RestoreOptions, RestoreProgress, RestoreSummary, restore};

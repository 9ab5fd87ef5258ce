//! The Lifeboat repository: an encrypted, deduplicated, content-addressed store of blobs, trees
//! and snapshots on top of [`lifeboat_storage`].
//!
//! # Invariants this crate guards
//!
//! * **Objects are immutable.** Packs, index objects and snapshots are named by the BLAKE3 hash
//!   of their stored bytes and never rewritten; `config` is written once, create-only. A backup
//!   only adds objects, so it works with credentials that cannot delete.
//! * **Write order is packs, then index, then snapshot** (see [`writer`]). A crash at any point
//!   leaves a readable repository; the worst case is unreferenced data.
//! * **No locks.** Concurrent writers add different objects; the same blob stored twice is
//!   harmless (the index keeps one location).
//! * **Everything read is authenticated** before it is used: a flipped bit, a truncated object or
//!   the wrong key is an error naming the object, never wrong data.
//! * **Storage learns nothing from names**: blob ids are keyed hashes; object names are hashes of
//!   ciphertext.
//!
//! The byte-level format is specified in `docs/format.md`.
//!
//! ```
//! use lifeboat_repo::{InitOptions, KdfParams, Repository, BlobType, BlobWriter, WriterOptions};
//! use lifeboat_storage::Storage;
//!
//! let options = InitOptions { kdf: KdfParams::insecure_for_tests(), ..Default::default() };
//! let repo = Repository::init(Storage::memory()?, b"secret", &options)?.load_index()?;
//! let writer = BlobWriter::new(&repo, &WriterOptions::default());
//! let (id, new) = writer.add(BlobType::Data, b"hello".to_vec())?;
//! assert!(new);
//! writer.finish()?;
//! let repo = Repository::open(repo.storage().clone(), b"secret")?.load_index()?;
//! assert_eq!(repo.read_blob(&id)?, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod browse;
pub mod check;
pub mod chunker;
pub mod copy;
pub mod crypto;
mod error;
mod id;
pub mod index;
pub mod keyfile;
pub mod object;
pub mod pack;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod retention;
pub mod snapshot;
pub mod tree;
pub mod writer;

pub use chunker::{Chunker, ChunkerParams};
pub use copy::{CopyOptions, CopyProgress, CopyStats, check_content_keys, copy_snapshots};
pub use error::{Error, Result};
pub use id::{Id, IdMap, IdSet};
pub use keyfile::KdfParams;
pub use pack::{BlobType, Compression};
pub use repository::{IndexedRepository, InitOptions, RepoConfig, Repository};
pub use snapshot::{BackupSummary, Snapshot, SnapshotEntry, SourceKind};
pub use tree::{ByteName, Node, NodeKind, Timespec, Tree, Xattr};
pub use writer::{BlobWriter, WriterOptions, WriterStats};

//! The one error type of the repository crate.
//!
//! Every variant says what failed and on which object, so that a user reading the message knows
//! where to look; variants that a user can fix say how.

use lifeboat_storage::StorageError;

use crate::Id;

/// Errors of repository operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed (I/O, network, permissions, missing object).
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// No key file could be opened with the password given.
    #[error(
        "wrong password: none of the {keys} key(s) in {location} opens with it \
         (check LIFEBOAT_PASSWORD_FILE or --password-command)"
    )]
    WrongPassword {
        /// Number of key files tried.
        keys: usize,
        /// Where the repository lives.
        location: String,
    },

    /// The location holds no repository.
    #[error(
        "{location} is not a Lifeboat repository (no config object); create one with `lifeboat init`"
    )]
    NotARepository {
        /// Where we looked.
        location: String,
    },

    /// `init` found an existing repository.
    #[error("{location} already holds a repository; refusing to initialise it again")]
    AlreadyInitialised {
        /// Where we looked.
        location: String,
    },

    /// Authentication of stored bytes failed: the object was modified, truncated or written
    /// with another key.
    #[error(
        "{what} failed authentication: it is corrupt, truncated or was written with another key"
    )]
    Corrupt {
        /// Which object or blob, e.g. `pack data/ab/abcd… blob 1f2e…`.
        what: String,
    },

    /// A structure decoded but is not well-formed.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// Which object.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The object was written by a newer Lifeboat.
    #[error(
        "{what} uses format version {found}, this build reads up to {supported}; upgrade Lifeboat"
    )]
    UnsupportedVersion {
        /// Which object.
        what: String,
        /// Version found.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },

    /// A blob referenced by a tree or snapshot is not in the index.
    #[error("blob {0} is not in the index: the repository is missing data (run `lifeboat check`)")]
    MissingBlob(Id),

    /// A snapshot id or prefix matches nothing, or more than one snapshot.
    #[error("{0}")]
    SnapshotNotFound(String),

    /// The backup pipeline stopped because one of its stages failed.
    #[error("backup pipeline stopped: {0}")]
    Pipeline(String),

    /// Key derivation failed (bad parameters).
    #[error("key derivation failed: {0}")]
    Kdf(String),

    /// A prune deleted packs that a running backup had deduplicated against.
    #[error(
        "a prune that ran while this backup did deleted {blobs} blob(s) it had reused; the \
         snapshot was not written (nothing else was lost): run the backup again"
    )]
    PrunedConcurrently {
        /// How many blobs the snapshot would lack.
        blobs: usize,
    },

    /// A copy between repositories whose blob ids do not agree.
    #[error(
        "{to} does not share content keys with {from}, so blob ids differ and a copy \
         would have to re-chunk everything; create the destination with \
         `lifeboat --repo {to} init --copy-content-keys-from {from}`"
    )]
    ContentKeysDiffer {
        /// The source repository.
        from: String,
        /// The destination repository.
        to: String,
    },
}

/// Result of repository operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

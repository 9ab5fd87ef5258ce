//! Errors and warnings of the file source.

use std::path::PathBuf;

/// Fatal errors of backup and restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::Error),
    /// A filesystem operation failed where the whole operation cannot go on.
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
    /// A restore target holds files and overwriting was not asked for.
    #[error("restore target {0} is not empty; choose an empty directory or pass --overwrite")]
    TargetNotEmpty(PathBuf),
    /// A glob pattern does not parse.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// Nothing was given to back up.
    #[error("no paths to back up")]
    NoPaths,
    /// The backup was cancelled; what it stored is indexed and will be reused.
    #[error(
        "backup cancelled: no snapshot written; {packs_kept} packs stored so far are kept and the next backup reuses them"
    )]
    Cancelled {
        /// Packs stored and indexed before stopping.
        packs_kept: u64,
    },
}

/// Result of file-source operations.
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
}

/// A problem with one entry that did not stop the operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// The entry.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

//! The one error type of the PostgreSQL source.
//!
//! Every variant names what failed (a WAL file, a query, a directory) and, where the user can
//! act, what to do.

use std::path::PathBuf;

/// Errors of the PostgreSQL source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository failed (storage, authentication, format).
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::Error),

    /// Backing up or restoring the data directory's files failed.
    #[error(transparent)]
    Files(#[from] lifeboat_files::Error),

    /// A local file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// A file handed to archive-push or asked of archive-get is not a WAL file PostgreSQL
    /// archives.
    #[error(
        "{name:?} is not a WAL segment, timeline history or backup history file name \
         (archive_command must pass %p and restore_command %f %p)"
    )]
    NotWalFile {
        /// The name given.
        name: String,
    },

    /// archive-push found the segment already archived with other content.
    #[error(
        "WAL file {name} is already archived in stream {stream} with different content: refusing \
         to replace it. Two clusters may be archiving into one stream, or this cluster was \
         restored without a new timeline; check archive_command and `lifeboat pg status`"
    )]
    ArchivedDiffers {
        /// The stream.
        stream: String,
        /// The WAL file name.
        name: String,
    },

    /// Talking to PostgreSQL failed.
    #[error("PostgreSQL: {what}: {message}")]
    Postgres {
        /// What was being done (a query, starting psql).
        what: String,
        /// PostgreSQL's or psql's message.
        message: String,
    },

    /// The cluster or its files are not as a backup or restore needs them.
    #[error("{0}")]
    Unusable(String),

    /// No base backup can serve the recovery target.
    #[error("{0}")]
    NoBackup(String),
}

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

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

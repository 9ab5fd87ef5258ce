//! The crate's one error type.

use std::path::PathBuf;

/// Result with the server's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the server library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the state directory could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration file is invalid.
    #[error("configuration {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The catalog database failed.
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    /// Catalog migrations failed.
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A sealed secret could not be opened (wrong server key or tampered catalog).
    #[error(
        "cannot decrypt a secret stored in the catalog ({0}): the server key in the state directory does not match the catalog, or the catalog was modified"
    )]
    Unseal(String),
    /// A password was refused by the policy.
    #[error("password refused: {0}")]
    WeakPassword(String),
    /// A cron schedule could not be parsed.
    #[error("schedule {schedule:?}: {message}")]
    Schedule {
        /// The schedule as given.
        schedule: String,
        /// The parser's explanation.
        message: String,
    },
    /// Bad input from a caller.
    #[error("{0}")]
    Invalid(String),
    /// Something that should exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// The audit log does not verify.
    #[error("audit log: {0}")]
    AuditBroken(String),
    /// A job failed.
    #[error("job: {0}")]
    Job(String),
    /// Password hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

//! The catalog: users, tenants, repositories, jobs, runs, the audit log and alert state, in
//! SQLite (a file in the state directory, the default) or PostgreSQL (`[catalog] url`, so that
//! several servers can share one catalog), through sqlx's `Any` driver. Migrations are embedded
//! in the binary and the same files serve both databases; queries are plain strings with `$n`
//! placeholders (no compile-time checking against a database), in the SQL both accept:
//! BIGINT for every integer (PostgreSQL's INTEGER is 32 bits), 0/1 flags instead of booleans,
//! `ON CONFLICT` instead of `INSERT OR …`, no `last_insert_rowid()`, no SUM/AVG (NUMERIC on
//! PostgreSQL, which `Any` cannot decode) without a cast. The few places where the two differ
//! (how a writing transaction starts) go through [`begin_write`] and [`lock_audit`].

use std::path::Path;
use std::time::Duration;

use rand::RngCore;
use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, Executor, Transaction};

use crate::config::CatalogConfig;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// The catalog's connection pool.
pub type Pool = sqlx::AnyPool;

/// One row of a query's result.
pub type Row = sqlx::any::AnyRow;

/// The environment variable that may hold the PostgreSQL password.
pub const PASSWORD_ENV: &str = "LIFEBOAT_CATALOG_PASSWORD";

/// Which database holds the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `catalog.db` in the state directory: one server.
    Sqlite,
    /// A PostgreSQL database, possibly shared by several servers.
    Postgres,
}

/// The backend behind `pool`.
pub fn backend(pool: &Pool) -> Backend {
    match pool.connect_options().database_url.scheme() {
        "sqlite" => Backend::Sqlite,
        _ => Backend::Postgres,
    }
}

/// Opens (creating if needed) the catalog `config` names and applies migrations.
pub async fn open(config: &CatalogConfig, state: &StateDir) -> Result<Pool> {
    sqlx::any::install_default_drivers();
    let pool = match &config.url {
        None => open_sqlite(&state.catalog_path()).await?,
        Some(url) => open_postgres(url, config.password_file.as_deref()).await?,
    };
    // On PostgreSQL, sqlx holds an advisory lock while it migrates, so two servers starting
    // at once do not both apply a migration.
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Where the catalog is, for log lines: never a password.
pub fn describe(config: &CatalogConfig, state: &StateDir) -> String {
    match &config.url {
        None => state.catalog_path().display().to_string(),
        Some(url) => redact(url),
    }
}

/// `url` with its password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        // Unparseable: it may still hold a password, so show nothing of it.
        Err(_) => "(an unparseable URL)".to_owned(),
    }
}

async fn open_sqlite(path: &Path) -> Result<Pool> {
    // The Any driver opens SQLite from a URL, which cannot carry the pragmas below; they are set
    // on each new connection instead. A relative path would be read as a URL's host.
    let path = std::path::absolute(path).map_err(|e| Error::io("cannot resolve", path, e))?;
    let url = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .to_url_lossy();
    let options = AnyConnectOptions::from_url(&url)?;
    Ok(AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000;",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?)
}

async fn open_postgres(url: &str, password_file: Option<&Path>) -> Result<Pool> {
    let config_error = |message: String| Error::Config {
        path: "(catalog.url)".into(),
        message,
    };
    let mut parsed =
        url::Url::parse(url).map_err(|e| config_error(format!("{}: {e}", redact(url))))?;
    let password = match password_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| Error::io("cannot read the catalog password", file, e))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
    };
    if let Some(password) = password {
        // set_password percent-encodes; sqlx decodes it again.
        parsed
            .set_password(Some(&password))
            .map_err(|()| config_error(format!("{} cannot carry a password", redact(url))))?;
    }
    let options = AnyConnectOptions::from_url(&parsed)?;
    Ok(AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?)
}

/// Begins a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes fails at once with
/// SQLITE_BUSY if another connection wrote in between; this way it waits its turn. PostgreSQL
/// locks rows as they are written; callers that need more take it explicitly.
pub async fn begin_write(pool: &Pool) -> Result<Transaction<'static, Any>> {
    Ok(match backend(pool) {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => pool.begin().await?,
    })
}

/// Makes `tx` the only writer of the audit log until it ends, across every server sharing the
/// catalog: the chain needs each append to read the newest row and write the next without
/// another append in between. SQLite has one writer already ([`begin_write`]); PostgreSQL
/// takes a table lock that readers pass but other writers wait for.
pub async fn lock_audit(tx: &mut Transaction<'static, Any>) -> Result<()> {
    if tx.backend_name() != "SQLite" {
        sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A new random object id: 128 bits, hex. Ids are unguessable so that they reveal nothing about
/// how many objects exist; isolation does not depend on it (every query filters by tenant).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

//! The catalog: users, tenants, repositories, jobs, runs, the audit log and alert state, in
//! SQLite through sqlx. Migrations are embedded in the binary; queries are plain strings with
//! `$n` placeholders (no compile-time checking against a database), written in SQL that
//! PostgreSQL also accepts so that a PostgreSQL catalog can follow.

use std::str::FromStr;
use std::time::Duration;

use rand::RngCore;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::Result;
use crate::state::StateDir;

/// The catalog's connection pool.
pub type Pool = sqlx::SqlitePool;

/// Opens (creating if needed) the SQLite catalog in the state directory and applies migrations.
pub async fn open(state: &StateDir) -> Result<Pool> {
    let path = state.catalog_path();
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
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

//! Entry points for the command line: each builds its own tokio runtime, so the `lifeboat`
//! binary needs no async code. `serve` runs until SIGINT or SIGTERM; the others work on the
//! state directory of a stopped or running server (its catalog serialises writers: SQLite has
//! one, and audit appends lock the log on PostgreSQL too). They open the catalog the
//! configuration names, so with `[catalog] url` they work on the PostgreSQL catalog.

use std::io::Write;
use std::path::Path;

use crate::audit::{self, Event, Verification};
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::password::PasswordHasher;
use crate::server::RunningServer;
use crate::state::StateDir;
use crate::{catalog, identity};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", "(runtime)", e))
}

/// Runs the server until SIGINT or SIGTERM; `ready` is called once it listens.
pub fn serve(
    config: ServerConfig,
    state_dir: &Path,
    ready: impl FnOnce(&RunningServer),
) -> Result<()> {
    runtime()?.block_on(async {
        let server = crate::server::start(config, state_dir).await?;
        ready(&server);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| Error::io("cannot handle SIGTERM", "(signal)", e))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping");
        server.shutdown().await;
        Ok(())
    })
}

async fn open_existing(
    config: &ServerConfig,
    state_dir: &Path,
) -> Result<(StateDir, catalog::Pool)> {
    let state = StateDir::open(state_dir)?;
    if config.catalog.url.is_none() && !state.catalog_path().exists() {
        return Err(Error::NotFound(format!(
            "catalog {} (is --state-dir the server's state directory?)",
            state.catalog_path().display()
        )));
    }
    let pool = catalog::open(&config.catalog, &state).await?;
    Ok((state, pool))
}

/// Verifies the audit chain.
pub fn verify_audit(config: &ServerConfig, state_dir: &Path) -> Result<Verification> {
    runtime()?.block_on(async {
        let (state, pool) = open_existing(config, state_dir).await?;
        let verification = audit::verify(&pool, &state).await;
        pool.close().await;
        verification
    })
}

/// Writes the audit log (of one tenant, or all) as JSON lines.
pub fn export_audit(
    config: &ServerConfig,
    state_dir: &Path,
    tenant_id: Option<&str>,
    out: impl Write,
) -> Result<usize> {
    runtime()?.block_on(async {
        let (_, pool) = open_existing(config, state_dir).await?;
        let records = audit::records(&pool, tenant_id).await?;
        pool.close().await;
        audit::write_json_lines(&records, out)
            .map_err(|e| Error::io("cannot write", "(output)", e))?;
        Ok(records.len())
    })
}

/// Ends every session and revokes every API token; recorded in the audit log.
pub fn revoke_all(config: &ServerConfig, state_dir: &Path) -> Result<(u64, u64)> {
    runtime()?.block_on(async {
        let (state, pool) = open_existing(config, state_dir).await?;
        let counts = identity::revoke_all(&pool).await?;
        audit::AuditLog::open(&state)?
            .append(
                &pool,
                Event::new("system:cli", "revoke-all", "local")
                    .detail(serde_json::json!({ "sessions": counts.0, "tokens": counts.1 })),
            )
            .await?;
        pool.close().await;
        Ok(counts)
    })
}

/// Forces a password reset: a new one-time password (returned), sessions ended, tokens revoked.
pub fn reset_password(state_dir: &Path, config: &ServerConfig, username: &str) -> Result<String> {
    runtime()?.block_on(async {
        let (state, pool) = open_existing(config, state_dir).await?;
        let hasher = tokio::task::block_in_place(|| PasswordHasher::new(&config.passwords))?;
        let password = identity::force_reset(&pool, &hasher, username).await?;
        audit::AuditLog::open(&state)?
            .append(
                &pool,
                Event::new("system:cli", "password.reset", "local").target(username),
            )
            .await?;
        pool.close().await;
        Ok(password)
    })
}

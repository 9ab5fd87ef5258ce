//! `lifeboat serve`, `lifeboat audit …` and `lifeboat admin …`: thin glue over
//! `lifeboat_server`, which does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_server::ServerConfig;

/// Where the server keeps its state, and its configuration file.
#[derive(Args, Debug, Clone)]
pub struct ServerDirArgs {
    /// The server's state directory (catalog, keys, certificate). Default: the configuration's
    /// `state_dir`, else `$XDG_STATE_HOME/lifeboat/server` or `~/.local/state/lifeboat/server`.
    #[arg(long, env = "LIFEBOAT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The server's configuration file (TOML; see docs/server.md). Without it, embedded defaults.
    #[arg(long, env = "LIFEBOAT_SERVER_CONFIG")]
    server_config: Option<PathBuf>,
    /// The catalog's PostgreSQL URL (`postgres://user@host:port/db`), overriding the
    /// configuration's `[catalog] url`. Give the password in `LIFEBOAT_CATALOG_PASSWORD` or the
    /// configuration's `password_file` rather than in the URL. Default: SQLite in the state
    /// directory.
    #[arg(long, env = "LIFEBOAT_CATALOG_URL")]
    catalog_url: Option<String>,
}

impl ServerDirArgs {
    fn resolve(&self) -> Result<(ServerConfig, PathBuf)> {
        let mut config = match &self.server_config {
            Some(path) => ServerConfig::load(path)?,
            None => ServerConfig::default(),
        };
        if let Some(url) = &self.catalog_url {
            config.catalog.url = Some(url.clone());
            config
                .validate()
                .map_err(|message| anyhow::anyhow!("--catalog-url: {message}"))?;
        }
        let state_dir = match (&self.state_dir, &config.state_dir) {
            (Some(dir), _) | (None, Some(dir)) => dir.clone(),
            (None, None) => default_state_dir()?,
        };
        Ok((config, state_dir))
    }
}

fn default_state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("lifeboat/server"));
    }
    let home = std::env::var_os("HOME").context("no HOME: give --state-dir")?;
    Ok(PathBuf::from(home).join(".local/state/lifeboat/server"))
}

/// `lifeboat serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    dirs: ServerDirArgs,
}

/// `lifeboat audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the audit log's hash chain; names every row that was edited, deleted or moved.
    Verify(ServerDirArgs),
    /// Print the audit log as JSON lines.
    Export {
        #[command(flatten)]
        dirs: ServerDirArgs,
    },
}

/// `lifeboat admin …`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// End every session and revoke every API token (breach response).
    RevokeAll(ServerDirArgs),
    /// Give a user a new one-time password that must be changed at the next login; ends its
    /// sessions and revokes its tokens.
    ResetPassword {
        #[command(flatten)]
        dirs: ServerDirArgs,
        /// The user name.
        username: String,
    },
}

pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let (config, state_dir) = args.dirs.resolve()?;
    lifeboat_server::offline::serve(config, &state_dir, |server| {
        let url = format!("https://{}", server.https_addr);
        eprintln!(
            "lifeboat serve: listening on {url} (state in {}, catalog {})",
            state_dir.display(),
            server.catalog
        );
        if let Some(http) = server.http_addr {
            eprintln!("plain HTTP on http://{http} redirects to HTTPS");
        }
        if let Some(password) = &server.setup_password {
            eprintln!(
                "\nFirst start: created user `admin` with the one-time password\n\n    {password}\n\n\
                 Sign in (POST {url}/api/v1/login) and set a new password (POST /api/v1/me/password);\n\
                 nothing else is allowed until then. This password is shown only now."
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn audit(command: &AuditCommand, json: bool, tenant: Option<&str>) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify(dirs) => {
            let (config, state_dir) = dirs.resolve()?;
            let verification = lifeboat_server::offline::verify_audit(&config, &state_dir)?;
            if json {
                let problems: Vec<_> = verification
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({ "row": p.seq, "problem": p.message }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "rows": verification.rows, "problems": problems })
                );
            } else {
                for problem in &verification.problems {
                    println!("{problem}");
                }
            }
            if verification.problems.is_empty() {
                if !json {
                    println!("audit log intact: {} rows", verification.rows);
                }
                Ok(ExitCode::SUCCESS)
            } else {
                bail!(
                    "the audit log was tampered with: {} problem(s) in {} rows",
                    verification.problems.len(),
                    verification.rows
                )
            }
        }
        AuditCommand::Export { dirs } => {
            let (config, state_dir) = dirs.resolve()?;
            lifeboat_server::offline::export_audit(
                &config,
                &state_dir,
                tenant,
                std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn admin(command: &AdminCommand) -> Result<ExitCode> {
    match command {
        AdminCommand::RevokeAll(dirs) => {
            let (config, state_dir) = dirs.resolve()?;
            let (sessions, tokens) = lifeboat_server::offline::revoke_all(&config, &state_dir)?;
            println!("ended {sessions} session(s), revoked {tokens} token(s)");
        }
        AdminCommand::ResetPassword { dirs, username } => {
            let (config, state_dir) = dirs.resolve()?;
            let password = lifeboat_server::offline::reset_password(&state_dir, &config, username)?;
            println!(
                "one-time password for {username} (must be changed at the next login):\n{password}"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The server's configuration: a TOML file whose every field has a default, so `lifeboat serve`
//! runs with no file at all. See `docs/server.md` for the reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Everything `lifeboat serve` can be told.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the catalog, keys and certificate live. `None`: the caller's default.
    pub state_dir: Option<PathBuf>,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// Certificate and key; generated on first start when absent.
    pub tls: TlsConfig,
    /// Session lifetimes.
    pub sessions: SessionConfig,
    /// Backoff after failed logins.
    pub login: LoginConfig,
    /// Password hashing costs and policy.
    pub passwords: PasswordConfig,
    /// Alert delivery.
    pub alerts: AlertConfig,
    /// What tenants' operators may point repositories and backup jobs at.
    pub jobs: JobsConfig,
    /// Where the catalog lives: SQLite in the state directory, or a PostgreSQL database.
    pub catalog: CatalogConfig,
}

/// The catalog's database. Without `url`, the SQLite file `catalog.db` in the state directory.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// `postgres://user@host:port/database` (options such as `?sslmode=require` pass through).
    /// A password may be given inline, but `password_file` or `LIFEBOAT_CATALOG_PASSWORD`
    /// keep it out of the configuration file.
    pub url: Option<String>,
    /// A file holding the PostgreSQL password (one line; surrounding whitespace is ignored).
    pub password_file: Option<PathBuf>,
}

// Hand-written so that a password inline in the URL never reaches a log line.
impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("url", &self.url.as_deref().map(crate::catalog::redact))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Limits on what operators (not admins) may configure, so that a tenant cannot use the
/// server's own access to read or write outside its share.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Paths below which operators' backup jobs may read (`/srv/backup-sources`). Empty: only
    /// admins create backup jobs.
    pub backup_roots: Vec<std::path::PathBuf>,
    /// Locations below which operators may register repositories: directories
    /// (`/srv/repositories`) or URL prefixes (`s3:https://s3.example.net/bucket/tenants`).
    /// Empty: only admins register repositories.
    pub repository_roots: Vec<String>,
}

/// Where to listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The HTTPS API.
    pub https: SocketAddr,
    /// Plain HTTP that only redirects to HTTPS (`None`, or `http_redirect = false`, disables it).
    pub http: Option<SocketAddr>,
    /// Whether to listen on `http` at all.
    pub http_redirect: bool,
    /// The URL clients use to reach the HTTPS port (`https://backup.example.com:8443`); used for
    /// redirects and the setup link. Default: the request's host name and the HTTPS port.
    pub public_url: Option<String>,
}

/// TLS certificate source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key`; without both, a self-signed certificate is generated
    /// in the state directory on first start.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Extra host names for the generated certificate (`localhost` and the listen address are
    /// always included).
    pub hostnames: Vec<String>,
}

/// Session lifetimes, in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session unused this long ends.
    pub idle_timeout_secs: u64,
    /// A session ends this long after login, used or not.
    pub absolute_timeout_secs: u64,
}

/// Login backoff. After `*_free_failures` failures, each further attempt must wait: first
/// `*_first_delay_secs`, then twice as long after each further failure, up to
/// `*_max_delay_secs`. Failures are forgotten after `forget_after_secs` without one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failures of one account allowed without delay.
    pub account_free_failures: u32,
    /// First delay imposed on one account.
    pub account_first_delay_secs: u64,
    /// Longest delay imposed on one account: this bounds how long an attacker can keep its
    /// owner out.
    pub account_max_delay_secs: u64,
    /// Failures from one source address allowed without delay.
    pub ip_free_failures: u32,
    /// First delay imposed on one source address.
    pub ip_first_delay_secs: u64,
    /// Longest delay imposed on one source address.
    pub ip_max_delay_secs: u64,
    /// Failures older than this are forgotten.
    pub forget_after_secs: u64,
}

/// Password hashing (argon2id) and policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    /// Memory cost in KiB (OWASP minimum: 19456).
    pub argon2_memory_kib: u32,
    /// Passes (OWASP minimum with 19 MiB: 2).
    pub argon2_iterations: u32,
    /// Lanes.
    pub argon2_parallelism: u32,
    /// Shortest password accepted, in characters (at least 12).
    pub min_length: usize,
}

/// Where alerts go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// A webhook taking Slack-compatible JSON (`{"text": ...}`).
    pub webhook_url: Option<String>,
    /// An SMTP server for alert e-mails, as a URL: `smtp://host:587` (STARTTLS required),
    /// `smtps://host:465` (TLS), `smtp://user:password@host:587`, or
    /// `smtp://127.0.0.1:25?tls=none` for a relay on the same machine only.
    pub smtp_url: Option<String>,
    /// The sender of alert e-mails, e.g. `Lifeboat <lifeboat@example.com>`.
    pub email_from: Option<String>,
    /// The recipients of alert e-mails.
    pub email_to: Vec<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            https: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            http_redirect: true,
            public_url: None,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout_secs: 30 * 60,
            absolute_timeout_secs: 12 * 3600,
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            account_free_failures: 5,
            account_first_delay_secs: 5,
            account_max_delay_secs: 60,
            ip_free_failures: 20,
            ip_first_delay_secs: 5,
            ip_max_delay_secs: 15 * 60,
            forget_after_secs: 15 * 60,
        }
    }
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            min_length: 12,
        }
    }
}

impl ServerConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| Error::Config {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let p = &self.passwords;
        if p.argon2_memory_kib < 19 * 1024 || p.argon2_iterations < 2 || p.argon2_parallelism < 1 {
            return Err("passwords: argon2 costs below OWASP's minimum (argon2_memory_kib = 19456, argon2_iterations = 2, argon2_parallelism = 1)".into());
        }
        if p.min_length < 12 {
            return Err("passwords.min_length must be at least 12".into());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(
                "tls: give both cert and key, or neither to generate a self-signed certificate"
                    .into(),
            );
        }
        let a = &self.alerts;
        if a.smtp_url.is_some() && (a.email_from.is_none() || a.email_to.is_empty()) {
            return Err(
                "alerts: smtp_url needs email_from and at least one address in email_to".into(),
            );
        }
        let l = &self.login;
        if l.account_free_failures == 0
            || l.ip_free_failures == 0
            || l.account_first_delay_secs == 0
            || l.ip_first_delay_secs == 0
            || l.account_max_delay_secs < l.account_first_delay_secs
            || l.ip_max_delay_secs < l.ip_first_delay_secs
        {
            return Err("login: free failures and first delays must be positive, and each max delay at least its first delay".into());
        }
        if self.sessions.idle_timeout_secs == 0
            || self.sessions.absolute_timeout_secs < self.sessions.idle_timeout_secs
        {
            return Err(
                "sessions: idle_timeout_secs must be positive and at most absolute_timeout_secs"
                    .into(),
            );
        }
        if let Some(url) = &self.catalog.url {
            let scheme = url.split(':').next().unwrap_or("");
            if !matches!(scheme, "postgres" | "postgresql") {
                return Err(format!(
                    "catalog.url must be a postgres:// URL (without it the catalog is SQLite in the state directory), not {}",
                    crate::catalog::redact(url)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_typos_are_refused() {
        let config: ServerConfig = toml::from_str("").unwrap();
        assert_eq!(config.passwords.argon2_memory_kib, 19456);
        assert!(config.validate().is_ok());
        assert!(toml::from_str::<ServerConfig>("[listen]\nhttps_port = 1").is_err());
        let weak: ServerConfig = toml::from_str("[passwords]\nargon2_iterations = 1").unwrap();
        assert!(weak.validate().is_err());
        let mysql: ServerConfig = toml::from_str("[catalog]\nurl = \"mysql://a@b/c\"").unwrap();
        assert!(mysql.validate().is_err());
    }

    #[test]
    fn a_password_in_the_catalog_url_is_not_printed() {
        let config: ServerConfig =
            toml::from_str("[catalog]\nurl = \"postgres://lb:hunter2secret@db:5432/lifeboat\"")
                .unwrap();
        assert!(config.validate().is_ok());
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2secret"), "{printed}");
        assert!(
            printed.contains("postgres://lb:***@db:5432/lifeboat"),
            "{printed}"
        );
    }
}

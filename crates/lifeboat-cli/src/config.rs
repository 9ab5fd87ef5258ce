//! The configuration file: defaults for flags, so that a plain `lifeboat backup` or
//! `lifeboat forget` does the right thing on a configured machine.
//!
//! Precedence, highest first: command-line flags, environment variables, this file, built-in
//! defaults. Clap already merges flags and environment; values from the file only fill what
//! both left unset (lists such as excludes are added to).
//!
//! ```toml
//! repository = "/var/backups/lifeboat"
//! password_file = "/etc/lifeboat/password"     # or password_command = "pass show lifeboat"
//!
//! [backup]
//! excludes = ["*.tmp", "/srv/app/cache"]
//! exclude_caches = true
//! one_file_system = true
//!
//! [forget]                                      # applied by `lifeboat forget` without flags
//! keep_daily = 30
//! keep_weekly = "forever"
//! keep_within = "7d"
//!
//! [sqlite]                                      # `lifeboat sqlite replicate` without arguments
//! databases = ["/srv/app/app.db"]
//! interval = "1s"
//! snapshot_interval = "1h"
//!
//! [[sqlite.destinations]]                       # default: the repository above
//! repository = "/var/backups/lifeboat"
//!
//! [[sqlite.destinations]]
//! repository = "s3:https://s3.example.net/backups/app"
//! password_file = "/etc/lifeboat/s3.password"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Contents of the configuration file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Repository location.
    pub repository: Option<String>,
    /// Password file.
    pub password_file: Option<PathBuf>,
    /// Password command.
    pub password_command: Option<String>,
    /// Backup defaults.
    #[serde(default)]
    pub backup: BackupSection,
    /// Retention policy for `forget` without `--keep-*` flags.
    #[serde(default)]
    pub forget: ForgetSection,
    /// Settings of `prune` (and `forget --prune`) that its flags leave unset.
    #[serde(default)]
    pub prune: PruneSection,
    /// The SQLite replication job: what `lifeboat sqlite replicate` runs without arguments.
    #[serde(default)]
    pub sqlite: SqliteSection,
}

/// `[sqlite]`: databases, destinations and settings of `lifeboat sqlite replicate` (flags win;
/// intervals in the flags' forms, e.g. `interval = "1s"`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSection {
    /// Databases replicated when the command line names none.
    #[serde(default)]
    pub databases: Vec<PathBuf>,
    /// Repositories to replicate into when the command line names none (neither `--repo`
    /// nor `--to`); without any, the top-level `repository`.
    #[serde(default)]
    pub destinations: Vec<SqliteDestination>,
    pub interval: Option<String>,
    pub snapshot_interval: Option<String>,
    pub checkpoint_frames: Option<u64>,
    pub max_lag_mib: Option<u64>,
    pub spool_dir: Option<PathBuf>,
    pub status_file: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `[[sqlite.destinations]]`: one repository and where its password comes from (default: the
/// top-level password source).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteDestination {
    pub repository: String,
    pub password_file: Option<PathBuf>,
    /// Not shown by `config show`: a command line may carry a secret.
    #[serde(skip_serializing)]
    pub password_command: Option<String>,
}

/// `[prune]`: the same forms as the flags, e.g. `max_unused = "5%"`, `grace = "1h"`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneSection {
    pub max_unused: Option<String>,
    pub max_repack_size: Option<String>,
    pub grace: Option<String>,
}

/// `[backup]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Exclude patterns, added to those on the command line.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Marker files whose directories are skipped.
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    /// Skip CACHEDIR.TAG directories.
    #[serde(default)]
    pub exclude_caches: bool,
    /// Stay on one filesystem.
    #[serde(default)]
    pub one_file_system: bool,
}

/// A count in the file: a number or "forever".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CountValue {
    /// A number of periods.
    Number(u32),
    /// "forever".
    Word(String),
}

/// `[forget]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetSection {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<CountValue>,
    pub keep_daily: Option<CountValue>,
    pub keep_weekly: Option<CountValue>,
    pub keep_monthly: Option<CountValue>,
    pub keep_yearly: Option<CountValue>,
    pub keep_within: Option<String>,
    pub keep_within_hourly: Option<String>,
    pub keep_within_daily: Option<String>,
    pub keep_within_weekly: Option<String>,
    pub keep_within_monthly: Option<String>,
    pub keep_within_yearly: Option<String>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

/// The default location: `$XDG_CONFIG_HOME/lifeboat/config.toml` or `~/.config/lifeboat/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("lifeboat").join("config.toml"))
}

/// Loads the file named with `--config` (which must exist) or the default one (if it exists).
pub fn load(explicit: Option<&Path>) -> Result<(ConfigFile, Option<PathBuf>)> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match default_path().filter(|p| p.exists()) {
            Some(path) => path,
            None => return Ok((ConfigFile::default(), None)),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let config = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid", path.display()))?;
    Ok((config, Some(path)))
}

//! Repositories and jobs of a tenant, their runs, and what a run does.
//!
//! Every query takes the tenant id as well as the object id, so an id of another tenant's
//! object finds nothing (the API answers 404). Repository passwords are sealed with the server
//! key ([`crate::secrets`]), bound to the repository's id.
//!
//! A run calls the library crates (`lifeboat_files::backup`, `lifeboat_repo::check`,
//! retention, `lifeboat_postgres::base_backup`) on a blocking thread; it never shells out
//! (a PostgreSQL base backup talks to the server through `psql`, as the library does).
//! A `sqlite-replicate` job is continuous: it has no schedule and no runs of this kind; the
//! supervisor in [`crate::replication`] keeps it running.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use lifeboat_repo::retention::{self, Count, GroupBy, KeepPolicy, Period};
use lifeboat_repo::{InitOptions, KdfParams, Repository};
use lifeboat_storage::Storage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::catalog::{Pool, new_id, now_millis};
use crate::error::{Error, Result};
use crate::scheduler::parse_schedule;
use crate::secrets::Sealer;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Back up files ([`BackupOptions`]).
    Backup,
    /// Verify the repository ([`CheckOptions`]).
    Check,
    /// Apply a retention policy ([`ForgetOptions`]).
    Forget,
    /// Copy snapshots to a second repository of the tenant ([`CopyJobOptions`]).
    Copy,
    /// Free unused space, two-phase and without stopping backups ([`PruneJobOptions`]).
    Prune,
    /// A PostgreSQL base backup ([`PgBackupOptions`]).
    PgBackup,
    /// Continuous replication of a SQLite database ([`SqliteReplicateOptions`]): not
    /// scheduled but kept running by [`crate::replication`].
    SqliteReplicate,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Check => "check",
            JobKind::Forget => "forget",
            JobKind::Copy => "copy",
            JobKind::Prune => "prune",
            JobKind::PgBackup => "pg-backup",
            JobKind::SqliteReplicate => "sqlite-replicate",
        }
    }

    /// True for a job that runs all the time instead of on a schedule.
    pub fn is_continuous(self) -> bool {
        self == JobKind::SqliteReplicate
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Result<JobKind> {
        match name {
            "backup" => Ok(JobKind::Backup),
            "check" => Ok(JobKind::Check),
            "forget" => Ok(JobKind::Forget),
            "copy" => Ok(JobKind::Copy),
            "prune" => Ok(JobKind::Prune),
            "pg-backup" => Ok(JobKind::PgBackup),
            "sqlite-replicate" => Ok(JobKind::SqliteReplicate),
            other => Err(Error::Invalid(format!(
                "unknown job kind {other:?}: use backup, check, forget, copy, prune, pg-backup or sqlite-replicate"
            ))),
        }
    }
}

/// Options of a backup job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupOptions {
    /// Paths on the server to back up.
    pub paths: Vec<PathBuf>,
    /// Exclude patterns.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Snapshot tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Options of a check job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckOptions {
    /// Percentage of pack data to read and verify (0: structure only).
    #[serde(default)]
    pub read_data_percent: f64,
}

/// Options of a copy job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyJobOptions {
    /// The destination: a repository of the same tenant created with
    /// `copy_content_keys_from` the job's repository.
    pub to_repository_id: String,
}

/// Options of a forget job: how many of each period to keep.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetOptions {
    /// Keep the N newest.
    pub keep_last: Option<u32>,
    /// Keep one per hour for N hours.
    pub keep_hourly: Option<u32>,
    /// Keep one per day for N days.
    pub keep_daily: Option<u32>,
    /// Keep one per week for N weeks.
    pub keep_weekly: Option<u32>,
    /// Keep one per month for N months.
    pub keep_monthly: Option<u32>,
    /// Keep one per year for N years.
    pub keep_yearly: Option<u32>,
}

/// Options of a prune job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneJobOptions {
    /// Unused space tolerated, in percent of the space in use (default 5).
    #[serde(default = "default_max_unused_percent")]
    pub max_unused_percent: f64,
    /// Seconds marked packs wait before a later run deletes them (default 3600, at least 10).
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
}

/// Options of a pg-backup job: what `lifeboat pg base-backup` takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBackupOptions {
    /// libpq connection string or URI (`host=/run/postgresql dbname=postgres`); empty or
    /// absent: libpq's defaults and the server process's PG* variables.
    #[serde(default)]
    pub connect: Option<String>,
    /// The psql program (absolute; default `psql` from `PATH`). Admins only: it is a program
    /// the server runs.
    #[serde(default)]
    pub psql: Option<PathBuf>,
    /// The data directory as the Lifeboat server sees it (absolute; default: the
    /// PostgreSQL server's `data_directory`). Operators must give it, below
    /// `jobs.backup_roots`.
    #[serde(default)]
    pub pgdata: Option<PathBuf>,
    /// Snapshot tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Options of a sqlite-replicate job: what `lifeboat sqlite replicate` takes, for one
/// database into the job's repository and any more of its tenant's repositories.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteReplicateOptions {
    /// The database file (absolute; in WAL mode).
    pub database: PathBuf,
    /// How often new transactions are shipped, in milliseconds (default 1000).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How often a whole-database snapshot is taken, in seconds (default 3600).
    #[serde(default = "default_snapshot_interval_secs")]
    pub snapshot_interval_secs: u64,
    /// Checkpoint (PASSIVE) once the WAL holds this many frames (default 1000).
    #[serde(default = "default_checkpoint_frames")]
    pub checkpoint_frames: u64,
    /// MiB of WAL held on local disk for a repository that does not answer, before it is
    /// released and later resyncs with a new generation (default 1024; 0: no limit).
    #[serde(default = "default_max_lag_mib")]
    pub max_lag_mib: u64,
    /// Directory for the temporary copy a snapshot is read from (absolute).
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Snapshot tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// More repositories of the job's tenant to replicate into besides the job's own, each
    /// with its own queue and lag: one that is down does not hold back the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_to_repository_ids: Vec<String>,
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_snapshot_interval_secs() -> u64 {
    3600
}
fn default_checkpoint_frames() -> u64 {
    1000
}
fn default_max_lag_mib() -> u64 {
    1024
}

impl SqliteReplicateOptions {
    /// The library's options.
    pub fn replicate_options(&self) -> lifeboat_sqlite::ReplicateOptions {
        lifeboat_sqlite::ReplicateOptions {
            interval: std::time::Duration::from_millis(self.interval_ms),
            snapshot_interval: std::time::Duration::from_secs(self.snapshot_interval_secs),
            checkpoint_frames: self.checkpoint_frames,
            max_lag_bytes: (self.max_lag_mib > 0).then_some(self.max_lag_mib << 20),
            spool_dir: self.spool_dir.clone(),
            hostname: gethostname(),
            username: "lifeboat-server".into(),
            tags: self.tags.clone(),
            ..Default::default()
        }
    }
}

fn default_max_unused_percent() -> f64 {
    5.0
}

fn default_grace_secs() -> u64 {
    lifeboat_repo::prune::DEFAULT_GRACE.as_secs()
}

impl ForgetOptions {
    fn policy(&self) -> KeepPolicy {
        let mut periods = BTreeMap::new();
        for (period, count) in [
            (Period::Hourly, self.keep_hourly),
            (Period::Daily, self.keep_daily),
            (Period::Weekly, self.keep_weekly),
            (Period::Monthly, self.keep_monthly),
            (Period::Yearly, self.keep_yearly),
        ] {
            if let Some(n) = count {
                periods.insert(period, Count::Last(n));
            }
        }
        KeepPolicy {
            last: self.keep_last,
            periods,
            ..KeepPolicy::default()
        }
    }
}

/// Checks that `options` fit `kind`.
pub fn validate_options(kind: JobKind, options: &serde_json::Value) -> Result<()> {
    let bad =
        |e: serde_json::Error| Error::Invalid(format!("options of a {} job: {e}", kind.as_str()));
    match kind {
        JobKind::Backup => {
            let o: BackupOptions = serde_json::from_value(options.clone()).map_err(bad)?;
            if o.paths.is_empty() || o.paths.iter().any(|p| !p.is_absolute()) {
                return Err(Error::Invalid(
                    "a backup job needs `paths`: absolute paths on the server".into(),
                ));
            }
        }
        JobKind::Check => {
            let o: CheckOptions = serde_json::from_value(options.clone()).map_err(bad)?;
            if !(0.0..=100.0).contains(&o.read_data_percent) {
                return Err(Error::Invalid(
                    "read_data_percent is between 0 and 100".into(),
                ));
            }
        }
        JobKind::Forget => {
            let o: ForgetOptions = serde_json::from_value(options.clone()).map_err(bad)?;
            if o.policy().is_empty() {
                return Err(Error::Invalid(
                    "a forget job needs at least one keep_* rule: it would remove every snapshot"
                        .into(),
                ));
            }
        }
        JobKind::Copy => {
            serde_json::from_value::<CopyJobOptions>(options.clone()).map_err(bad)?;
        }
        JobKind::Prune => {
            let o: PruneJobOptions = serde_json::from_value(options.clone()).map_err(bad)?;
            if o.grace_secs < lifeboat_repo::prune::MIN_GRACE.as_secs() {
                return Err(Error::Invalid(format!(
                    "grace_secs is at least {}: it is what keeps concurrent backups safe",
                    lifeboat_repo::prune::MIN_GRACE.as_secs()
                )));
            }
            if o.max_unused_percent.is_nan() || o.max_unused_percent < 0.0 {
                return Err(Error::Invalid("max_unused_percent is 0 or more".into()));
            }
        }
        JobKind::PgBackup => {
            let o: PgBackupOptions = serde_json::from_value(options.clone()).map_err(bad)?;
            for (name, path) in [("pgdata", &o.pgdata), ("psql", &o.psql)] {
                if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                    return Err(Error::Invalid(format!(
                        "{name} of a pg-backup job is an absolute path on the server"
                    )));
                }
            }
        }
        JobKind::SqliteReplicate => {
            let o: SqliteReplicateOptions = serde_json::from_value(options.clone()).map_err(bad)?;
            if !o.database.is_absolute() {
                return Err(Error::Invalid(
                    "a sqlite-replicate job needs `database`: an absolute path on the server"
                        .into(),
                ));
            }
            if o.spool_dir.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(Error::Invalid(
                    "spool_dir is an absolute path on the server".into(),
                ));
            }
            if !(10..=3_600_000).contains(&o.interval_ms) {
                return Err(Error::Invalid(
                    "interval_ms is 10 to 3600000 (one hour)".into(),
                ));
            }
            if o.snapshot_interval_secs < 1 || o.checkpoint_frames < 1 {
                return Err(Error::Invalid(
                    "snapshot_interval_secs and checkpoint_frames are at least 1".into(),
                ));
            }
        }
    }
    Ok(())
}

/// What an operator (not an admin) may not configure: every path a job reads lies below
/// `backup_roots`, and no job names a program for the server to run. `Err` says why.
pub fn operator_limits(
    kind: JobKind,
    options: &serde_json::Value,
    backup_roots: &[PathBuf],
) -> std::result::Result<(), String> {
    let within =
        |paths: &[PathBuf]| !paths.is_empty() && paths.iter().all(|p| path_within(p, backup_roots));
    let path = |name: &str| options[name].as_str().map(PathBuf::from);
    match kind {
        JobKind::Backup => {
            let paths: Vec<PathBuf> = options["paths"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|v| v.as_str().map(Into::into))
                        .collect()
                })
                .unwrap_or_default();
            if !within(&paths) {
                return Err("operators' backup jobs may read only below the server's jobs.backup_roots; ask an admin".into());
            }
        }
        JobKind::PgBackup => {
            if !options["psql"].is_null() {
                return Err("only admins choose the psql program a pg-backup job runs".into());
            }
            if !within(&path("pgdata").into_iter().collect::<Vec<_>>()) {
                return Err("operators' pg-backup jobs name their `pgdata`, below the server's jobs.backup_roots; ask an admin".into());
            }
        }
        JobKind::SqliteReplicate => {
            let mut paths: Vec<PathBuf> = path("database").into_iter().collect();
            paths.extend(path("spool_dir"));
            if !within(&paths) || (paths.len() == 1 && !options["spool_dir"].is_null()) {
                return Err("operators' sqlite-replicate jobs may use only paths below the server's jobs.backup_roots; ask an admin".into());
            }
        }
        JobKind::Check | JobKind::Forget | JobKind::Copy | JobKind::Prune => {}
    }
    Ok(())
}

/// A repository as listed (never its password).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RepositoryInfo {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Name, unique in the tenant.
    pub name: String,
    /// Storage location (path or URL).
    pub location: String,
    /// Created, ms since the epoch.
    pub created_at: i64,
}

fn repository_context(id: &str) -> String {
    format!("password of repository {id}")
}

/// What creating a repository needs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRepository {
    /// Name.
    pub name: String,
    /// Location.
    pub location: String,
    /// Repository password (sealed in the catalog).
    pub password: String,
    /// Initialise a new repository there instead of registering an existing one.
    #[serde(default)]
    pub init: bool,
    /// With `init`: share content keys with this repository of the tenant (its id), so that
    /// copy jobs between the two move only missing blobs.
    #[serde(default)]
    pub copy_content_keys_from: Option<String>,
    /// Cheap key derivation, for tests only (see `init --insecure-kdf-for-tests`).
    #[serde(default)]
    pub insecure_kdf_for_tests: bool,
}

/// Registers (and optionally initialises) a repository; the password is checked by opening it.
pub async fn create_repository(
    pool: &Pool,
    sealer: &Sealer,
    tenant_id: &str,
    new: NewRepository,
) -> Result<RepositoryInfo> {
    if new.name.is_empty() || new.name.len() > 100 {
        return Err(Error::Invalid(
            "a repository name has 1 to 100 characters".into(),
        ));
    }
    let location = new.location.clone();
    let password = Zeroizing::new(new.password.clone().into_bytes());
    let init = new.init;
    let insecure = new.insecure_kdf_for_tests;
    let keys_from = match &new.copy_content_keys_from {
        Some(id) if init => Some(
            repository_secret(pool, sealer, tenant_id, id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("repository {id}")))?,
        ),
        Some(_) => {
            return Err(Error::Invalid(
                "copy_content_keys_from needs init: true".into(),
            ));
        }
        None => None,
    };
    tokio::task::spawn_blocking(move || -> Result<()> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Invalid(format!("{what} repository at {location}: {e}"))
        };
        if init {
            let content_keys = match keys_from {
                Some((from, from_password)) => {
                    let storage =
                        Storage::open(&from).map_err(|e| fail("cannot reach the source", &e))?;
                    let source = Repository::open(storage, &from_password)
                        .map_err(|e| fail("cannot open the source", &e))?;
                    Some(source.config().content_keys.clone())
                }
                None => None,
            };
            let storage = Storage::create(&location)
                .map_err(|e| fail("cannot create storage for the", &e))?;
            let mut options = InitOptions {
                content_keys,
                ..InitOptions::default()
            };
            if insecure {
                options.kdf = KdfParams::insecure_for_tests();
            }
            Repository::init(storage, &password, &options)
                .map_err(|e| fail("cannot initialise the", &e))?;
        } else {
            let storage = Storage::open(&location).map_err(|e| fail("cannot reach the", &e))?;
            Repository::open(storage, &password).map_err(|e| fail("cannot open the", &e))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Job(e.to_string()))??;
    let id = new_id();
    let created_at = now_millis();
    sqlx::query("INSERT INTO repositories (id, tenant_id, name, location, password_sealed, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(tenant_id)
        .bind(&new.name)
        .bind(&new.location)
        .bind(sealer.seal(&repository_context(&id), new.password.as_bytes()))
        .bind(created_at)
        .execute(pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => Error::Invalid(format!("a repository named {:?} exists in this tenant", new.name)),
            e => e.into(),
        })?;
    Ok(RepositoryInfo {
        id,
        tenant_id: tenant_id.to_owned(),
        name: new.name,
        location: new.location,
        created_at,
    })
}

fn repository_from_row(row: &crate::catalog::Row) -> Result<RepositoryInfo> {
    Ok(RepositoryInfo {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        location: row.try_get("location")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A tenant's repositories.
pub async fn list_repositories(pool: &Pool, tenant_id: &str) -> Result<Vec<RepositoryInfo>> {
    let rows = sqlx::query("SELECT id, tenant_id, name, location, created_at FROM repositories WHERE tenant_id = $1 ORDER BY name")
        .bind(tenant_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(repository_from_row).collect()
}

/// One repository of a tenant.
pub async fn get_repository(
    pool: &Pool,
    tenant_id: &str,
    id: &str,
) -> Result<Option<RepositoryInfo>> {
    let row = sqlx::query("SELECT id, tenant_id, name, location, created_at FROM repositories WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(repository_from_row).transpose()
}

/// Removes a repository from the catalog (its storage is left alone). Refused while jobs use it.
pub async fn delete_repository(pool: &Pool, tenant_id: &str, id: &str) -> Result<bool> {
    let (jobs,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE tenant_id = $1 AND repository_id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_one(pool)
            .await?;
    if jobs > 0 {
        return Err(Error::Invalid(format!(
            "{jobs} job(s) use this repository: delete them first"
        )));
    }
    Ok(
        sqlx::query("DELETE FROM repositories WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Location and password of a tenant's repository.
pub async fn repository_secret(
    pool: &Pool,
    sealer: &Sealer,
    tenant_id: &str,
    id: &str,
) -> Result<Option<(String, Zeroizing<Vec<u8>>)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT location, password_sealed FROM repositories WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match row {
        None => Ok(None),
        Some((location, sealed)) => Ok(Some((
            location,
            sealer.open(&repository_context(id), &sealed)?,
        ))),
    }
}

/// A snapshot as listed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SnapshotInfo {
    /// Id (hex).
    pub id: String,
    /// Time (RFC 3339).
    pub time: String,
    /// Host.
    pub hostname: String,
    /// Paths.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
}

/// The snapshots of a repository (opens it with its sealed password).
pub fn list_snapshots(location: &str, password: &[u8]) -> Result<Vec<SnapshotInfo>> {
    let storage =
        Storage::open(location).map_err(|e| Error::Job(format!("cannot reach {location}: {e}")))?;
    let repo = Repository::open(storage, password)
        .map_err(|e| Error::Job(format!("cannot open {location}: {e}")))?;
    let entries = repo.snapshots().map_err(|e| Error::Job(e.to_string()))?;
    Ok(entries
        .into_iter()
        .map(|entry| SnapshotInfo {
            id: entry.id.to_string(),
            time: entry.snapshot.time.to_string(),
            hostname: entry.snapshot.hostname.clone(),
            paths: entry.snapshot.paths.clone(),
            tags: entry.snapshot.tags.clone(),
        })
        .collect())
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobInfo {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Repository it works on.
    pub repository_id: String,
    /// Name, unique in the tenant.
    pub name: String,
    /// Kind.
    pub kind: JobKind,
    /// Cron schedule (5 fields, or 6 with seconds first); [`CONTINUOUS`] for a continuous job.
    pub schedule: String,
    /// Kind-specific options.
    pub options: serde_json::Value,
    /// Scheduled runs happen only when enabled.
    pub enabled: bool,
    /// Retries after a failed attempt.
    pub max_retries: i64,
    /// First retry delay, doubled for each further one.
    pub retry_base_secs: i64,
    /// Next scheduled start, ms since the epoch.
    pub next_run_at: Option<i64>,
    /// Alert when no run succeeded for this many seconds.
    pub stale_after_secs: Option<i64>,
    /// Alert when replication is more than this many seconds behind (continuous jobs).
    pub lag_alert_secs: Option<i64>,
    /// Created, ms since the epoch.
    pub created_at: i64,
}

/// A job with what the scheduler knows of it now.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobDetail {
    /// The job.
    #[serde(flatten)]
    pub job: JobInfo,
    /// A run of it is in progress.
    pub running: bool,
}

/// The schedule of a continuous job.
pub const CONTINUOUS: &str = "@continuous";

/// What creating a job needs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: JobKind,
    /// Repository id (of the same tenant).
    pub repository_id: String,
    /// Cron schedule (absent, or [`CONTINUOUS`], for a continuous job).
    #[serde(default)]
    pub schedule: String,
    /// Options for the kind.
    #[serde(default)]
    pub options: serde_json::Value,
    /// Retries after a failure (default 2).
    #[serde(default = "default_retries")]
    pub max_retries: i64,
    /// First retry delay in seconds (default 30).
    #[serde(default = "default_retry_base")]
    pub retry_base_secs: i64,
    /// Alert when no run succeeded for this many seconds (e.g. 93600 for a daily backup).
    #[serde(default)]
    pub stale_after_secs: Option<i64>,
    /// Alert when a sqlite-replicate job is more than this many seconds behind.
    #[serde(default)]
    pub lag_alert_secs: Option<i64>,
}

fn default_retries() -> i64 {
    2
}
fn default_retry_base() -> i64 {
    30
}

const JOB_COLUMNS: &str = "id, tenant_id, repository_id, name, kind, schedule, options, enabled, max_retries, retry_base_secs, next_run_at, stale_after_secs, lag_alert_secs, created_at";

fn job_from_row(row: &crate::catalog::Row) -> Result<JobInfo> {
    let kind: String = row.try_get("kind")?;
    let options: String = row.try_get("options")?;
    Ok(JobInfo {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        repository_id: row.try_get("repository_id")?,
        name: row.try_get("name")?,
        kind: JobKind::parse(&kind)?,
        schedule: row.try_get("schedule")?,
        options: serde_json::from_str(&options)
            .map_err(|e| Error::Invalid(format!("stored options: {e}")))?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        max_retries: row.try_get("max_retries")?,
        retry_base_secs: row.try_get("retry_base_secs")?,
        next_run_at: row.try_get("next_run_at")?,
        stale_after_secs: row.try_get("stale_after_secs")?,
        lag_alert_secs: row.try_get("lag_alert_secs")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Creates a job after checking its schedule, options and repository.
pub async fn create_job(pool: &Pool, tenant_id: &str, mut new: NewJob) -> Result<JobInfo> {
    if new.name.is_empty() || new.name.len() > 100 {
        return Err(Error::Invalid("a job name has 1 to 100 characters".into()));
    }
    if !(0..=10).contains(&new.max_retries) || !(1..=86_400).contains(&new.retry_base_secs) {
        return Err(Error::Invalid(
            "max_retries is 0 to 10 and retry_base_secs 1 to 86400".into(),
        ));
    }
    if new.stale_after_secs.is_some_and(|s| s < 1) {
        return Err(Error::Invalid(
            "stale_after_secs is a positive number of seconds".into(),
        ));
    }
    if new.lag_alert_secs.is_some_and(|s| s < 1) {
        return Err(Error::Invalid(
            "lag_alert_secs is a positive number of seconds".into(),
        ));
    }
    if new.stale_after_secs.is_some() && new.kind.is_continuous() {
        return Err(Error::Invalid(
            "a sqlite-replicate job has no successful runs to be stale about: use lag_alert_secs"
                .into(),
        ));
    }
    if new.lag_alert_secs.is_some() && !new.kind.is_continuous() {
        return Err(Error::Invalid(
            "lag_alert_secs is for sqlite-replicate jobs; use stale_after_secs for scheduled ones"
                .into(),
        ));
    }
    let schedule = if new.kind.is_continuous() {
        if !new.schedule.is_empty() && new.schedule != CONTINUOUS {
            return Err(Error::Invalid(format!(
                "a {} job runs continuously: leave out `schedule` (or write {CONTINUOUS:?})",
                new.kind.as_str()
            )));
        }
        new.schedule = CONTINUOUS.to_owned();
        None
    } else {
        Some(parse_schedule(&new.schedule)?)
    };
    validate_options(new.kind, &new.options)?;
    if get_repository(pool, tenant_id, &new.repository_id)
        .await?
        .is_none()
    {
        return Err(Error::NotFound(format!("repository {}", new.repository_id)));
    }
    if new.kind == JobKind::SqliteReplicate {
        // Only the job's tenant's repositories: `get_repository` looks within the tenant.
        let mut seen = std::collections::HashSet::from([new.repository_id.clone()]);
        for id in sqlite_extra_destinations(&new.options)? {
            if !seen.insert(id.clone()) {
                return Err(Error::Invalid(format!(
                    "repository {id} is named twice among the job's destinations"
                )));
            }
            if get_repository(pool, tenant_id, &id).await?.is_none() {
                return Err(Error::NotFound(format!("repository {id}")));
            }
        }
    }
    if new.kind == JobKind::Copy {
        let to = copy_destination(&new.options)?;
        if to == new.repository_id {
            return Err(Error::Invalid(
                "a copy job copies to another repository".into(),
            ));
        }
        if get_repository(pool, tenant_id, &to).await?.is_none() {
            return Err(Error::NotFound(format!("repository {to}")));
        }
    }
    let id = new_id();
    let next = schedule
        .as_ref()
        .and_then(|s| crate::scheduler::next_after(s, now_millis()));
    sqlx::query("INSERT INTO jobs (id, tenant_id, repository_id, name, kind, schedule, options, max_retries, retry_base_secs, next_run_at, created_at, stale_after_secs, lag_alert_secs) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
        .bind(&id)
        .bind(tenant_id)
        .bind(&new.repository_id)
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(&new.schedule)
        .bind(new.options.to_string())
        .bind(new.max_retries)
        .bind(new.retry_base_secs)
        .bind(next)
        .bind(now_millis())
        .bind(new.stale_after_secs)
        .bind(new.lag_alert_secs)
        .execute(pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => Error::Invalid(format!("a job named {:?} exists in this tenant", new.name)),
            e => e.into(),
        })?;
    get_job(pool, tenant_id, &id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("job {id}")))
}

/// A tenant's jobs.
pub async fn list_jobs(pool: &Pool, tenant_id: &str) -> Result<Vec<JobInfo>> {
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 ORDER BY name"
    ))
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(job_from_row).collect()
}

/// Every enabled job of every tenant (for the scheduler).
pub async fn all_enabled_jobs(pool: &Pool) -> Result<Vec<JobInfo>> {
    let rows = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE enabled = 1"))
        .fetch_all(pool)
        .await?;
    rows.iter().map(job_from_row).collect()
}

/// One job of a tenant.
pub async fn get_job(pool: &Pool, tenant_id: &str, id: &str) -> Result<Option<JobInfo>> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Deletes a job and its run history.
pub async fn delete_job(pool: &Pool, tenant_id: &str, id: &str) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM jobs WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunInfo {
    /// Id.
    pub id: String,
    /// Job.
    pub job_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Attempt number, from 1.
    pub attempt: i64,
    /// `schedule`, `manual`, `retry` or `catch-up`.
    pub trigger: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// End.
    pub finished_at: Option<i64>,
    /// Bytes added (backup) or read (check).
    pub bytes: Option<i64>,
    /// Log excerpt.
    pub log: String,
}

const RUN_COLUMNS: &str =
    "id, job_id, tenant_id, attempt, trigger, status, started_at, finished_at, bytes, log";

fn run_from_row(row: &crate::catalog::Row) -> Result<RunInfo> {
    Ok(RunInfo {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        tenant_id: row.try_get("tenant_id")?,
        attempt: row.try_get("attempt")?,
        trigger: row.try_get("trigger")?,
        status: row.try_get("status")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        bytes: row.try_get("bytes")?,
        log: row.try_get("log")?,
    })
}

/// Runs of a tenant's job, newest first (at most `limit`).
pub async fn list_runs(
    pool: &Pool,
    tenant_id: &str,
    job_id: &str,
    limit: i64,
) -> Result<Vec<RunInfo>> {
    let rows = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND job_id = $2 ORDER BY started_at DESC LIMIT $3"))
        .bind(tenant_id)
        .bind(job_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(run_from_row).collect()
}

/// One run of a tenant.
pub async fn get_run(pool: &Pool, tenant_id: &str, id: &str) -> Result<Option<RunInfo>> {
    let row = sqlx::query(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(run_from_row).transpose()
}

/// The repositories a sqlite-replicate job feeds besides its own.
pub fn sqlite_extra_destinations(options: &serde_json::Value) -> Result<Vec<String>> {
    let o: SqliteReplicateOptions = serde_json::from_value(options.clone())
        .map_err(|e| Error::Invalid(format!("options of a sqlite-replicate job: {e}")))?;
    Ok(o.also_to_repository_ids)
}

/// The destination repository id of a copy job's options.
pub fn copy_destination(options: &serde_json::Value) -> Result<String> {
    let o: CopyJobOptions = serde_json::from_value(options.clone())
        .map_err(|e| Error::Invalid(format!("options of a copy job: {e}")))?;
    Ok(o.to_repository_id)
}

/// A repository's location and password, for a run.
pub type RepositoryAccess = (String, Zeroizing<Vec<u8>>);

/// True if `path` is absolute, has no `..`, and lies within one of `roots`.
pub fn path_within(path: &std::path::Path, roots: &[PathBuf]) -> bool {
    use std::path::Component;
    path.is_absolute()
        && !path.components().any(|c| matches!(c, Component::ParentDir))
        && roots.iter().any(|root| path.starts_with(root))
}

/// True if a repository `location` lies within one of `roots`: paths component-wise, URLs by
/// prefix ending at a `/`.
pub fn location_within(location: &str, roots: &[String]) -> bool {
    if location.contains(':') {
        if location.contains("/../") || location.ends_with("/..") {
            return false;
        }
        roots.iter().any(|root| {
            let root = root.trim_end_matches('/');
            location == root || location.starts_with(&format!("{root}/"))
        })
    } else {
        let roots: Vec<PathBuf> = roots
            .iter()
            .filter(|r| !r.contains(':'))
            .map(PathBuf::from)
            .collect();
        path_within(std::path::Path::new(location), &roots)
    }
}

/// What a finished run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// Bytes added or read.
    pub bytes: u64,
    /// A short log.
    pub log: String,
}

/// Runs one attempt of a job (blocking: call on a blocking thread).
pub fn execute(
    kind: JobKind,
    options: &serde_json::Value,
    location: &str,
    password: &[u8],
    destination: Option<RepositoryAccess>,
) -> std::result::Result<RunOutput, String> {
    let storage = Storage::open(location)
        .map_err(|e| format!("cannot reach the repository at {location}: {e}"))?;
    let repo = Repository::open(storage, password)
        .map_err(|e| format!("cannot open the repository at {location}: {e}"))?;
    match kind {
        JobKind::SqliteReplicate => Err(
            "a sqlite-replicate job runs continuously under the replication supervisor, not as a run"
                .into(),
        ),
        JobKind::PgBackup => {
            let o: PgBackupOptions =
                serde_json::from_value(options.clone()).map_err(|e| e.to_string())?;
            let mut repo = repo
                .load_index()
                .map_err(|e| format!("cannot load the index: {e}"))?;
            let backup_options = lifeboat_postgres::BaseBackupOptions {
                connect: lifeboat_postgres::ConnectOptions {
                    psql: o.psql,
                    conninfo: o.connect.unwrap_or_default(),
                },
                data_dir: o.pgdata,
                hostname: gethostname(),
                username: "lifeboat-server".into(),
                tags: o.tags,
                writer: Default::default(),
                wal_wait: None,
            };
            let progress = lifeboat_files::BackupProgress::default();
            let outcome = lifeboat_postgres::base_backup(&mut repo, &backup_options, &progress)
                .map_err(|e| format!("base backup failed: {e}"))?;
            let state = &outcome.state;
            let summary = outcome.snapshot.summary.clone().unwrap_or_default();
            let mut log = format!(
                "base backup {} of {}: WAL {} .. {} (timeline {}), {} files, {} bytes read, {} bytes added",
                outcome.snapshot_id,
                state.stream,
                state.start_lsn,
                state.stop_lsn.unwrap_or_default(),
                state.timeline,
                summary.files_new + summary.files_changed + summary.files_unchanged,
                summary.bytes_read,
                summary.bytes_added
            );
            if outcome.vanished > 0 {
                log.push_str(&format!(
                    "\n{} file(s) vanished during the backup (normal: WAL replay redoes it)",
                    outcome.vanished
                ));
            }
            if let Some(id) = outcome.leftover {
                log.push_str(&format!(
                    "\nwarning: the provisional snapshot {id} could not be removed (append-only storage?); it is marked incomplete and ignored by restores"
                ));
            }
            if !outcome.wal_missing.is_empty() {
                return Err(format!(
                    "the WAL this base backup needs ({}) is not in the repository: the cluster's \
                     archive_command must run `lifeboat pg archive-push` into this repository; \
                     until it does, the backup cannot be restored\n{log}",
                    outcome.wal_missing.join(", ")
                ));
            }
            Ok(RunOutput {
                bytes: summary.bytes_added,
                log,
            })
        }
        JobKind::Backup => {
            let o: BackupOptions =
                serde_json::from_value(options.clone()).map_err(|e| e.to_string())?;
            let mut repo = repo
                .load_index()
                .map_err(|e| format!("cannot load the index: {e}"))?;
            let backup_options = lifeboat_files::BackupOptions {
                paths: o.paths,
                excludes: o.excludes,
                tags: o.tags,
                hostname: gethostname(),
                username: "lifeboat-server".into(),
                ..Default::default()
            };
            let progress = lifeboat_files::BackupProgress::default();
            let outcome = lifeboat_files::backup(&mut repo, &backup_options, &progress)
                .map_err(|e| format!("backup failed: {e}"))?;
            let summary = outcome.snapshot.summary.clone().unwrap_or_default();
            let mut log = format!(
                "snapshot {}: {} new, {} changed, {} unchanged files; {} bytes read, {} bytes added",
                outcome.snapshot_id,
                summary.files_new,
                summary.files_changed,
                summary.files_unchanged,
                summary.bytes_read,
                summary.bytes_added
            );
            for warning in outcome.warnings.iter().take(20) {
                log.push_str(&format!("\nwarning: {warning}"));
            }
            Ok(RunOutput {
                bytes: summary.bytes_added,
                log,
            })
        }
        JobKind::Check => {
            let o: CheckOptions =
                serde_json::from_value(options.clone()).map_err(|e| e.to_string())?;
            let repo = repo
                .load_index()
                .map_err(|e| format!("cannot load the index: {e}"))?;
            let read = if o.read_data_percent > 0.0 {
                lifeboat_repo::check::ReadData::Fraction(o.read_data_percent / 100.0)
            } else {
                lifeboat_repo::check::ReadData::None
            };
            let report =
                lifeboat_repo::check::check(&repo, read, &HashMap::new(), &Default::default())
                    .map_err(|e| format!("check failed: {e}"))?;
            let mut log = format!(
                "{} snapshots, {} trees, {} packs ({} read, {} bytes)",
                report.snapshots, report.trees, report.packs, report.packs_read, report.bytes_read
            );
            if report.is_clean() {
                Ok(RunOutput {
                    bytes: report.bytes_read,
                    log,
                })
            } else {
                for problem in report.errors.iter().take(20) {
                    log.push_str(&format!("\n{}: {}", problem.object, problem.message));
                }
                Err(format!(
                    "check found {} problem(s):\n{log}",
                    report.errors.len()
                ))
            }
        }
        JobKind::Forget => {
            let o: ForgetOptions =
                serde_json::from_value(options.clone()).map_err(|e| e.to_string())?;
            let policy = o.policy();
            if policy.is_empty() {
                return Err("no keep rule: refusing to forget every snapshot".into());
            }
            let snapshots = repo.snapshots().map_err(|e| e.to_string())?;
            let decisions = retention::apply(
                &snapshots,
                &policy,
                GroupBy::default(),
                &jiff::tz::TimeZone::system(),
            );
            let mut removed = 0;
            for decision in decisions.iter().filter(|d| !d.keep) {
                repo.forget_snapshot(&decision.id)
                    .map_err(|e| format!("cannot forget {}: {e}", decision.id))?;
                removed += 1;
            }
            Ok(RunOutput {
                bytes: 0,
                log: format!(
                    "kept {}, forgot {removed} snapshot(s)",
                    decisions.len() - removed
                ),
            })
        }
        JobKind::Prune => {
            let o: PruneJobOptions =
                serde_json::from_value(options.clone()).map_err(|e| e.to_string())?;
            let report = lifeboat_repo::prune::prune(
                &repo,
                &lifeboat_repo::prune::PruneOptions {
                    max_unused: o.max_unused_percent / 100.0,
                    grace: std::time::Duration::from_secs(o.grace_secs),
                    ..Default::default()
                },
            )
            .map_err(|e| format!("prune failed: {e}"))?;
            let freed: u64 = report.swept.iter().map(|s| s.bytes_freed).sum();
            Ok(RunOutput {
                bytes: freed,
                log: format!(
                    "swept {} plan(s), {} packs deleted ({freed} bytes freed); marked {} bytes \
                     for deletion after the grace period; {} blobs repacked",
                    report.swept.len(),
                    report.swept.iter().map(|s| s.packs_deleted).sum::<u64>(),
                    report.mark.bytes_to_free,
                    report.mark.blobs_repacked
                ),
            })
        }
        JobKind::Copy => {
            let (to, to_password) =
                destination.ok_or("the copy job's destination repository no longer exists")?;
            let source = repo
                .load_index()
                .map_err(|e| format!("cannot load the index: {e}"))?;
            let storage = Storage::open(&to)
                .map_err(|e| format!("cannot reach the destination at {to}: {e}"))?;
            let destination = Repository::open(storage, &to_password)
                .map_err(|e| format!("cannot open the destination at {to}: {e}"))?;
            let mut destination = destination
                .load_index()
                .map_err(|e| format!("cannot load the destination's index: {e}"))?;
            let snapshots = source.snapshots().map_err(|e| e.to_string())?;
            let stats = lifeboat_repo::copy_snapshots(
                &source,
                &mut destination,
                &snapshots,
                &lifeboat_repo::CopyOptions::default(),
            )
            .map_err(|e| format!("copy to {to} failed: {e}"))?;
            Ok(RunOutput {
                bytes: stats.bytes_copied,
                log: format!(
                    "copied {} snapshot(s), skipped {}; {} blobs ({} bytes) moved, {} already there",
                    stats.copied.len(),
                    stats.skipped.len(),
                    stats.blobs_copied,
                    stats.bytes_copied,
                    stats.blobs_present
                ),
            })
        }
    }
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "lifeboat-server".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_jobs_take_defaults_and_refuse_an_unsafe_grace() {
        assert_eq!(JobKind::parse("prune").unwrap(), JobKind::Prune);
        validate_options(JobKind::Prune, &serde_json::json!({})).unwrap();
        validate_options(
            JobKind::Prune,
            &serde_json::json!({ "max_unused_percent": 0, "grace_secs": 600 }),
        )
        .unwrap();
        let short = validate_options(JobKind::Prune, &serde_json::json!({ "grace_secs": 5 }));
        assert!(short.unwrap_err().to_string().contains("at least 10"));
        assert!(validate_options(JobKind::Prune, &serde_json::json!({ "keep_last": 1 })).is_err());
    }

    #[test]
    fn database_jobs_validate_their_options_and_operators_limits() {
        use serde_json::json;
        assert_eq!(JobKind::parse("pg-backup").unwrap(), JobKind::PgBackup);
        assert_eq!(
            serde_json::to_value(JobKind::SqliteReplicate).unwrap(),
            json!("sqlite-replicate")
        );
        assert!(JobKind::SqliteReplicate.is_continuous() && !JobKind::PgBackup.is_continuous());
        validate_options(JobKind::PgBackup, &json!({})).unwrap();
        validate_options(
            JobKind::PgBackup,
            &json!({ "connect": "host=/run/postgresql", "pgdata": "/var/lib/pg", "tags": ["n"] }),
        )
        .unwrap();
        assert!(validate_options(JobKind::PgBackup, &json!({ "pgdata": "data" })).is_err());
        assert!(validate_options(JobKind::PgBackup, &json!({ "paths": ["/x"] })).is_err());
        let o: SqliteReplicateOptions =
            serde_json::from_value(json!({ "database": "/srv/app.db" })).unwrap();
        assert_eq!((o.interval_ms, o.max_lag_mib), (1000, 1024));
        let library = o.replicate_options();
        assert_eq!(library.max_lag_bytes, Some(1 << 30));
        validate_options(
            JobKind::SqliteReplicate,
            &json!({ "database": "/srv/app.db" }),
        )
        .unwrap();
        for bad in [
            json!({}),
            json!({ "database": "app.db" }),
            json!({ "database": "/srv/app.db", "interval_ms": 0 }),
            json!({ "database": "/srv/app.db", "spool_dir": "tmp" }),
        ] {
            assert!(
                validate_options(JobKind::SqliteReplicate, &bad).is_err(),
                "{bad}"
            );
        }

        let roots = vec![PathBuf::from("/srv/acme")];
        let ok = |kind, options| operator_limits(kind, &options, &roots);
        ok(JobKind::PgBackup, json!({ "pgdata": "/srv/acme/pg" })).unwrap();
        assert!(ok(JobKind::PgBackup, json!({})).is_err(), "pgdata required");
        assert!(ok(JobKind::PgBackup, json!({ "pgdata": "/etc" })).is_err());
        assert!(
            ok(
                JobKind::PgBackup,
                json!({ "pgdata": "/srv/acme/pg", "psql": "/tmp/evil" })
            )
            .is_err()
        );
        ok(
            JobKind::SqliteReplicate,
            json!({ "database": "/srv/acme/app.db" }),
        )
        .unwrap();
        assert!(
            ok(
                JobKind::SqliteReplicate,
                json!({ "database": "/etc/app.db" })
            )
            .is_err()
        );
        assert!(
            ok(
                JobKind::SqliteReplicate,
                json!({ "database": "/srv/acme/app.db", "spool_dir": "/tmp" })
            )
            .is_err()
        );
        assert!(ok(JobKind::Backup, json!({ "paths": ["/srv/acme/x"] })).is_ok());
        assert!(ok(JobKind::Check, json!({})).is_ok());
    }

    #[test]
    fn operators_stay_within_their_roots() {
        let roots = vec![PathBuf::from("/srv/acme")];
        assert!(path_within(std::path::Path::new("/srv/acme/data"), &roots));
        assert!(path_within(std::path::Path::new("/srv/acme"), &roots));
        assert!(!path_within(
            std::path::Path::new("/srv/acme-other"),
            &roots
        ));
        assert!(!path_within(
            std::path::Path::new("/srv/acme/../../etc"),
            &roots
        ));
        assert!(!path_within(std::path::Path::new("srv/acme"), &roots));
        assert!(!path_within(std::path::Path::new("/etc"), &[]));
        let roots = vec![
            "/repos".to_owned(),
            "s3:https://s3.example/bucket/acme/".to_owned(),
        ];
        assert!(location_within("/repos/a", &roots));
        assert!(!location_within("/reposx", &roots));
        assert!(location_within(
            "s3:https://s3.example/bucket/acme/r1",
            &roots
        ));
        assert!(!location_within(
            "s3:https://s3.example/bucket/acme-evil",
            &roots
        ));
        assert!(!location_within(
            "s3:https://s3.example/bucket/acme/../other",
            &roots
        ));
    }
}

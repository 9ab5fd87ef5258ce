//! The `lifeboat` command: thin glue between command-line flags and the library crates.
//!
//! Exit codes: 0 success; 1 fatal error (nothing was changed, or the repository is still
//! valid); 2 bad usage (from clap); 3 partial success (a backup saved a snapshot but some files
//! could not be read, or a restore finished but some entries could not be restored); 130
//! interrupted (a backup stopped by Ctrl-C or SIGTERM: stored data is indexed, no snapshot).

mod browse;
mod config;
mod password;
mod pg;
mod progress;
mod remote;
mod server;
mod sqlite;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use jiff::Span;
use lifeboat_files::{BackupOptions, BackupProgress, RestoreOptions, RestoreProgress};
use lifeboat_repo::check::ReadData;
use lifeboat_repo::repository::KEYS_PREFIX;
use lifeboat_repo::retention::{self, Count, GroupBy, KeepPolicy, Period};
use lifeboat_repo::{Id, InitOptions, KdfParams, Repository};
use lifeboat_storage::Storage;

/// Exit code of a run that finished but left something out.
const EXIT_PARTIAL: u8 = 3;

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Encrypted, deduplicated backups you can prove you restore"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GlobalArgs {
    /// Repository location: a local directory (the default backend),
    /// `s3:https://host:port/bucket/prefix` or `s3:bucket/prefix` (AWS); see docs/storage.md.
    #[arg(short = 'r', long, env = "LIFEBOAT_REPOSITORY", global = true)]
    repo: Option<String>,
    /// File whose first line is the repository password.
    #[arg(long, env = "LIFEBOAT_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// Shell command that prints the repository password.
    #[arg(long, env = "LIFEBOAT_PASSWORD_COMMAND", global = true)]
    password_command: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Print less (no progress, no summaries).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Explain more on standard error: -v says what each step decides, -vv adds detail for
    /// debugging (LIFEBOAT_LOG=filter overrides both).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Configuration file (default: ~/.config/lifeboat/config.toml if it exists).
    #[arg(long, env = "LIFEBOAT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    remote: remote::ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotFilter),
    /// Add, remove or replace the tags of snapshots.
    Tag(TagArgs),
    /// Find entries whose name matches a glob, in every snapshot (or the filtered ones).
    Find(FindArgs),
    /// Show the settings in effect and where each comes from (flag, environment, file).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the manual page (roff): `lifeboat man | man -l -`, or with --dir write one page
    /// per command (lifeboat.1, lifeboat-backup.1, …) for installing under man1/.
    Man {
        /// Write all pages into this directory instead of printing the main one.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Restore a snapshot, whole or in part, into a directory.
    Restore(RestoreArgs),
    /// Print a repository object, decrypted, for debugging.
    Cat(CatArgs),
    /// Copy snapshots to a second repository (created with `init --copy-content-keys-from`),
    /// transferring only the blobs it lacks.
    Copy(CopyArgs),
    /// Verify the repository: structure always; pack data in full or in rotating subsets.
    Check(CheckArgs),
    /// Remove snapshots that a retention policy does not keep (their data is freed by prune).
    Forget(Box<ForgetArgs>),
    /// Free the space of data no snapshot uses: marks packs now, deletes them in a later run
    /// once the grace period is over. Never stops backups.
    Prune(PruneArgs),
    /// Manage the passwords (key files) that open the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Repair the repository.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// List the entries of a snapshot (recursively), optionally below a path.
    Ls(browse::LsArgs),
    /// Write one file of a snapshot to standard output.
    Dump(browse::DumpArgs),
    /// Show what changed between two snapshots (+ added, - removed, M modified, U metadata).
    Diff(browse::DiffArgs),
    /// Sizes of snapshots: restore size, unique data, deduplication and compression.
    Stats(browse::StatsArgs),
    /// PostgreSQL: WAL archive, base backups, point-in-time restore (docs/postgres.md).
    #[command(subcommand)]
    Pg(pg::PgCommand),
    /// SQLite databases: continuous replication, point-in-time restore, status.
    #[command(subcommand)]
    Sqlite(sqlite::SqliteCommand),
    /// Run the server: scheduler, HTTPS API, audit log, metrics and alerts (docs/server.md).
    Serve(server::ServeArgs),
    /// The server's audit log: verify its hash chain, export it.
    #[command(subcommand)]
    Audit(server::AuditCommand),
    #[command(flatten)]
    Remote(remote::RemoteCommand),
    /// Server administration on its state directory (breach response).
    #[command(subcommand)]
    Admin(server::AdminCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings and their sources (never a password).
    Show,
}

#[derive(Subcommand)]
enum RepairCommand {
    /// Rebuild the index from the pack headers (after lost or damaged index objects, or to take
    /// in packs that interrupted backups stored but never indexed).
    Index,
    /// For snapshots that reference lost or damaged data, write repaired snapshots (tagged
    /// `repaired`) that keep everything still intact, and name every path left out.
    Snapshots {
        /// Also read every pack and count blobs that fail verification as lost (slow; without
        /// it only blobs whose pack or index entry is missing count).
        #[arg(long)]
        read_data: bool,
        /// Remove the damaged originals once their repaired versions are written.
        #[arg(long)]
        forget: bool,
        /// Report what is damaged; write nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// List key files: id, creation time, host and user.
    List,
    /// Add a password (from --new-password-file or a prompt), or with --machine a machine key:
    /// a random token for programs that start often, such as PostgreSQL's archive_command,
    /// which opens the repository without the 0.2 s argon2id derivation of a password.
    Add(KeyAddArgs),
    /// Remove a key file (never the last one).
    Remove {
        /// Key id or unique prefix.
        id: String,
    },
    /// Change the password used now: adds a key with the new password, then removes this one.
    Passwd(NewPasswordArgs),
}

#[derive(Args)]
struct KeyAddArgs {
    /// Generate a machine key instead of asking for a password (see `docs/security.md`).
    #[arg(long, conflicts_with = "new_password_file")]
    machine: bool,
    /// With --machine: write the token to this new file (mode 0600) instead of standard
    /// output; use it as the --password-file of the program.
    #[arg(long, requires = "machine", value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    password: NewPasswordArgs,
}

#[derive(Args)]
struct NewPasswordArgs {
    /// File whose first line is the new password.
    #[arg(long, env = "LIFEBOAT_NEW_PASSWORD_FILE")]
    new_password_file: Option<PathBuf>,
    #[arg(long, hide = true)]
    insecure_kdf_for_tests: bool,
}

#[derive(Args)]
struct ForgetArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours with snapshots (or `forever`).
    #[arg(long, value_name = "N|forever")]
    keep_hourly: Option<Count>,
    /// Keep the newest snapshot of each of the last N days (or `forever`).
    #[arg(long, value_name = "N|forever")]
    keep_daily: Option<Count>,
    /// Keep the newest snapshot of each of the last N ISO weeks (or `forever`).
    #[arg(long, value_name = "N|forever")]
    keep_weekly: Option<Count>,
    /// Keep the newest snapshot of each of the last N months (or `forever`).
    #[arg(long, value_name = "N|forever")]
    keep_monthly: Option<Count>,
    /// Keep the newest snapshot of each of the last N years (or `forever`).
    #[arg(long, value_name = "N|forever")]
    keep_yearly: Option<Count>,
    /// Keep every snapshot within this long of the newest one (e.g. `7d`, `12h`, `1y6m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Span>,
    /// Keep the newest snapshot of each hour within this long of the newest snapshot.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within_hourly: Option<Span>,
    /// Keep the newest snapshot of each day within this long of the newest snapshot.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within_daily: Option<Span>,
    /// Keep the newest snapshot of each week within this long of the newest snapshot.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within_weekly: Option<Span>,
    /// Keep the newest snapshot of each month within this long of the newest snapshot.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within_monthly: Option<Span>,
    /// Keep the newest snapshot of each year within this long of the newest snapshot.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within_yearly: Option<Span>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Judge snapshots in groups of these properties: host, paths, tags (comma-separated).
    #[arg(long, default_value = "host,paths", value_parser = parse_group_by)]
    group_by: GroupBy,
    /// Show what would be kept and removed, and why, without removing anything.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Only judge snapshots that match these filters; others are left alone.
    #[command(flatten)]
    filter: SnapshotFilter,
    /// Run prune afterwards, with its default settings.
    #[arg(long)]
    prune: bool,
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// Unused space to tolerate, as a percentage of the space in use (`5%`, `0%`) or
    /// `unlimited`: partly used packs are repacked, most wasteful first, until no more is left
    /// [default: 5%, or `max_unused` in the config file's `[prune]`].
    #[arg(long, value_name = "PERCENT", value_parser = parse_max_unused)]
    max_unused: Option<f64>,
    /// Repack at most this many bytes of packs in one run (e.g. `500M`, `2G`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_repack_size: Option<u64>,
    /// How long packs marked by this run stay before a later run deletes them (e.g. `1h`,
    /// `30m`, `10s`; at least 10 s). Readers that loaded the index before the sweep, such as a
    /// long restore, must finish within it [default: 1h, or `grace` in `[prune]`].
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    grace: Option<std::time::Duration>,
    /// Report what would be deleted and repacked; change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

fn parse_max_unused(text: &str) -> Result<f64, String> {
    if text == "unlimited" {
        return Ok(f64::INFINITY);
    }
    let number = text
        .strip_suffix('%')
        .ok_or_else(|| format!("{text:?}: give a percentage such as 5% or the word unlimited"))?;
    match number.trim().parse::<f64>() {
        Ok(value) if value >= 0.0 && value.is_finite() => Ok(value / 100.0),
        _ => Err(format!("{text:?} is not a percentage such as 5%")),
    }
}

/// Parses `1500`, `500K`, `500M`, `2G`, `1T` (also `MiB`-style suffixes); binary units.
fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size: use forms like 500M, 2G");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "k" | "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_shl(shift)
        .filter(|n| n >> shift == number)
        .ok_or_else(bad)
}

fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration such as 1h, 30m or 10s: {e}"))?;
    let duration = std::time::Duration::try_from(duration)
        .map_err(|_| format!("{text:?}: the grace period cannot be negative"))?;
    if duration < lifeboat_repo::prune::MIN_GRACE {
        return Err(format!(
            "{text:?} is too short: the grace period protects concurrent backups and must be \
             at least {} s",
            lifeboat_repo::prune::MIN_GRACE.as_secs()
        ));
    }
    Ok(duration)
}

/// The `[forget]` section as a policy; errors name the key.
fn policy_from_file(section: &config::ForgetSection) -> Result<KeepPolicy> {
    let count = |key: &str, value: &Option<config::CountValue>| -> Result<Option<Count>> {
        Ok(match value {
            None => None,
            Some(config::CountValue::Number(n)) => Some(Count::Last(*n)),
            Some(config::CountValue::Word(w)) => Some(
                w.parse()
                    .map_err(|e| anyhow::anyhow!("[forget] {key}: {e}"))?,
            ),
        })
    };
    let span = |key: &str, value: &Option<String>| -> Result<Option<Span>> {
        value
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| anyhow::anyhow!("[forget] {key}: {e}"))
    };
    let mut policy = KeepPolicy {
        last: section.keep_last,
        within: span("keep_within", &section.keep_within)?,
        tags: section.keep_tags.clone(),
        ..Default::default()
    };
    let counts = [
        ("keep_hourly", &section.keep_hourly),
        ("keep_daily", &section.keep_daily),
        ("keep_weekly", &section.keep_weekly),
        ("keep_monthly", &section.keep_monthly),
        ("keep_yearly", &section.keep_yearly),
    ];
    let spans = [
        ("keep_within_hourly", &section.keep_within_hourly),
        ("keep_within_daily", &section.keep_within_daily),
        ("keep_within_weekly", &section.keep_within_weekly),
        ("keep_within_monthly", &section.keep_within_monthly),
        ("keep_within_yearly", &section.keep_within_yearly),
    ];
    for ((period, (ck, cv)), (sk, sv)) in Period::ALL.into_iter().zip(counts).zip(spans) {
        if let Some(c) = count(ck, cv)? {
            policy.periods.insert(period, c);
        }
        if let Some(s) = span(sk, sv)? {
            policy.within_periods.insert(period, s);
        }
    }
    Ok(policy)
}

fn parse_duration(text: &str) -> Result<Span, String> {
    lifeboat_repo::retention::parse_duration(text)
}

fn parse_group_by(text: &str) -> Result<GroupBy, String> {
    let mut by = GroupBy {
        host: false,
        paths: false,
        tags: false,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "host" => by.host = true,
            "paths" => by.paths = true,
            "tags" => by.tags = true,
            other => {
                return Err(format!(
                    "cannot group by {other:?}: use host, paths or tags"
                ));
            }
        }
    }
    Ok(by)
}

impl ForgetArgs {
    fn policy(&self) -> KeepPolicy {
        let mut policy = KeepPolicy {
            last: self.keep_last,
            within: self.keep_within,
            tags: self.keep_tags.clone(),
            ..Default::default()
        };
        let counts = [
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        let spans = [
            self.keep_within_hourly,
            self.keep_within_daily,
            self.keep_within_weekly,
            self.keep_within_monthly,
            self.keep_within_yearly,
        ];
        for ((period, count), span) in Period::ALL.into_iter().zip(counts).zip(spans) {
            if let Some(count) = count {
                policy.periods.insert(period, count);
            }
            if let Some(span) = span {
                policy.within_periods.insert(period, span);
            }
        }
        policy
    }
}

#[derive(Args)]
struct CheckArgs {
    /// Download every pack and decrypt and verify every blob.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Verify part of the data: `5%` (least recently verified packs first, so repeated runs
    /// cover everything) or `n/m` (a fixed part n of m).
    #[arg(long, value_name = "SUBSET", value_parser = parse_subset)]
    read_data_subset: Option<ReadData>,
}

fn parse_subset(text: &str) -> Result<ReadData, String> {
    if let Some(percent) = text.strip_suffix('%') {
        let value: f64 = percent
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage"))?;
        if !(value > 0.0 && value <= 100.0) {
            return Err("the percentage must be above 0 and at most 100".to_string());
        }
        return Ok(ReadData::Fraction(value / 100.0));
    }
    if let Some((n, m)) = text.split_once('/') {
        let (n, m): (u32, u32) = (
            n.trim()
                .parse()
                .map_err(|_| format!("{text:?} is not n/m"))?,
            m.trim()
                .parse()
                .map_err(|_| format!("{text:?} is not n/m"))?,
        );
        if n == 0 || m == 0 || n > m {
            return Err("n/m needs 1 <= n <= m".to_string());
        }
        return Ok(ReadData::Part { n, m });
    }
    Err(format!(
        "{text:?}: use a percentage such as 5% or a part such as 1/10"
    ))
}

/// Snapshot filters shared by commands that work on several snapshots.
#[derive(Args, Clone, Default)]
struct SnapshotFilter {
    /// Only snapshots of this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Only snapshots with this tag (repeatable: any of them).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only snapshots that include this path (repeatable).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
}

impl SnapshotFilter {
    fn matches(&self, s: &lifeboat_repo::Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && (self.tags.is_empty() || self.tags.iter().any(|t| s.tags.contains(t)))
            && (self.paths.is_empty() || self.paths.iter().all(|p| s.paths.contains(p)))
    }
}

#[derive(Args)]
struct TagArgs {
    /// Snapshots to change (ids, prefixes or `latest`); none: all that match the filter.
    snapshots: Vec<String>,
    #[command(flatten)]
    filter: SnapshotFilter,
    /// Add this tag (repeatable).
    #[arg(long = "add", value_name = "TAG")]
    add: Vec<String>,
    /// Remove this tag (repeatable).
    #[arg(long = "remove", value_name = "TAG")]
    remove: Vec<String>,
    /// Replace all tags with these (repeatable; `--set ''` clears them).
    #[arg(long = "set", value_name = "TAG", conflicts_with_all = ["add", "remove"])]
    set: Vec<String>,
}

#[derive(Args)]
struct FindArgs {
    /// Glob matched against entry names (`*.toml`), or against whole paths if it holds a `/`.
    pattern: String,
    #[command(flatten)]
    filter: SnapshotFilter,
}

#[derive(Args)]
struct InitArgs {
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    pack_size_mib: u32,
    /// zstd compression level for data (1-19; 3 is a good balance).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(-7..=19))]
    compression: i32,
    /// Use very cheap key derivation. Only for tests: it makes the password easy to guess.
    #[arg(long, hide = true)]
    insecure_kdf_for_tests: bool,
    /// Share the content keys (blob-id key and chunker seed) of this existing repository, so
    /// that `lifeboat copy` between the two moves only missing blobs. Its password comes from
    /// --from-password-file or --from-password-command.
    #[arg(long, value_name = "REPO1")]
    copy_content_keys_from: Option<String>,
    #[command(flatten)]
    from: FromPassword,
}

/// Password of the repository given by `--copy-content-keys-from`.
#[derive(Args)]
struct FromPassword {
    /// File whose first line is the password of the --copy-content-keys-from repository.
    #[arg(long, env = "LIFEBOAT_FROM_PASSWORD_FILE")]
    from_password_file: Option<PathBuf>,
    /// Shell command that prints the password of the --copy-content-keys-from repository.
    #[arg(long, env = "LIFEBOAT_FROM_PASSWORD_COMMAND")]
    from_password_command: Option<String>,
}

#[derive(Args)]
struct CopyArgs {
    /// Destination repository; it must share content keys with the source (--repo).
    #[arg(long, value_name = "REPO2", env = "LIFEBOAT_TO_REPOSITORY")]
    to: String,
    /// File whose first line is the destination's password.
    #[arg(long, env = "LIFEBOAT_TO_PASSWORD_FILE")]
    to_password_file: Option<PathBuf>,
    /// Shell command that prints the destination's password.
    #[arg(long, env = "LIFEBOAT_TO_PASSWORD_COMMAND")]
    to_password_command: Option<String>,
    /// Snapshots to copy (ids, unique id prefixes or `latest`); default: all of them. Those
    /// the destination has already are skipped.
    snapshots: Vec<String>,
    /// Only copy snapshots that match these filters.
    #[command(flatten)]
    filter: SnapshotFilter,
}

#[derive(Args)]
struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required_unless_present_any = ["files_from", "stdin"])]
    paths: Vec<PathBuf>,
    /// Read more paths to back up from this file, one per line (repeatable).
    #[arg(long, value_name = "FILE")]
    files_from: Vec<PathBuf>,
    /// Read exclude patterns from this file, one per line; `#` starts a comment (repeatable).
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Skip directories that contain a file of this name, e.g. `.nobackup` (repeatable).
    #[arg(long, value_name = "NAME")]
    exclude_if_present: Vec<String>,
    /// Skip directories tagged as caches (`CACHEDIR.TAG` with the standard signature).
    #[arg(long)]
    exclude_caches: bool,
    /// Stay on the filesystems of the given paths (mount points are kept, empty).
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Back up standard input as one file (e.g. `pg_dump db | lifeboat backup --stdin`).
    #[arg(long, conflicts_with_all = ["paths", "files_from"])]
    stdin: bool,
    /// Read, chunk, compress and encrypt everything, but store nothing: shows what a backup
    /// would add.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Name of the file that holds standard input in the snapshot.
    #[arg(long, default_value = "stdin", requires = "stdin")]
    stdin_filename: String,
    /// Label the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    host: Option<String>,
    /// Skip entries matching a pattern (repeatable). Without `/` it matches names anywhere
    /// (`*.tmp`, `node_modules`); with `/` it matches absolute paths (`/home/*/.cache`).
    #[arg(short = 'e', long = "exclude")]
    excludes: Vec<String>,
    /// Read every file, even those unchanged since the parent snapshot.
    #[arg(long)]
    force: bool,
    /// Use this snapshot as parent for change detection.
    #[arg(long)]
    parent: Option<String>,
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot id, unique id prefix, or `latest`.
    snapshot: String,
    /// Directory to restore into (created if missing; must be empty unless --overwrite or
    /// --delta).
    #[arg(short, long)]
    target: PathBuf,
    /// Restore only paths matching this glob and what is below them (repeatable), e.g.
    /// `/srv/app/config` or `**/*.toml`.
    #[arg(short, long)]
    include: Vec<String>,
    /// Restore into a non-empty directory, replacing files that are in the way.
    #[arg(long)]
    overwrite: bool,
    /// Restore into a non-empty directory, keeping files that already hold the snapshot's
    /// content (compared chunk by chunk) and rebuilding the others from their unchanged
    /// chunks plus the repository. Files the snapshot lacks are left alone.
    #[arg(long, conflicts_with = "overwrite")]
    delta: bool,
    /// With --delta: take a file with the snapshot's size and modification time as unchanged
    /// without reading it (faster; misses changes that kept both).
    #[arg(long, requires = "delta")]
    trust_mtime: bool,
}

#[derive(Args)]
struct CatArgs {
    /// What to print: config, keys, key ID, snapshot ID, index ID, pack ID, blob ID, tree ID.
    kind: String,
    /// Object id (a snapshot also accepts a prefix or `latest`).
    id: Option<String>,
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let default_level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(cli.global.verbose >= 2)
        .init();
    match run(cli, &matches) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a setting came from, for `config show`.
fn source_of(matches: &clap::ArgMatches, id: &str, from_file: bool) -> &'static str {
    match matches.value_source(id) {
        Some(clap::parser::ValueSource::CommandLine) => "flag",
        Some(clap::parser::ValueSource::EnvVariable) => "environment",
        _ if from_file => "config file",
        _ => "default",
    }
}

fn run(mut cli: Cli, matches: &clap::ArgMatches) -> Result<ExitCode> {
    if cli.global.remote.server.is_some() {
        // Against a server, -r names the server's repository: the configuration file's
        // local repository does not apply.
        return match &cli.command {
            Command::Snapshots(filter) => remote::snapshots(&cli.global, filter),
            Command::Remote(command) => remote::run(&cli.global, command),
            Command::Ls(args) => remote::ls(&cli.global, args),
            Command::Dump(args) => remote::dump(&cli.global, args),
            _ => bail!(
                "with --server only snapshots, ls, dump, repositories, jobs and runs are available; \
                 other commands open a repository directly (drop --server)"
            ),
        };
    }
    let (file, file_path) = config::load(cli.global.config.as_deref())?;
    let global = &mut cli.global;
    let repo_from_file = global.repo.is_none() && file.repository.is_some();
    if global.repo.is_none() {
        global.repo = file.repository.clone();
    }
    // A password source given by flag or environment wins over both sources in the file.
    if global.password_file.is_none() && global.password_command.is_none() {
        global.password_file = file.password_file.clone();
        global.password_command = file.password_command.clone();
    }
    let global = &cli.global;
    if let Command::Config(ConfigCommand::Show) = cli.command {
        let value = serde_json::json!({
            "config_file": file_path.as_ref().map(|p| p.display().to_string()),
            "repository": { "value": global.repo, "source": source_of(matches, "repo", repo_from_file) },
            "password": {
                "source": if global.password_command.is_some() { "command" } else if global.password_file.is_some() { "file" } else { "prompt" },
                "file": global.password_file.as_ref().map(|p| p.display().to_string()),
            },
            "backup": file.backup,
            "forget": file.forget,
            "prune": file.prune,
            "sqlite": file.sqlite,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Command::Init(args) => init(global, &args),
        Command::Backup(args) => backup(global, &args, &file.backup),
        Command::Snapshots(filter) => snapshots(global, &filter),
        Command::Tag(args) => tag(global, &args),
        Command::Find(args) => find(global, &args),
        Command::Config(_) => unreachable!("handled above"),
        Command::Man { dir } => man_pages(dir.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "lifeboat",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(args) => restore(global, &args),
        Command::Cat(args) => cat(global, &args),
        Command::Copy(args) => copy(global, &args),
        Command::Check(args) => check(global, &args),
        Command::Forget(args) => forget(global, &args, &file.forget, &file.prune),
        Command::Prune(args) => prune(global, &args, &file.prune),
        Command::Key(command) => key(global, &command),
        Command::Repair(RepairCommand::Index) => repair_index(global),
        Command::Repair(RepairCommand::Snapshots {
            read_data,
            forget,
            dry_run,
        }) => repair_snapshots(
            global,
            &lifeboat_repo::repair::SnapshotRepairOptions {
                read_data,
                dry_run,
                forget,
            },
        ),
        Command::Ls(args) => browse::ls(global, &args),
        Command::Dump(args) => browse::dump(global, &args),
        Command::Diff(args) => browse::diff(global, &args),
        Command::Stats(args) => browse::stats(global, &args),
        Command::Pg(command) => pg::run(global, &command),
        Command::Sqlite(command) => {
            let job = sqlite::FileJob {
                section: &file.sqlite,
                repo_from_file,
                matches: matches
                    .subcommand_matches("sqlite")
                    .and_then(|m| m.subcommand())
                    .map(|(_, m)| m),
            };
            sqlite::run(global, &command, &job)
        }
        Command::Serve(args) => server::serve(&args),
        Command::Audit(command) => {
            server::audit(&command, global.json, global.remote.tenant.as_deref())
        }
        Command::Admin(command) => server::admin(&command),
        Command::Remote(command) => remote::run(global, &command),
    }
}

fn location(global: &GlobalArgs) -> Result<&str> {
    global
        .repo
        .as_deref()
        .context("no repository given: use --repo or set LIFEBOAT_REPOSITORY")
}

fn open(global: &GlobalArgs) -> Result<Repository> {
    let location = location(global)?;
    let storage = Storage::open(location).with_context(|| {
        format!("repository {location} does not exist or cannot be opened; create one with `lifeboat init`")
    })?;
    let password = password::obtain(global, false)?;
    Ok(Repository::open(storage, password.as_bytes())?)
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn username() -> String {
    // Without $USER (cron, systemd) the numeric id is still a truthful record.
    std::env::var("USER").unwrap_or_else(|_| {
        let uid =
            std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m));
        format!("uid {uid}")
    })
}

fn init(global: &GlobalArgs, args: &InitArgs) -> Result<ExitCode> {
    let storage = Storage::create(location(global)?)?;
    let content_keys = match &args.copy_content_keys_from {
        Some(from) => {
            let other = other_repository(
                global,
                from,
                args.from.from_password_file.clone(),
                args.from.from_password_command.clone(),
            );
            let source = open(&other)
                .with_context(|| format!("cannot open {from} to copy its content keys"))?;
            Some(source.config().content_keys.clone())
        }
        None => None,
    };
    let password = password::obtain(global, true)?;
    let options = InitOptions {
        kdf: if args.insecure_kdf_for_tests {
            KdfParams::insecure_for_tests()
        } else {
            KdfParams::default()
        },
        pack_size: args.pack_size_mib * 1024 * 1024,
        compression_level: args.compression,
        hostname: hostname(),
        username: username(),
        content_keys,
        ..InitOptions::default()
    };
    let repo = Repository::init(storage, password.as_bytes(), &options)?;
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "id": repo.config().id, "location": repo.storage().location() })
        );
    } else if !global.quiet {
        println!(
            "created repository {} at {}",
            repo.config().id.short(),
            repo.storage().location()
        );
        println!("Keep the password safe: without it the data cannot be recovered.");
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines of a list file (`--files-from`, `--exclude-file`), without blanks and `#` comments.
fn list_file(file: &std::path::Path, flag: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {flag} {}", file.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

fn backup(
    global: &GlobalArgs,
    args: &BackupArgs,
    defaults: &config::BackupSection,
) -> Result<ExitCode> {
    let mut repo = open(global)?.load_index()?;
    let parent = match &args.parent {
        Some(query) => Some(repo.find_snapshot(query)?.id),
        None => None,
    };
    let mut paths = args.paths.clone();
    for file in &args.files_from {
        paths.extend(
            list_file(file, "--files-from")?
                .into_iter()
                .map(PathBuf::from),
        );
    }
    let mut excludes = args.excludes.clone();
    excludes.extend(defaults.excludes.iter().cloned());
    for file in &args.exclude_file {
        excludes.extend(list_file(file, "--exclude-file")?);
    }
    if !args.stdin && paths.is_empty() {
        bail!("nothing to back up: the --files-from files list no paths");
    }
    let options = BackupOptions {
        paths,
        excludes,
        exclude_if_present: args
            .exclude_if_present
            .iter()
            .chain(&defaults.exclude_if_present)
            .cloned()
            .collect(),
        exclude_caches: args.exclude_caches || defaults.exclude_caches,
        one_file_system: args.one_file_system || defaults.one_file_system,
        writer: lifeboat_repo::WriterOptions {
            dry_run: args.dry_run,
            ..Default::default()
        },
        tags: args.tags.clone(),
        hostname: args.host.clone().unwrap_or_else(hostname),
        username: username(),
        force: args.force,
        parent,
        ..Default::default()
    };
    let progress = Arc::new(BackupProgress::default());
    {
        // First Ctrl-C (or SIGTERM): stop cleanly, keeping what is stored; a second one quits.
        let progress = progress.clone();
        let _ = ctrlc::set_handler(move || {
            if progress
                .cancel
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping: finishing the packs in flight (press Ctrl-C again to quit at once)"
            );
        });
    }
    let display = progress::start_backup(progress.clone(), show_progress(global));
    let outcome = if args.stdin {
        lifeboat_files::backup_stream(
            &mut repo,
            std::io::stdin().lock(),
            &args.stdin_filename,
            &options,
            &progress,
        )
    } else {
        lifeboat_files::backup(&mut repo, &options, &progress)
    };
    display.stop();
    let outcome = match outcome {
        Err(e @ lifeboat_files::Error::Cancelled { .. }) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    let summary = outcome.snapshot.summary.clone().unwrap_or_default();
    if global.json {
        let value = serde_json::json!({
            "type": "summary",
            "snapshot_id": outcome.snapshot_id,
            "summary": summary,
            "warnings": outcome.warnings,
            "requests": {
                "put": outcome.requests.puts, "get": outcome.requests.gets,
                "list": outcome.requests.lists, "stat": outcome.requests.stats,
                "delete": outcome.requests.deletes, "retries": outcome.requests.retries,
            },
        });
        println!("{value}");
    } else if !global.quiet {
        println!(
            "files: {} new, {} changed, {} unchanged; {} directories, {} other",
            summary.files_new,
            summary.files_changed,
            summary.files_unchanged,
            summary.dirs,
            summary.others
        );
        println!(
            "read {} of {}, added {} (stored {} in {} packs) in {:.1} s",
            bytes(summary.bytes_read),
            bytes(summary.bytes_total),
            bytes(summary.bytes_added),
            bytes(summary.bytes_stored),
            summary.packs_written,
            summary.duration_secs
        );
        let r = &outcome.requests;
        println!(
            "requests: {} PUT, {} GET, {} LIST, {} HEAD, {} DELETE ({} retried)",
            r.puts, r.gets, r.lists, r.stats, r.deletes, r.retries
        );
        if args.dry_run {
            println!("dry run: nothing was stored");
        } else {
            println!("snapshot {} saved", outcome.snapshot_id.short());
        }
    }
    if outcome.warnings.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "warning: {} entries could not be backed up; the snapshot is incomplete",
            outcome.warnings.len()
        );
        Ok(ExitCode::from(EXIT_PARTIAL))
    }
}

fn show_progress(global: &GlobalArgs) -> progress::Mode {
    if global.quiet {
        progress::Mode::Off
    } else if global.json {
        progress::Mode::Json
    } else if std::io::stderr().is_terminal() {
        progress::Mode::Line
    } else {
        progress::Mode::Off
    }
}

fn tag(global: &GlobalArgs, args: &TagArgs) -> Result<ExitCode> {
    if args.add.is_empty() && args.remove.is_empty() && args.set.is_empty() {
        bail!("nothing to change: use --add, --remove or --set");
    }
    let repo = open(global)?;
    let chosen: Vec<lifeboat_repo::SnapshotEntry> = if args.snapshots.is_empty() {
        repo.snapshots()?
            .into_iter()
            .filter(|s| args.filter.matches(&s.snapshot))
            .collect()
    } else {
        args.snapshots
            .iter()
            .map(|q| repo.find_snapshot(q))
            .collect::<Result<_, _>>()?
    };
    let mut changed = 0;
    for entry in chosen {
        let mut snapshot = entry.snapshot.clone();
        if args.set.is_empty() {
            snapshot.tags.retain(|t| !args.remove.contains(t));
            for tag in &args.add {
                if !snapshot.tags.contains(tag) {
                    snapshot.tags.push(tag.clone());
                }
            }
        } else {
            snapshot.tags = args.set.iter().filter(|t| !t.is_empty()).cloned().collect();
        }
        if snapshot.tags == entry.snapshot.tags {
            continue;
        }
        // Snapshots are immutable objects: write the changed one, then remove the old one, so
        // an interruption leaves both rather than neither.
        let id = repo.save_snapshot(&snapshot)?;
        repo.forget_snapshot(&entry.id)?;
        changed += 1;
        if !global.quiet {
            println!(
                "snapshot {} is now {} with tags [{}]",
                entry.id.short(),
                id.short(),
                snapshot.tags.join(", ")
            );
        }
    }
    if !global.quiet {
        println!("{changed} snapshots changed");
    }
    Ok(ExitCode::SUCCESS)
}

fn find(global: &GlobalArgs, args: &FindArgs) -> Result<ExitCode> {
    let glob = globset::GlobBuilder::new(&args.pattern)
        .literal_separator(true)
        .build()
        .with_context(|| format!("invalid pattern {:?}", args.pattern))?
        .compile_matcher();
    let whole_path = args.pattern.contains('/');
    let repo = open(global)?.load_index()?;
    let mut found = 0u64;
    let mut out = std::io::stdout().lock();
    for entry in repo
        .snapshots()?
        .into_iter()
        .filter(|s| args.filter.matches(&s.snapshot))
    {
        let mut hits = Vec::new();
        lifeboat_repo::browse::walk(
            &repo,
            &entry.snapshot.tree,
            std::path::Path::new("/"),
            &mut |path, node| {
                let subject = if whole_path {
                    path
                } else {
                    std::path::Path::new(std::ffi::OsStr::from_bytes(&node.name.0))
                };
                if glob.is_match(subject) {
                    hits.push((path.to_path_buf(), node.kind, node.size));
                }
                Ok(true)
            },
        )?;
        for (path, kind, size) in hits {
            found += 1;
            if global.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "snapshot": entry.id, "path": path.to_string_lossy(), "kind": kind, "size": size })
                )?;
            } else {
                writeln!(out, "{}  {}", entry.id.short(), path.display())?;
            }
        }
    }
    if found == 0 {
        eprintln!("no entry matches {:?}", args.pattern);
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

fn snapshots(global: &GlobalArgs, filter: &SnapshotFilter) -> Result<ExitCode> {
    let repo = open(global)?;
    let (all, unreadable) = repo.readable_snapshots()?;
    let all: Vec<_> = all
        .into_iter()
        .filter(|s| filter.matches(&s.snapshot))
        .collect();
    for (id, error) in &unreadable {
        eprintln!("error: snapshot {id} cannot be read: {error}");
    }
    let code = if unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(code);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<10} {:<20} {:<16} {:<16} {:>10}  paths",
        "id", "time", "host", "tags", "size"
    )?;
    for entry in &all {
        let s = &entry.snapshot;
        let time = s.time.strftime("%Y-%m-%d %H:%M:%S").to_string();
        let size = s
            .summary
            .as_ref()
            .map_or(String::new(), |sum| bytes(sum.bytes_total));
        writeln!(
            out,
            "{:<10} {:<20} {:<16} {:<16} {:>10}  {}",
            entry.id.short(),
            time,
            s.hostname,
            s.tags.join(","),
            size,
            s.paths.join(" ")
        )?;
    }
    writeln!(out, "{} snapshots", all.len())?;
    Ok(code)
}

/// What a `--delta` restore reused and wrote, for the human output of `restore` and
/// `pg restore`.
pub(crate) fn delta_line(summary: &lifeboat_files::RestoreSummary) -> String {
    format!(
        "delta: {} files ({}) unchanged and kept, {} files ({}) written, of which {} copied \
         from the files they replaced and {} read from the repository",
        summary.reused_files,
        bytes(summary.reused_bytes),
        summary.written_files,
        bytes(summary.written_bytes),
        bytes(summary.local_bytes),
        bytes(summary.written_bytes.saturating_sub(summary.local_bytes)),
    )
}

fn restore(global: &GlobalArgs, args: &RestoreArgs) -> Result<ExitCode> {
    let repo = open(global)?.load_index()?;
    let entry = repo.find_snapshot(&args.snapshot)?;
    let options = RestoreOptions {
        include: args.include.clone(),
        overwrite: args.overwrite,
        delta: args.delta,
        trust_mtime: args.trust_mtime,
        workers: 0,
    };
    let progress = Arc::new(RestoreProgress::default());
    let display = progress::start_restore(progress.clone(), show_progress(global));
    let summary =
        lifeboat_files::restore(&repo, &entry.snapshot, &args.target, &options, &progress);
    display.stop();
    let summary = summary?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "type": "summary", "snapshot_id": entry.id, "summary": summary })
        );
    } else if !global.quiet {
        println!(
            "restored snapshot {}: {} files ({}), {} directories, {} other, {} hard links into {}",
            entry.id.short(),
            summary.files,
            bytes(summary.bytes),
            summary.dirs,
            summary.others,
            summary.hardlinks,
            args.target.display()
        );
        if args.delta {
            println!("{}", delta_line(&summary));
        }
    }
    if !args.include.is_empty() && summary.files + summary.dirs + summary.others == 0 {
        eprintln!(
            "warning: no entry of the snapshot matches {:?}",
            args.include
        );
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(if summary.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

fn repair_index(global: &GlobalArgs) -> Result<ExitCode> {
    let repo = open(global)?;
    let report = lifeboat_repo::repair::rebuild_index(&repo)?;
    for (id, reason) in &report.unreadable_packs {
        eprintln!("warning: pack {id} left out: {reason}");
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !global.quiet {
        println!(
            "indexed {} blobs in {} packs into {} index objects; removed {} old index objects",
            report.blobs_indexed,
            report.packs_indexed,
            report.index_files_written,
            report.index_files_removed
        );
    }
    Ok(if report.unreadable_packs.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

fn repair_snapshots(
    global: &GlobalArgs,
    options: &lifeboat_repo::repair::SnapshotRepairOptions,
) -> Result<ExitCode> {
    let repo = open(global)?.load_index()?;
    let report = lifeboat_repo::repair::repair_snapshots(
        &repo,
        options,
        &lifeboat_repo::WriterOptions::default(),
    )?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !global.quiet {
        for damaged in &report.damaged {
            match damaged.repaired {
                Some(id) => println!(
                    "snapshot {}: {} paths lost, the rest kept in snapshot {}{}",
                    damaged.original.short(),
                    damaged.lost_paths.len(),
                    id.short(),
                    if options.forget {
                        " (original removed)"
                    } else {
                        ""
                    }
                ),
                None => println!(
                    "snapshot {}: {} paths would be lost (dry run)",
                    damaged.original.short(),
                    damaged.lost_paths.len()
                ),
            }
            for path in &damaged.lost_paths {
                println!("  {path}");
            }
        }
        println!(
            "{} snapshots checked, {} damaged; {} blobs lost, {} index entries {}removed",
            report.snapshots_checked,
            report.damaged.len(),
            report.lost_blobs,
            report.index_entries_removed,
            if options.dry_run { "would be " } else { "" }
        );
        if report.index_entries_removed > 0 && !options.dry_run {
            println!("back up the same data again to store the lost blobs anew");
        }
    }
    Ok(if report.damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

fn key(global: &GlobalArgs, command: &KeyCommand) -> Result<ExitCode> {
    let repo = open(global)?;
    let new_password = |args: &NewPasswordArgs| -> Result<(password::Password, KdfParams)> {
        let password = password::obtain_new(args.new_password_file.as_deref())?;
        let kdf = if args.insecure_kdf_for_tests {
            KdfParams::insecure_for_tests()
        } else {
            KdfParams::default()
        };
        Ok((password, kdf))
    };
    match command {
        KeyCommand::List => {
            let keys = repo.keys()?;
            if global.json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|(id, k)| {
                        serde_json::json!({
                            "id": id, "current": *id == repo.key_id(), "created": k.created,
                            "hostname": k.hostname, "username": k.username,
                            "kind": if k.is_machine() { "machine" } else { "password" },
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (id, k) in &keys {
                    let mark = if *id == repo.key_id() { "*" } else { " " };
                    println!(
                        "{mark} {}  {}  {:8}  {}@{}",
                        id.short(),
                        k.created,
                        if k.is_machine() {
                            "machine"
                        } else {
                            "password"
                        },
                        k.username,
                        k.hostname
                    );
                }
            }
        }
        KeyCommand::Add(args) if args.machine => {
            let (id, token) = repo.add_machine_key(&hostname(), &username())?;
            match &args.output {
                Some(path) => {
                    write_secret_file(path, &token)?;
                    if !global.quiet {
                        println!(
                            "added machine key {}; its token is in {}",
                            id.short(),
                            path.display()
                        );
                    }
                }
                None => println!("{}", token.as_str()),
            }
        }
        KeyCommand::Add(args) => {
            let (password, kdf) = new_password(&args.password)?;
            let id = repo.add_key(password.as_bytes(), kdf, &hostname(), &username())?;
            if !global.quiet {
                println!("added key {}", id.short());
            }
        }
        KeyCommand::Remove { id } => {
            let matches: Vec<Id> = repo
                .keys()?
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k.to_hex().starts_with(id.as_str()))
                .collect();
            let [target] = matches[..] else {
                bail!(
                    "{id:?} matches {} keys; give a longer prefix (see `lifeboat key list`)",
                    matches.len()
                );
            };
            repo.remove_key(&target)?;
            if !global.quiet {
                println!("removed key {}", target.short());
            }
        }
        KeyCommand::Passwd(args) => {
            let (password, kdf) = new_password(args)?;
            let id = repo.add_key(password.as_bytes(), kdf, &hostname(), &username())?;
            repo.remove_key(&repo.key_id())?;
            if !global.quiet {
                println!(
                    "password changed: key {} replaces {}",
                    id.short(),
                    repo.key_id().short()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` readable by its owner only and writes `secret` and a newline to it; refuses
/// to replace an existing file.
fn write_secret_file(path: &Path, secret: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{secret}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn forget(
    global: &GlobalArgs,
    args: &ForgetArgs,
    defaults: &config::ForgetSection,
    prune_defaults: &config::PruneSection,
) -> Result<ExitCode> {
    let mut policy = args.policy();
    if policy.is_empty() {
        policy = policy_from_file(defaults)?;
    }
    if policy.is_empty() {
        bail!(
            "no --keep-* rule given (nor a [forget] policy in the config file): refusing to forget every snapshot"
        );
    }
    let repo = open(global)?;
    let snapshots: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|s| args.filter.matches(&s.snapshot))
        .collect();
    // Database snapshots are bases of a journal: a recovery window also keeps the base its
    // first moments replay from (see docs/maintenance.md).
    let timeline = |entry: &lifeboat_repo::SnapshotEntry| {
        lifeboat_sqlite::catalog::timeline(&entry.snapshot).or_else(|| {
            lifeboat_postgres::BackupState::of(&entry.snapshot)
                .filter(|state| state.complete)
                .map(|state| format!("postgres {}", state.stream))
        })
    };
    let decisions = retention::apply_with_timelines(
        &snapshots,
        &policy,
        args.group_by,
        &jiff::tz::TimeZone::system(),
        &timeline,
    );
    let removed: Vec<_> = decisions.iter().filter(|d| !d.keep).collect();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&decisions)?);
    } else if !global.quiet {
        let by_id: HashMap<Id, &lifeboat_repo::SnapshotEntry> =
            snapshots.iter().map(|s| (s.id, s)).collect();
        let mut out = std::io::stdout().lock();
        let mut group = None;
        for decision in &decisions {
            if group != Some(&decision.group) {
                writeln!(out, "{}:", decision.group)?;
                group = Some(&decision.group);
            }
            let snapshot = &by_id[&decision.id].snapshot;
            let time = snapshot
                .time
                .to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S");
            let verdict = if decision.keep { "keep" } else { "remove" };
            writeln!(
                out,
                "  {}  {time}  {verdict:<6}  {}",
                decision.id.short(),
                decision.reasons.join(", ")
            )?;
        }
        writeln!(
            out,
            "{} snapshots: {} kept, {} {}",
            decisions.len(),
            decisions.len() - removed.len(),
            removed.len(),
            if args.dry_run {
                "would be removed (dry run)"
            } else {
                "removed"
            }
        )?;
    }
    if !args.dry_run {
        for decision in &removed {
            repo.forget_snapshot(&decision.id)?;
        }
    }
    if args.prune {
        let prune_args = PruneArgs {
            max_unused: None,
            max_repack_size: None,
            grace: None,
            dry_run: args.dry_run,
        };
        return prune(global, &prune_args, prune_defaults);
    }
    Ok(ExitCode::SUCCESS)
}

fn man_pages(dir: Option<&Path>) -> Result<ExitCode> {
    let command = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("lifeboat".to_string(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("lifeboat-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone()
                .display_name(name)
                .version(env!("CARGO_PKG_VERSION")),
        ));
    }
    for (name, page) in pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.clone())
            .render(&mut roff)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(
    global: &GlobalArgs,
    args: &PruneArgs,
    defaults: &config::PruneSection,
) -> Result<ExitCode> {
    let max_unused = match (args.max_unused, &defaults.max_unused) {
        (Some(value), _) => value,
        (None, Some(text)) => {
            parse_max_unused(text).map_err(|e| anyhow::anyhow!("[prune] max_unused: {e}"))?
        }
        (None, None) => 0.05,
    };
    let max_repack_bytes = match (args.max_repack_size, &defaults.max_repack_size) {
        (Some(value), _) => Some(value),
        (None, Some(text)) => {
            Some(parse_size(text).map_err(|e| anyhow::anyhow!("[prune] max_repack_size: {e}"))?)
        }
        (None, None) => None,
    };
    let grace = match (args.grace, &defaults.grace) {
        (Some(value), _) => value,
        (None, Some(text)) => {
            parse_grace(text).map_err(|e| anyhow::anyhow!("[prune] grace: {e}"))?
        }
        (None, None) => lifeboat_repo::prune::DEFAULT_GRACE,
    };
    let repo = open(global)?;
    let options = lifeboat_repo::prune::PruneOptions {
        max_unused,
        max_repack_bytes,
        grace,
        dry_run: args.dry_run,
        ..Default::default()
    };
    let report = lifeboat_repo::prune::prune(&repo, &options)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if global.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let local = |t: jiff::Timestamp| {
        t.to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let would = if args.dry_run { "would be " } else { "" };
    for sweep in &report.swept {
        println!(
            "plan {} (marked {}): {} packs {would}deleted ({}), {} kept because newer snapshots use them",
            sweep.plan.short(),
            sweep.marked.map(local).unwrap_or_default(),
            sweep.packs_deleted,
            bytes(sweep.bytes_freed),
            sweep.packs_rescued,
        );
    }
    for (plan, due) in &report.waiting {
        println!(
            "plan {}: its packs are deleted by a prune run after {}",
            plan.short(),
            local(*due)
        );
    }
    let m = &report.mark;
    println!(
        "{} snapshots use {} blobs ({}); {} blobs ({}) are unused",
        m.snapshots,
        m.blobs_used,
        bytes(m.bytes_used),
        m.blobs_unused,
        bytes(m.bytes_unused)
    );
    println!(
        "{} packs: {} unused, {} to repack, {} unindexed leftovers, {} taken back into the index",
        m.packs, m.packs_unused, m.packs_repacked, m.packs_unindexed, m.packs_reindexed
    );
    if m.blobs_repacked > 0 {
        println!(
            "repack: {} blobs {}copied{}",
            m.blobs_repacked,
            would,
            if args.dry_run {
                String::new()
            } else {
                format!(" ({} written)", bytes(m.bytes_repack_written))
            }
        );
    }
    match (&m.plan, m.sweep_after) {
        (Some(plan), Some(after)) => println!(
            "{} marked for deletion (plan {}); a prune run after {} deletes it",
            bytes(m.bytes_to_free),
            plan.short(),
            local(after)
        ),
        _ if args.dry_run && m.bytes_to_free > 0 => println!(
            "{} would be marked for deletion; a prune run one grace period later would delete it",
            bytes(m.bytes_to_free)
        ),
        _ => println!("nothing new to free"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the record of verified packs lives: the user's cache, one file per repository.
fn verified_record(repo_id: &Id) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(
        base.join("lifeboat")
            .join(repo_id.to_hex())
            .join("verified-packs.json"),
    )
}

fn check(global: &GlobalArgs, args: &CheckArgs) -> Result<ExitCode> {
    let repo = open(global)?.load_index()?;
    let read = match (args.read_data, args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(subset)) => subset,
        (false, None) => ReadData::None,
    };
    let record_path = verified_record(&repo.config().id);
    let mut record: HashMap<Id, i64> = record_path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let progress = Arc::new(lifeboat_repo::check::CheckProgress::default());
    let display = progress::start_check(progress.clone(), show_progress(global));
    let report = lifeboat_repo::check::check(&repo, read, &record, &progress);
    display.stop();
    let report = report?;
    if !report.verified.is_empty()
        && let Some(path) = &record_path
    {
        let now = jiff::Timestamp::now().as_second();
        for id in &report.verified {
            record.insert(*id, now);
        }
        // The record only steers which packs go first next time: failing to keep it is not
        // worth failing the check for.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, serde_json::to_vec(&record)?) {
            eprintln!(
                "warning: cannot record verified packs in {}: {e}",
                path.display()
            );
        }
    }
    if global.json {
        // One line, last, after the status lines (as for backup and restore).
        let mut value = serde_json::to_value(&report)?;
        value["type"] = "summary".into();
        println!("{value}");
    } else if !global.quiet {
        println!(
            "checked {} snapshots, {} trees, {} packs; read {} packs ({}), verified {} blobs",
            report.snapshots,
            report.trees,
            report.packs,
            report.packs_read,
            bytes(report.bytes_read),
            report.blobs_verified
        );
        if !report.unindexed_packs.is_empty() {
            println!(
                "{} packs are not in any index (left by interrupted backups; harmless, prune removes them)",
                report.unindexed_packs.len()
            );
        }
        if report.packs_awaiting_deletion > 0 {
            println!(
                "{} packs are marked by prune and will be deleted by a later prune run",
                report.packs_awaiting_deletion
            );
        }
    }
    for problem in &report.errors {
        eprintln!("error: {}: {}", problem.object, problem.message);
    }
    if report.is_clean() {
        if !global.quiet && !global.json {
            println!("no errors found");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("check found {} problems", report.errors.len());
        Ok(ExitCode::FAILURE)
    }
}

fn parse_id(id: Option<&String>) -> Result<Id> {
    let text = id.context("this object kind needs an id")?;
    text.parse::<Id>().map_err(anyhow::Error::msg)
}

fn cat(global: &GlobalArgs, args: &CatArgs) -> Result<ExitCode> {
    let repo = open(global)?;
    let value: serde_json::Value = match args.kind.as_str() {
        "config" => {
            let mut config = serde_json::to_value(repo.config())?;
            // The blob-id key would let a reader of this output confirm guesses about content.
            config["content_keys"] = serde_json::json!("<redacted>");
            config
        }
        "keys" => serde_json::to_value(repo.list_ids(KEYS_PREFIX)?)?,
        "key" => {
            let id = parse_id(args.id.as_ref())?;
            serde_json::from_slice(&repo.storage().get(&format!("{KEYS_PREFIX}{id}"))?)?
        }
        "snapshot" => {
            let query = args.id.as_deref().context("cat snapshot needs an id")?;
            serde_json::to_value(repo.find_snapshot(query)?)?
        }
        "index" => {
            let id = parse_id(args.id.as_ref())?;
            let file = repo.load_index_file(&id)?;
            serde_json::json!({
                "supersedes": file.supersedes,
                "packs": file.packs.iter().map(|p| serde_json::json!({
                    "id": p.id,
                    "blobs": p.entries.iter().map(entry_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        }
        "pack" => {
            let id = parse_id(args.id.as_ref())?;
            let (_, entries) = repo.read_pack_header(&id)?;
            serde_json::json!({ "id": id, "blobs": entries.iter().map(entry_json).collect::<Vec<_>>() })
        }
        "blob" | "tree" => {
            let id = parse_id(args.id.as_ref())?;
            let repo = repo.load_index()?;
            if args.kind == "tree" {
                serde_json::to_value(repo.read_tree(&id)?)?
            } else {
                std::io::stdout().write_all(&repo.read_blob(&id)?)?;
                return Ok(ExitCode::SUCCESS);
            }
        }
        other => bail!(
            "unknown object kind {other:?}: use config, keys, key, snapshot, index, pack, blob or tree"
        ),
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

/// Global arguments for a second repository (`init --copy-content-keys-from`, `copy --to`):
/// its own location and password source, the rest as given.
fn other_repository(
    global: &GlobalArgs,
    repo: &str,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
) -> GlobalArgs {
    GlobalArgs {
        repo: Some(repo.to_string()),
        password_file,
        password_command,
        json: global.json,
        quiet: global.quiet,
        verbose: global.verbose,
        config: global.config.clone(),
        remote: remote::ServerArgs::default(),
    }
}

fn copy(global: &GlobalArgs, args: &CopyArgs) -> Result<ExitCode> {
    let source = open(global)?.load_index()?;
    if args.to_password_file.is_none()
        && args.to_password_command.is_none()
        && std::io::stdin().is_terminal()
    {
        eprintln!("destination repository {}:", args.to);
    }
    let to = other_repository(
        global,
        &args.to,
        args.to_password_file.clone(),
        args.to_password_command.clone(),
    );
    let destination = open(&to).with_context(|| {
        format!(
            "cannot open the destination {}; create it with `lifeboat --repo {} init \
             --copy-content-keys-from {}`",
            args.to,
            args.to,
            location(global).unwrap_or_default()
        )
    })?;
    lifeboat_repo::check_content_keys(&source, &destination)?;
    let snapshots = if args.snapshots.is_empty() {
        source.snapshots()?
    } else {
        let mut chosen = Vec::new();
        for query in &args.snapshots {
            let entry = source.find_snapshot(query)?;
            if !chosen
                .iter()
                .any(|e: &lifeboat_repo::SnapshotEntry| e.id == entry.id)
            {
                chosen.push(entry);
            }
        }
        chosen
    };
    let snapshots: Vec<_> = snapshots
        .into_iter()
        .filter(|s| args.filter.matches(&s.snapshot))
        .collect();
    let mut destination = destination.load_index()?;
    let progress = Arc::new(lifeboat_repo::CopyProgress::default());
    let display = progress::start_copy(progress.clone(), show_progress(global));
    let stats = lifeboat_repo::copy_snapshots(
        &source,
        &mut destination,
        &snapshots,
        &lifeboat_repo::CopyOptions {
            progress: Some(progress),
            ..Default::default()
        },
    );
    display.stop();
    let stats = stats?;
    let requests = |s: lifeboat_storage::RequestStats| {
        serde_json::json!({
            "put": s.puts, "get": s.gets, "list": s.lists, "stat": s.stats,
            "delete": s.deletes, "retries": s.retries,
        })
    };
    if global.json {
        let value = serde_json::json!({
            "type": "summary",
            "copied": stats.copied.iter().map(|c| serde_json::json!({
                "source": c.source, "destination": c.destination,
            })).collect::<Vec<_>>(),
            "skipped": stats.skipped,
            "blobs_copied": stats.blobs_copied,
            "bytes_copied": stats.bytes_copied,
            "blobs_present": stats.blobs_present,
            "packs_written": stats.packs_written,
            "requests": {
                "source": requests(source.storage().request_stats()),
                "destination": requests(destination.storage().request_stats()),
            },
        });
        println!("{value}");
    } else if !global.quiet {
        for c in &stats.copied {
            println!(
                "copied snapshot {} as {}",
                c.source.short(),
                c.destination.short()
            );
        }
        println!(
            "{} snapshots copied, {} already there; {} blobs ({}) transferred, {} already there, {} packs written",
            stats.copied.len(),
            stats.skipped.len(),
            stats.blobs_copied,
            bytes(stats.bytes_copied),
            stats.blobs_present,
            stats.packs_written
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_json(e: &lifeboat_repo::pack::PackEntry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "type": format!("{:?}", e.blob_type).to_lowercase(),
        "compression": format!("{:?}", e.compression).to_lowercase(),
        "offset": e.offset,
        "stored_length": e.stored_len,
        "length": e.raw_len,
    })
}

/// Human-readable byte count (binary units).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

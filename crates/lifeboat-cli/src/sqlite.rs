//! `lifeboat sqlite …`: continuous protection of SQLite databases (see docs/sqlite.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_sqlite::retention as journal_retention;
use lifeboat_sqlite::{DestinationState, ReplicateOptions, Replicator, RestorePoint, Selector};

use crate::{GlobalArgs, config};

#[derive(Subcommand)]
pub enum SqliteCommand {
    /// Replicate live databases (in WAL mode) into the repository until stopped (Ctrl-C or
    /// SIGTERM): new transactions every --interval, snapshots every --snapshot-interval.
    Replicate(ReplicateArgs),
    /// Rebuild a database as of a moment (or the latest state) into a new file.
    Restore(RestoreArgs),
    /// What is restorable for each database, and the lag behind the live file when it is here.
    Status(StatusArgs),
    /// Delete journal segments no restore within a window needs (snapshots are kept or
    /// forgotten by `lifeboat forget`).
    ForgetSegments(ForgetSegmentsArgs),
}

#[derive(Args)]
pub struct ReplicateArgs {
    /// Database files (each must be in WAL mode); default: `databases` in the `[sqlite]`
    /// section of the config file.
    databases: Vec<PathBuf>,
    /// Another repository to replicate into, besides --repo (repeatable): each has its own
    /// queue and lag, and one that is down does not hold back the others. Its password comes
    /// from a --to-password-file or --to-password-command given after it (before the next
    /// --to), else from the main password source.
    #[arg(long = "to", value_name = "REPO")]
    to: Vec<String>,
    /// File whose first line is the password of the --to repository it follows.
    #[arg(long = "to-password-file", value_name = "FILE")]
    to_password_file: Vec<PathBuf>,
    /// Shell command printing the password of the --to repository it follows.
    #[arg(long = "to-password-command", value_name = "COMMAND")]
    to_password_command: Vec<String>,
    /// How often new transactions are shipped (ms, s, m, h): the most a crash can lose
    /// [default: 1s].
    #[arg(long, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// How often a whole-database snapshot is taken [default: 1h].
    #[arg(long, value_parser = parse_interval)]
    snapshot_interval: Option<Duration>,
    /// Checkpoint (PASSIVE) once the WAL holds this many frames [default: 1000].
    #[arg(long)]
    checkpoint_frames: Option<u64>,
    /// Keep at most this many MiB of WAL on local disk for a destination that is unreachable
    /// or slow; past it, that destination stops holding the WAL and resyncs with a new
    /// generation when it answers (0: no limit) [default: 1024].
    #[arg(long)]
    max_lag_mib: Option<u64>,
    /// Directory for the temporary copy a snapshot is read from (needs room for the database).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Write each database's replication status (per destination) as JSON to this file after
    /// every round (`{database}` in the name is replaced by the database's file name).
    #[arg(long)]
    status_file: Option<String>,
    /// Tags for the snapshots.
    #[arg(long = "tag")]
    tags: Vec<String>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The database as it was replicated (its path), or use --stream.
    database: Option<PathBuf>,
    /// Select the database by its journal stream id (from `sqlite status`).
    #[arg(long, conflicts_with = "database")]
    stream: Option<String>,
    /// New file to write (must not exist).
    #[arg(long)]
    to: PathBuf,
    /// Restore the state as of this moment (RFC 3339, e.g. 2026-11-28T09:30:00Z).
    #[arg(long, conflicts_with = "latest")]
    time: Option<jiff::Timestamp>,
    /// Restore everything shipped (the default).
    #[arg(long)]
    latest: bool,
    /// Keep the restored file current as a read-only replica until stopped (Ctrl-C, SIGTERM);
    /// readers should open it read-only.
    #[arg(long, conflicts_with = "time")]
    follow: bool,
    /// How often follow mode looks for new segments.
    #[arg(long, default_value = "1s", value_parser = parse_interval, requires = "follow")]
    interval: Duration,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Only these databases.
    databases: Vec<PathBuf>,
    /// Also (or, with the config file's destinations, instead) this repository (repeatable);
    /// its password comes from the --to-password-file or --to-password-command after it.
    #[arg(long = "to", value_name = "REPO")]
    to: Vec<String>,
    /// File whose first line is the password of the --to repository it follows.
    #[arg(long = "to-password-file", value_name = "FILE")]
    to_password_file: Vec<PathBuf>,
    /// Shell command printing the password of the --to repository it follows.
    #[arg(long = "to-password-command", value_name = "COMMAND")]
    to_password_command: Vec<String>,
}

#[derive(Args)]
pub struct ForgetSegmentsArgs {
    /// Keep every moment of this last period restorable (e.g. 7d, 12h).
    #[arg(long)]
    keep_within: String,
    /// Only these databases (default: all).
    databases: Vec<PathBuf>,
    /// Show what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

/// Parses `500ms`, `1s`, `5m`, `2h`, `1d`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not an interval: use forms like 500ms, 1s, 5m, 1h");
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(bad());
    }
    Ok(duration)
}

/// What the configuration file says about SQLite replication, and how the command line was
/// given (to pair each `--to` with the password flags after it).
pub struct FileJob<'a> {
    pub section: &'a config::SqliteSection,
    /// The main repository came from the file (not from --repo or the environment).
    pub repo_from_file: bool,
    pub matches: Option<&'a clap::ArgMatches>,
}

pub fn run(global: &GlobalArgs, command: &SqliteCommand, job: &FileJob) -> Result<ExitCode> {
    match command {
        SqliteCommand::Replicate(args) => replicate(global, args, job),
        SqliteCommand::Restore(args) => restore(global, args),
        SqliteCommand::Status(args) => status(global, args, job),
        SqliteCommand::ForgetSegments(args) => forget_segments(global, args),
    }
}

/// A repository to replicate into (or report on), with its password source.
struct DestinationSpec {
    location: String,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
}

/// Pairs each `--to` with the `--to-password-file`/`--to-password-command` given after it
/// (before the next `--to`).
fn paired_destinations(
    to: &[String],
    files: &[PathBuf],
    commands: &[String],
    matches: Option<&clap::ArgMatches>,
) -> Result<Vec<DestinationSpec>> {
    let indices = |id: &str| -> Vec<usize> {
        matches
            .and_then(|m| m.indices_of(id))
            .map(|i| i.collect())
            .unwrap_or_default()
    };
    let to_at = indices("to");
    let owner = |at: usize, flag: &str| -> Result<usize> {
        to_at.iter().rposition(|&t| t < at).with_context(|| {
            format!("{flag} must follow the --to repository whose password it gives")
        })
    };
    let mut specs: Vec<DestinationSpec> = to
        .iter()
        .map(|location| DestinationSpec {
            location: location.clone(),
            password_file: None,
            password_command: None,
        })
        .collect();
    if to_at.len() != to.len() && !(files.is_empty() && commands.is_empty()) {
        bail!("cannot tell which --to each password flag belongs to");
    }
    for (file, at) in files.iter().zip(indices("to_password_file")) {
        let spec = &mut specs[owner(at, "--to-password-file")?];
        if spec.password_file.is_some() {
            bail!("two --to-password-file for {}", spec.location);
        }
        spec.password_file = Some(file.clone());
    }
    for (command, at) in commands.iter().zip(indices("to_password_command")) {
        let spec = &mut specs[owner(at, "--to-password-command")?];
        if spec.password_command.is_some() || spec.password_file.is_some() {
            bail!("{} has more than one password source", spec.location);
        }
        spec.password_command = Some(command.clone());
    }
    Ok(specs)
}

/// The destinations, by precedence: --repo (flag or environment) and every --to; else the
/// config file's `[[sqlite.destinations]]`; else the config file's `repository`.
fn destinations(
    global: &GlobalArgs,
    to: Vec<DestinationSpec>,
    job: &FileJob,
) -> Result<Vec<DestinationSpec>> {
    let main = || {
        global.repo.clone().map(|location| DestinationSpec {
            location,
            password_file: None,
            password_command: None,
        })
    };
    let explicit = global.repo.is_some() && !job.repo_from_file;
    let mut list = Vec::new();
    if explicit || !to.is_empty() {
        if explicit {
            list.extend(main());
        }
        list.extend(to);
    } else if !job.section.destinations.is_empty() {
        for d in &job.section.destinations {
            list.push(DestinationSpec {
                location: d.repository.clone(),
                password_file: d.password_file.clone(),
                password_command: d.password_command.clone(),
            });
        }
    } else {
        list.extend(main());
    }
    if list.is_empty() {
        bail!(
            "no repository given: use --repo (or LIFEBOAT_REPOSITORY), --to, or [[sqlite.destinations]] in the config file"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for spec in &list {
        if !seen.insert(spec.location.clone()) {
            bail!("repository {} is named twice", spec.location);
        }
    }
    Ok(list)
}

/// A destination's password; without its own password source it uses the main one.
fn destination_password(
    global: &GlobalArgs,
    spec: &DestinationSpec,
) -> Result<crate::password::Password> {
    let (file, command) = if spec.password_file.is_none() && spec.password_command.is_none() {
        (
            global.password_file.clone(),
            global.password_command.clone(),
        )
    } else {
        (spec.password_file.clone(), spec.password_command.clone())
    };
    let other = crate::other_repository(global, &spec.location, file, command);
    crate::password::obtain(&other, false)
        .with_context(|| format!("no password for repository {}", spec.location))
}

/// Opens a destination; without its own password source it uses the main one.
fn open_destination(
    global: &GlobalArgs,
    spec: &DestinationSpec,
) -> Result<lifeboat_repo::Repository> {
    let (file, command) = if spec.password_file.is_none() && spec.password_command.is_none() {
        (
            global.password_file.clone(),
            global.password_command.clone(),
        )
    } else {
        (spec.password_file.clone(), spec.password_command.clone())
    };
    let other = crate::other_repository(global, &spec.location, file, command);
    crate::open(&other).with_context(|| format!("cannot open repository {}", spec.location))
}

fn replicate(global: &GlobalArgs, args: &ReplicateArgs, job: &FileJob) -> Result<ExitCode> {
    let file = job.section;
    let from_file = |name: &str, text: &Option<String>| -> Result<Option<Duration>> {
        text.as_deref()
            .map(|t| parse_interval(t).map_err(|e| anyhow::anyhow!("[sqlite] {name}: {e}")))
            .transpose()
    };
    let databases = if args.databases.is_empty() {
        file.databases.clone()
    } else {
        args.databases.clone()
    };
    if databases.is_empty() {
        bail!(
            "no database given: name the database files, or list them as `databases` in the [sqlite] section of the config file"
        );
    }
    let to = paired_destinations(
        &args.to,
        &args.to_password_file,
        &args.to_password_command,
        job.matches,
    )?;
    let specs = destinations(global, to, job)?;
    // Password sources are read once, now: one that fails is a mistake to report at once,
    // and a destination that does not answer yet is retried with the same password.
    let mut passwords = Vec::new();
    for spec in &specs {
        passwords.push((spec.location.clone(), destination_password(global, spec)?));
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let max_lag_mib = args.max_lag_mib.or(file.max_lag_mib).unwrap_or(1024);
    let tags = if args.tags.is_empty() {
        file.tags.clone()
    } else {
        args.tags.clone()
    };
    let options = ReplicateOptions {
        interval: args
            .interval
            .or(from_file("interval", &file.interval)?)
            .unwrap_or(Duration::from_secs(1)),
        snapshot_interval: args
            .snapshot_interval
            .or(from_file("snapshot_interval", &file.snapshot_interval)?)
            .unwrap_or(Duration::from_secs(3600)),
        checkpoint_frames: args
            .checkpoint_frames
            .or(file.checkpoint_frames)
            .unwrap_or(1000),
        spool_dir: args.spool_dir.clone().or_else(|| file.spool_dir.clone()),
        max_lag_bytes: (max_lag_mib > 0).then_some(max_lag_mib << 20),
        hostname: crate::hostname(),
        username: crate::username(),
        tags,
        ..ReplicateOptions::default()
    };
    let status_pattern = args
        .status_file
        .clone()
        .or_else(|| file.status_file.clone());
    // One thread per database (each with its own connections, and one more per destination),
    // each with its own view of every destination's index.
    let mut threads = Vec::new();
    for database in &databases {
        let mut destinations = Vec::new();
        for (location, password) in &passwords {
            // A destination that does not answer (or is not mounted) is retried in the
            // background; a wrong password or refused credentials stop the command here.
            destinations.push(
                lifeboat_sqlite::open_destination(location.clone(), location, password.clone())
                    .with_context(|| format!("cannot open repository {location}"))?,
            );
        }
        let mut replicator = Replicator::open_with(database, destinations, options.clone())
            .with_context(|| format!("cannot start replicating {}", database.display()))?;
        if !global.quiet && !global.json {
            let status = replicator.status();
            for d in &status.destinations {
                eprintln!(
                    "replicating {} to {} (stream {}, generation {}{})",
                    status.database,
                    d.repository,
                    d.stream,
                    d.generation,
                    match d.state {
                        DestinationState::Live => String::new(),
                        DestinationState::Released => format!(
                            "; not answering, retried in the background: {}",
                            d.last_error.as_deref().unwrap_or("unknown error")
                        ),
                        DestinationState::NotOpen => format!(
                            "; cannot be opened yet, retried in the background: {}",
                            d.last_error.as_deref().unwrap_or("unknown error")
                        ),
                    }
                );
            }
        }
        let stop = stop.clone();
        let status_file = status_pattern.as_ref().map(|pattern| {
            let name = database
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            PathBuf::from(pattern.replace("{database}", &name))
        });
        threads.push(std::thread::spawn(move || {
            replicator.run(&stop, |status| {
                if let Some(path) = &status_file {
                    write_status(path, status);
                }
            });
            replicator.status()
        }));
    }
    let mut statuses = Vec::new();
    for thread in threads {
        statuses.push(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a replication thread panicked"))?,
        );
    }
    if global.json {
        println!("{}", serde_json::to_string(&statuses)?);
    } else if !global.quiet {
        for s in &statuses {
            for d in &s.destinations {
                eprintln!(
                    "stopped {} to {}: {} segments ({} bytes), {} snapshots; {} checkpoints",
                    s.database,
                    d.repository,
                    d.segments_shipped,
                    d.bytes_shipped,
                    d.snapshots_taken,
                    s.checkpoints
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces the status file atomically (write, then rename).
fn write_status(path: &std::path::Path, status: &lifeboat_sqlite::ReplicationStatus) {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let json = serde_json::to_vec_pretty(status).expect("status serialises");
    if let Err(e) = std::fs::write(&temp, json).and_then(|()| std::fs::rename(&temp, path)) {
        tracing::warn!("cannot write status file {}: {e}", path.display());
    }
}

fn restore(global: &GlobalArgs, args: &RestoreArgs) -> Result<ExitCode> {
    let selector = match (&args.database, &args.stream) {
        (Some(path), None) => Selector::path(path),
        (None, Some(stream)) => Selector::Stream(stream.clone()),
        _ => bail!("name the database to restore (its path as replicated) or pass --stream"),
    };
    let point = match args.time {
        Some(time) => RestorePoint::Time(time),
        None => RestorePoint::Latest,
    };
    let repo = crate::open(global)?.load_index()?;
    if args.follow {
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let _ = ctrlc::set_handler(move || {
                if stop.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            });
        }
        let mut follower = lifeboat_sqlite::Follower::start(repo, selector, &args.to)?;
        if !global.quiet && !global.json {
            eprintln!(
                "replica {} at {}; following (Ctrl-C stops)",
                args.to.display(),
                follower.state().captured
            );
        }
        follower.run(args.interval, &stop);
        if global.json {
            println!("{}", serde_json::to_string(follower.state())?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = lifeboat_sqlite::restore(&repo, &selector, &args.to, point)?;
    if global.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if !global.quiet {
        println!(
            "restored {} as of {} to {} ({} bytes; snapshot {} + {} segments, {} transactions)",
            selector,
            outcome.captured,
            outcome.path.display(),
            outcome.bytes,
            outcome.snapshot.short(),
            outcome.segments,
            outcome.transactions
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(global: &GlobalArgs, args: &StatusArgs, job: &FileJob) -> Result<ExitCode> {
    let to = paired_destinations(
        &args.to,
        &args.to_password_file,
        &args.to_password_command,
        job.matches,
    )?;
    let specs = destinations(global, to, job)?;
    let several = specs.len() > 1;
    let mut all = Vec::new();
    for spec in &specs {
        let repo = open_destination(global, spec)?;
        let mut found = Vec::new();
        if args.databases.is_empty() {
            found = lifeboat_sqlite::status::status(&repo, None)?;
        } else {
            for database in &args.databases {
                let one = lifeboat_sqlite::status::status(&repo, Some(&Selector::path(database)))?;
                if one.is_empty() {
                    bail!(
                        "repository {} holds nothing of {}; start `lifeboat sqlite replicate` on it",
                        spec.location,
                        database.display()
                    );
                }
                found.extend(one);
            }
        }
        for s in &mut found {
            s.repository = Some(spec.location.clone());
        }
        all.extend(found);
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &all {
        match (&s.repository, several) {
            (Some(repository), true) => println!("{} in {repository}", s.database),
            _ => println!("{}", s.database),
        }
        println!("  stream          {}", s.stream);
        println!(
            "  generation      {} ({} snapshots, {} segments)",
            s.generation, s.snapshots, s.segments
        );
        println!(
            "  restorable      {} .. {}",
            s.restorable_from, s.restorable_to
        );
        match &s.lag {
            Some(lag) => println!(
                "  lag             {} bytes, {:.1} s",
                lag.bytes, lag.seconds
            ),
            None => println!("  lag             unknown (the database is not on this machine)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn forget_segments(global: &GlobalArgs, args: &ForgetSegmentsArgs) -> Result<ExitCode> {
    let span = lifeboat_repo::retention::parse_duration(&args.keep_within)
        .map_err(|e| anyhow::anyhow!(e))?;
    let now = jiff::Zoned::now();
    let window_start = now
        .checked_sub(span)
        .context("the --keep-within period reaches before year -9999")?
        .timestamp();
    let repo = crate::open(global)?;
    let snapshots = lifeboat_sqlite::catalog::database_snapshots(&repo, None)?;
    let selected: Vec<Selector> = args.databases.iter().map(|d| Selector::path(d)).collect();
    let mut streams: Vec<String> = snapshots
        .iter()
        .filter(|s| {
            selected.is_empty()
                || selected.iter().any(|sel| match sel {
                    Selector::Path(p) => *p == s.state.database,
                    Selector::Stream(id) => *id == s.state.stream,
                })
        })
        .map(|s| s.state.stream.clone())
        .collect();
    streams.sort();
    streams.dedup();
    let mut plans = Vec::new();
    for stream in streams {
        let plan = journal_retention::plan_segments(&repo, &stream, &snapshots, window_start)?;
        if !args.dry_run {
            journal_retention::apply_segments(&repo, &plan)?;
        }
        plans.push(plan);
    }
    if global.json {
        println!("{}", serde_json::to_string(&plans)?);
    } else if !global.quiet {
        for plan in &plans {
            println!(
                "stream {}: {} {} segments, kept {}",
                plan.stream,
                if args.dry_run {
                    "would delete"
                } else {
                    "deleted"
                },
                plan.delete.len(),
                plan.keep
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5").is_err());
        assert!(parse_interval("s").is_err());
    }
}

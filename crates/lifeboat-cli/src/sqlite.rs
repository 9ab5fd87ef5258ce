//! `lifeboat sqlite …`: continuous protection of SQLite databases (see docs/sqlite.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_sqlite::retention as journal_retention;
use lifeboat_sqlite::{ReplicateOptions, Replicator, RestorePoint, Selector};

use crate::GlobalArgs;

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
    /// Database files (each must be in WAL mode).
    #[arg(required = true)]
    databases: Vec<PathBuf>,
    /// How often new transactions are shipped (ms, s, m, h): the most a crash can lose.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// How often a whole-database snapshot is taken.
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    snapshot_interval: Duration,
    /// Checkpoint (PASSIVE) once the WAL holds this many frames.
    #[arg(long, default_value_t = 1000)]
    checkpoint_frames: u64,
    /// While the repository is unreachable, keep at most this many MiB of unshipped WAL on local
    /// disk; past it, stop holding the WAL and resync with a new generation later (0: no limit).
    #[arg(long, default_value_t = 1024)]
    max_lag_mib: u64,
    /// Directory for the temporary copy a snapshot is read from (needs room for the database).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Write each database's replication status as JSON to this file after every round
    /// (`{database}` in the name is replaced by the database's file name).
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

pub fn run(global: &GlobalArgs, command: &SqliteCommand) -> Result<ExitCode> {
    match command {
        SqliteCommand::Replicate(args) => replicate(global, args),
        SqliteCommand::Restore(args) => restore(global, args),
        SqliteCommand::Status(args) => status(global, args),
        SqliteCommand::ForgetSegments(args) => forget_segments(global, args),
    }
}

fn replicate(global: &GlobalArgs, args: &ReplicateArgs) -> Result<ExitCode> {
    let repo = crate::open(global)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let options = ReplicateOptions {
        interval: args.interval,
        snapshot_interval: args.snapshot_interval,
        checkpoint_frames: args.checkpoint_frames,
        spool_dir: args.spool_dir.clone(),
        max_lag_bytes: (args.max_lag_mib > 0).then_some(args.max_lag_mib << 20),
        hostname: crate::hostname(),
        username: crate::username(),
        tags: args.tags.clone(),
        ..ReplicateOptions::default()
    };
    // One thread per database, each with its own connections and view of the index.
    let mut threads = Vec::new();
    for database in &args.databases {
        let indexed = repo.clone().load_index()?;
        let mut replicator = Replicator::open(database, indexed, options.clone())
            .with_context(|| format!("cannot start replicating {}", database.display()))?;
        if !global.quiet && !global.json {
            let status = replicator.status();
            eprintln!(
                "replicating {} (stream {}, generation {})",
                status.database, status.stream, status.generation
            );
        }
        let stop = stop.clone();
        let status_file = args.status_file.as_ref().map(|pattern| {
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
            replicator.status().clone()
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
            eprintln!(
                "stopped {}: {} segments ({} bytes), {} snapshots, {} checkpoints",
                s.database, s.segments_shipped, s.bytes_shipped, s.snapshots_taken, s.checkpoints
            );
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

fn status(global: &GlobalArgs, args: &StatusArgs) -> Result<ExitCode> {
    let repo = crate::open(global)?;
    let mut all = Vec::new();
    if args.databases.is_empty() {
        all = lifeboat_sqlite::status::status(&repo, None)?;
    } else {
        for database in &args.databases {
            let found = lifeboat_sqlite::status::status(&repo, Some(&Selector::path(database)))?;
            if found.is_empty() {
                bail!(
                    "the repository holds nothing of {}; start `lifeboat sqlite replicate` on it",
                    database.display()
                );
            }
            all.extend(found);
        }
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &all {
        println!("{}", s.database);
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

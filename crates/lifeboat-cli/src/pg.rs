//! `lifeboat pg …`: PostgreSQL WAL archiving, base backups, point-in-time restore, checks.
//! Thin glue over `lifeboat_postgres`; see docs/postgres.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_files::{BackupProgress, RestoreProgress};
use lifeboat_postgres::archive::{self, GetOutcome, PushOutcome};
use lifeboat_postgres::{ConnectOptions, Lsn, RecoveryTarget};

use crate::GlobalArgs;

#[derive(Subcommand)]
pub enum PgCommand {
    /// Archive one WAL file (for archive_command = 'lifeboat pg archive-push %p'). Exits 0
    /// only once the file is durably stored.
    ArchivePush(ArchivePushArgs),
    /// Fetch one archived WAL file (for restore_command = 'lifeboat pg archive-get %f %p').
    /// Exits 1 without a message when the archive has no such file; on an error (repository
    /// unreachable) 255, which makes PostgreSQL abort recovery rather than end it early (1 in
    /// standby mode, where PostgreSQL retries).
    ArchiveGet(ArchiveGetArgs),
    /// Take a base backup of a running cluster (PostgreSQL 15 or newer).
    Backup(PgBackupArgs),
    /// Write a data directory that recovers to a point in time when PostgreSQL starts on it.
    Restore(PgRestoreArgs),
    /// Verify that the archived WAL has no gap from the oldest base backup to the newest file.
    Check(StreamArgs),
    /// Last archived segment, last base backup and, with --connect, the archive lag.
    Status(PgStatusArgs),
    /// Keep the newest N base backups and the WAL they need; forget older backups and delete
    /// older WAL (their data is freed by `lifeboat prune`).
    Expire(PgExpireArgs),
}

#[derive(Args)]
pub struct PgExpireArgs {
    /// How many complete base backups to keep (at least 1).
    #[arg(long, value_name = "N", required_unless_present = "keep_within")]
    keep: Option<usize>,
    /// Keep every moment of this recovery window restorable (e.g. 7d): the backups that
    /// stopped within it and the newest one before it, with the WAL from that one's start.
    #[arg(long, value_name = "DURATION", value_parser = lifeboat_repo::retention::parse_duration)]
    keep_within: Option<jiff::Span>,
    /// Show what would be forgotten and deleted, change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    stream: StreamArgs,
}

#[derive(Args)]
pub struct StreamArgs {
    /// The cluster's stream (`pg-<system identifier>`); default: the data directory's cluster
    /// for archive commands, the only cluster in the repository for the others.
    #[arg(long)]
    stream: Option<String>,
}

#[derive(Args)]
pub struct ArchivePushArgs {
    /// The WAL file (%p, relative to the data directory PostgreSQL runs the command in).
    path: PathBuf,
    /// The data directory (default: the current directory, where PostgreSQL runs
    /// archive_command), to read the cluster's system identifier from.
    #[arg(long, env = "PGDATA")]
    pgdata: Option<PathBuf>,
    #[command(flatten)]
    stream: StreamArgs,
    /// Push ahead: also archive up to --ahead other segments PostgreSQL has marked ready, and
    /// keep a marker for each in this directory, so that PostgreSQL's calls for them answer
    /// at once without opening the repository (which costs a key derivation).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// How many ready segments one call pushes ahead (with --spool).
    #[arg(long, default_value_t = 16, value_name = "N")]
    ahead: usize,
}

#[derive(Args)]
pub struct ArchiveGetArgs {
    /// The WAL file name (%f).
    name: String,
    /// Where to write it (%p).
    dest: PathBuf,
    /// The data directory (default: the current directory).
    #[arg(long, env = "PGDATA")]
    pgdata: Option<PathBuf>,
    #[command(flatten)]
    stream: StreamArgs,
    /// Prefetch: also fetch the next --ahead segments into this directory, in parallel, so
    /// that PostgreSQL's next calls answer without opening the repository.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// How many segments one call fetches ahead (with --spool).
    #[arg(long, default_value_t = 8, value_name = "N")]
    ahead: usize,
}

#[derive(Args)]
pub struct ConnectArgs {
    /// libpq connection string or URI (default: libpq's defaults and PG* variables).
    #[arg(long, value_name = "CONNINFO")]
    connect: Option<String>,
    /// The psql program to connect with.
    #[arg(long, value_name = "PATH")]
    psql: Option<PathBuf>,
}

impl ConnectArgs {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            psql: self.psql.clone(),
            conninfo: self.connect.clone().unwrap_or_default(),
        }
    }
}

#[derive(Args)]
pub struct PgBackupArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The data directory as this machine sees it (default: the server's data_directory).
    #[arg(long)]
    pgdata: Option<PathBuf>,
    /// Label the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    host: Option<String>,
    /// Backing up a standby: how long to wait for the primary to archive the last WAL the
    /// backup needs.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    wal_wait_secs: u64,
}

#[derive(Args)]
pub struct PgRestoreArgs {
    /// The data directory to write (created if missing; must be empty unless --delta).
    #[arg(long)]
    to: PathBuf,
    /// Recover to this time (RFC 3339, e.g. 2026-11-28T01:02:03Z): transactions committed
    /// at or before it are kept.
    #[arg(long, conflicts_with_all = ["lsn", "latest"])]
    time: Option<jiff::Timestamp>,
    /// Recover to this WAL position (e.g. 0/3000060).
    #[arg(long, value_parser = parse_lsn, conflicts_with = "latest")]
    lsn: Option<Lsn>,
    /// Recover everything archived (the default).
    #[arg(long)]
    latest: bool,
    /// Restore over a non-empty directory: files not in the backup are removed, files that
    /// already hold the backup's content (compared chunk by chunk) are kept, the others are
    /// rebuilt from their unchanged chunks plus the repository.
    #[arg(long)]
    delta: bool,
    /// Write standby.signal: the server keeps replaying archived WAL as a warm standby.
    #[arg(long, conflicts_with_all = ["time", "lsn"])]
    standby: bool,
    /// Recover along this timeline's history (default: the newest timeline in the archive,
    /// as PostgreSQL's recovery_target_timeline = 'latest'). The base backup is chosen from
    /// that history: after a point-in-time restore, `--timeline 1` reaches the abandoned branch.
    #[arg(long, value_name = "TLI", value_parser = clap::value_parser!(u32).range(1..))]
    timeline: Option<u32>,
    /// Restore a tablespace (by oid or original location) into DIR instead of its original
    /// location; repeatable. A tablespace's target must be empty unless --delta.
    #[arg(long = "tablespace-map", value_name = "OID=DIR", value_parser = parse_tablespace_map)]
    tablespace_map: Vec<(String, PathBuf)>,
    /// Turn WAL archiving off in the restored cluster (restore tests, copies).
    #[arg(long)]
    archive_off: bool,
    /// restore_command prefetches this many segments ahead into pg_wal/lifeboat-prefetch
    /// (0: fetch one at a time).
    #[arg(long, default_value_t = 8, value_name = "N")]
    prefetch: usize,
    #[command(flatten)]
    stream: StreamArgs,
}

#[derive(Args)]
pub struct PgStatusArgs {
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print the figures in Prometheus' text format (for node_exporter's textfile
    /// collector: run from a timer, write to a temporary file and rename it into place).
    #[arg(long)]
    prometheus: bool,
}

/// A progress line on a terminal; nothing otherwise (`--json` output stays one document).
fn progress_mode(global: &GlobalArgs) -> crate::progress::Mode {
    if global.quiet || global.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        crate::progress::Mode::Off
    } else {
        crate::progress::Mode::Line
    }
}

fn parse_tablespace_map(text: &str) -> Result<(String, PathBuf), String> {
    let (key, dir) = text
        .split_once('=')
        .filter(|(k, d)| !k.is_empty() && !d.is_empty())
        .ok_or_else(|| format!("{text:?} is not OID=DIR (or OLD_LOCATION=DIR)"))?;
    let dir = std::path::absolute(dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok((key.to_string(), dir))
}

fn parse_lsn(text: &str) -> Result<Lsn, String> {
    Lsn::parse(text).ok_or_else(|| format!("{text:?} is not an LSN such as 0/3000060"))
}

pub fn run(global: &GlobalArgs, command: &PgCommand) -> Result<ExitCode> {
    match command {
        PgCommand::ArchivePush(args) => archive_push(global, args),
        PgCommand::ArchiveGet(args) => archive_get(global, args),
        PgCommand::Backup(args) => backup(global, args),
        PgCommand::Restore(args) => restore(global, args),
        PgCommand::Check(args) => check(global, args),
        PgCommand::Status(args) => status(global, args),
        PgCommand::Expire(args) => expire(global, args),
    }
}

/// The stream of the cluster in `pgdata` (or the current directory).
fn local_stream(stream: &StreamArgs, pgdata: Option<&Path>) -> Result<String> {
    if let Some(s) = &stream.stream {
        return Ok(s.clone());
    }
    let dir = pgdata.unwrap_or(Path::new("."));
    let id = archive::read_system_identifier(dir).with_context(|| {
        format!(
            "cannot tell which cluster {} belongs to: run in the data directory, or pass --pgdata or --stream",
            dir.display()
        )
    })?;
    Ok(archive::stream_for(id))
}

/// The stream of the only cluster in the repository, or the one given.
fn repository_stream(repo: &lifeboat_repo::Repository, stream: &StreamArgs) -> Result<String> {
    if let Some(s) = &stream.stream {
        return Ok(s.clone());
    }
    let clusters = lifeboat_postgres::check::clusters(repo)?;
    match clusters.as_slice() {
        [] => bail!("the repository holds no PostgreSQL WAL archive"),
        [one] => Ok(one.clone()),
        many => bail!(
            "the repository holds {} clusters ({}); choose one with --stream",
            many.len(),
            many.join(", ")
        ),
    }
}

fn archive_push(global: &GlobalArgs, args: &ArchivePushArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let stream = local_stream(&args.stream, args.pgdata.as_deref())?;
    if let Some(spool) = &args.spool
        && archive::ahead::already_pushed(spool, &stream, &args.path)?
    {
        tracing::info!(path = %args.path.display(), "archived ahead by an earlier call");
        return Ok(ExitCode::SUCCESS);
    }
    let repo = crate::open(global)?;
    let opened = started.elapsed();
    let outcome = if let Some(spool) = &args.spool {
        let (name, _) = archive::wal_name(&args.path)?;
        let wal_dir = match args.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        // The segment asked for and the ready ones behind it are stored side by side, so the
        // call costs about as long as its share of the batch rather than one push plus the
        // batch. Only this segment's result decides the exit status.
        let (own, ahead) = std::thread::scope(|scope| {
            let ahead = scope.spawn(|| {
                archive::ahead::push_ready(&repo, &stream, &wal_dir, spool, &name, args.ahead, threads)
            });
            let own = archive::push(&repo, &stream, &args.path);
            (own, ahead.join())
        });
        match ahead {
            Ok(Ok(pushed)) => tracing::info!(pushed, "pushed ahead"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pushing ahead failed; PostgreSQL's own calls will store those segments"),
            Err(_) => tracing::warn!("pushing ahead panicked"),
        }
        own
    } else {
        archive::push(&repo, &stream, &args.path)
    }
    .with_context(|| format!("cannot archive {}", args.path.display()))?;
    tracing::info!(
        path = %args.path.display(),
        ?outcome,
        open_ms = opened.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "archived"
    );
    if global.json {
        println!(
            "{}",
            serde_json::json!({
                "file": args.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "stream": stream,
                "already_archived": outcome == PushOutcome::AlreadyArchived,
                "open_secs": opened.as_secs_f64(),
                "total_secs": started.elapsed().as_secs_f64(),
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of `archive-get` when it fails (as opposed to finding no such file) outside
/// standby mode. PostgreSQL reads exit 1 as "no such file", which ends archive recovery: a
/// repository that is briefly unreachable would end a `--latest` recovery early and promote
/// at the wrong point. A code above 125 makes it abort recovery instead, to be started again.
const EXIT_ABORT_RECOVERY: u8 = 255;

fn archive_get(global: &GlobalArgs, args: &ArchiveGetArgs) -> Result<ExitCode> {
    match archive_get_inner(global, args) {
        Ok(code) => Ok(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            let data_dir = args.pgdata.as_deref().unwrap_or(Path::new("."));
            // A standby retries later on its own: exit 1 keeps it running.
            Ok(if data_dir.join("standby.signal").exists() {
                ExitCode::FAILURE
            } else {
                ExitCode::from(EXIT_ABORT_RECOVERY)
            })
        }
    }
}

fn archive_get_inner(global: &GlobalArgs, args: &ArchiveGetArgs) -> Result<ExitCode> {
    let stream = local_stream(&args.stream, args.pgdata.as_deref())?;
    if let Some(spool) = &args.spool
        && archive::prefetch::take(spool, &stream, &args.name, &args.dest)?
    {
        return Ok(ExitCode::SUCCESS);
    }
    let repo = crate::open(global)?;
    match archive::get(&repo, &stream, &args.name, &args.dest)
        .with_context(|| format!("cannot fetch {}", args.name))?
    {
        GetOutcome::Restored => {
            if let Some(spool) = &args.spool {
                let size = std::fs::metadata(&args.dest).map_or(0, |m| m.len());
                let threads =
                    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
                let fetched = archive::prefetch::fetch_ahead(
                    &repo, &stream, &args.name, size, spool, args.ahead, threads,
                )?;
                tracing::info!(fetched, "prefetched");
            }
            Ok(ExitCode::SUCCESS)
        }
        // PostgreSQL asks for files that may not exist; a missing one ends the archive.
        GetOutcome::Missing => {
            // A missing segment is the end of replay on this timeline (history files are
            // probed at any time): what is still spooled will not be asked for.
            if let Some(spool) = &args.spool
                && lifeboat_postgres::WalFile::parse(&args.name).is_some_and(|f| f.is_segment())
            {
                let _ = std::fs::remove_dir_all(spool.join(&stream));
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn backup(global: &GlobalArgs, args: &PgBackupArgs) -> Result<ExitCode> {
    let mut repo = crate::open(global)?.load_index()?;
    let options = lifeboat_postgres::BaseBackupOptions {
        connect: args.connect.options(),
        data_dir: args.pgdata.clone(),
        hostname: args.host.clone().unwrap_or_else(crate::hostname),
        username: crate::username(),
        tags: args.tags.clone(),
        writer: Default::default(),
        wal_wait: Some(std::time::Duration::from_secs(args.wal_wait_secs)),
    };
    let progress = Arc::new(BackupProgress::default());
    let display = crate::progress::start_backup(progress.clone(), progress_mode(global));
    let outcome = lifeboat_postgres::base_backup(&mut repo, &options, &progress);
    display.stop();
    let outcome = outcome?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    let state = &outcome.state;
    if global.json {
        println!(
            "{}",
            serde_json::json!({
                "snapshot": outcome.snapshot_id,
                "stream": state.stream,
                "timeline": state.timeline,
                "start_lsn": state.start_lsn,
                "stop_lsn": state.stop_lsn,
                "start_wal": state.start_wal,
                "stop_wal": state.stop_wal,
                "start_time": state.start_time,
                "stop_time": state.stop_time,
                "summary": outcome.snapshot.summary,
                "vanished_files": outcome.vanished,
                "wal_missing": outcome.wal_missing,
                "from_standby": state.from_standby,
                "warnings": outcome.warnings,
            })
        );
    } else if !global.quiet {
        let summary = outcome.snapshot.summary.clone().unwrap_or_default();
        println!(
            "base backup {} of {}: WAL {} .. {} (timeline {}), {} files, {} read, {} added",
            outcome.snapshot_id.short(),
            state.stream,
            state.start_lsn,
            state.stop_lsn.unwrap_or_default(),
            state.timeline,
            summary.files_new + summary.files_changed + summary.files_unchanged,
            summary.bytes_read,
            summary.bytes_stored,
        );
    }
    if let Some(id) = outcome.leftover {
        eprintln!(
            "warning: could not remove the provisional snapshot {} (append-only storage?); it is marked incomplete and ignored by pg restore",
            id.short()
        );
    }
    if !outcome.wal_missing.is_empty() && state.from_standby {
        eprintln!(
            "error: the primary did not archive the WAL this standby backup needs ({}) in time: \
             on a quiet primary run SELECT pg_switch_wal() there or set archive_timeout; the \
             backup becomes restorable once they are archived (`lifeboat pg check` shows it)",
            outcome.wal_missing.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    if !outcome.wal_missing.is_empty() {
        eprintln!(
            "error: the WAL this backup needs ({}) is not in this repository: archive_command \
             must run `lifeboat pg archive-push` into the same repository (see docs/postgres.md); \
             until it does, this backup cannot be restored",
            outcome.wal_missing.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if outcome.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_PARTIAL)
    })
}

/// Quotes one word for `sh`.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@,+".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// The restore_command that points back at this binary, repository and password source.
fn restore_command(
    global: &GlobalArgs,
    stream: &str,
    prefetch: Option<(&Path, usize)>,
) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the lifeboat binary's path")?;
    let location = crate::location(global)?;
    // A local path must not depend on the directory PostgreSQL runs the command in.
    let location = if location.contains(':') {
        location.to_string()
    } else {
        absolute(Path::new(location))?
            .to_string_lossy()
            .into_owned()
    };
    let mut words = vec![
        exe.to_string_lossy().into_owned(),
        "--repo".to_string(),
        location,
    ];
    if let Some(command) = &global.password_command {
        words.extend(["--password-command".to_string(), command.clone()]);
    } else if let Some(file) = &global.password_file {
        words.extend([
            "--password-file".to_string(),
            absolute(file)?.to_string_lossy().into_owned(),
        ]);
    } else {
        bail!(
            "restore_command must open the repository without a prompt: give the password with \
             --password-file or --password-command (or LIFEBOAT_PASSWORD_FILE)"
        );
    }
    words.extend(
        ["pg", "archive-get", "--stream", stream]
            .into_iter()
            .map(String::from),
    );
    if let Some((spool, ahead)) = prefetch {
        words.extend([
            "--spool".to_string(),
            spool.to_string_lossy().into_owned(),
            "--ahead".to_string(),
            ahead.to_string(),
        ]);
    }
    let mut command: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    command.extend(["%f".to_string(), "%p".to_string()]);
    Ok(command.join(" "))
}

fn restore(global: &GlobalArgs, args: &PgRestoreArgs) -> Result<ExitCode> {
    let repo = crate::open(global)?.load_index()?;
    let target = match (args.time, args.lsn) {
        (Some(time), _) => RecoveryTarget::Time(time),
        (None, Some(lsn)) => RecoveryTarget::Lsn(lsn),
        (None, None) => RecoveryTarget::Latest,
    };
    // Chosen here for the stream restore_command names; restore() makes the same choice.
    let plan = lifeboat_postgres::restore::plan(
        &repo,
        args.stream.stream.as_deref(),
        target,
        args.timeline,
    )?;
    let state = plan.state;
    let to = absolute(&args.to)?;
    // pg_wal is left out of base backups and PostgreSQL ignores directories in it.
    let spool = to.join("pg_wal").join("lifeboat-prefetch");
    let prefetch = (args.prefetch > 0).then_some((spool.as_path(), args.prefetch));
    let options = lifeboat_postgres::PgRestoreOptions {
        target,
        to: to.clone(),
        delta: args.delta,
        standby: args.standby,
        restore_command: restore_command(global, &state.stream, prefetch)?,
        stream: Some(state.stream.clone()),
        archive_off: args.archive_off,
        workers: 0,
        timeline: Some(plan.history.timeline),
        tablespace_map: args.tablespace_map.clone(),
    };
    let progress = Arc::new(RestoreProgress::default());
    let display = crate::progress::start_restore(progress.clone(), progress_mode(global));
    let outcome = lifeboat_postgres::restore::restore(&repo, &options, &progress);
    display.stop();
    let outcome = outcome?;
    for warning in &outcome.summary.warnings {
        eprintln!("warning: {warning}");
    }
    if global.json {
        println!(
            "{}",
            serde_json::json!({
                "backup": outcome.backup_id,
                "stream": outcome.state.stream,
                "backup_stop_time": outcome.state.stop_time,
                "backup_stop_lsn": outcome.state.stop_lsn,
                "files": outcome.summary.files,
                "bytes": outcome.summary.bytes,
                "reused_files": outcome.summary.reused_files,
                "reused_bytes": outcome.summary.reused_bytes,
                "written_files": outcome.summary.written_files,
                "written_bytes": outcome.summary.written_bytes,
                "local_bytes": outcome.summary.local_bytes,
                "removed": outcome.removed,
                "to": options.to,
                "standby": options.standby,
                "timeline": outcome.timeline,
                "tablespaces": outcome
                    .tablespaces
                    .iter()
                    .map(|(oid, dir)| serde_json::json!({"oid": oid, "to": dir}))
                    .collect::<Vec<_>>(),
            })
        );
    } else if !global.quiet {
        println!(
            "restored base backup {} ({} files, {} bytes) into {}; start PostgreSQL on it to {}",
            outcome.backup_id.short(),
            outcome.summary.files,
            outcome.summary.bytes,
            options.to.display(),
            match (target, args.standby) {
                (_, true) => "run a standby that replays archived WAL".to_string(),
                (RecoveryTarget::Latest, _) => "replay all archived WAL".to_string(),
                (RecoveryTarget::Time(t), _) => format!("recover to {t}"),
                (RecoveryTarget::Lsn(l), _) => format!("recover to LSN {l}"),
            }
        );
        for (oid, dir) in &outcome.tablespaces {
            println!("tablespace {oid} restored into {}", dir.display());
        }
        if args.delta {
            println!(
                "{}; {} entries the backup lacks removed",
                crate::delta_line(&outcome.summary),
                outcome.removed
            );
        }
    }
    Ok(if outcome.summary.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_PARTIAL)
    })
}

fn check(global: &GlobalArgs, args: &StreamArgs) -> Result<ExitCode> {
    let repo = crate::open(global)?;
    let stream = repository_stream(&repo, args)?;
    let report = lifeboat_postgres::check::check_chain(&repo, &stream)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} WAL files, timeline {}, segments {} .. {}",
            report.stream,
            report.files,
            report.timeline,
            report.from.as_deref().unwrap_or("-"),
            report.newest.as_deref().unwrap_or("-"),
        );
        for gap in &report.gaps {
            println!(
                "GAP: {} segment(s) missing, {} .. {}; recovery from older backups stops after {}",
                gap.segments,
                gap.first_missing,
                gap.last_missing,
                gap.replay_stops_after.as_deref().unwrap_or("(nothing)"),
            );
        }
        for backup in &report.backups {
            println!(
                "backup {}: {} start {} stop {} replays to {}",
                backup.id.short(),
                if !backup.complete {
                    "INCOMPLETE"
                } else if backup.restorable {
                    "restorable"
                } else if !backup.on_timeline {
                    "ON ANOTHER BRANCH (not on this timeline's history)"
                } else {
                    "NOT RESTORABLE"
                },
                backup.start_wal,
                backup.stop_wal.as_deref().unwrap_or("-"),
                backup.replays_to.as_deref().unwrap_or("-"),
            );
        }
        if report.backups.iter().all(|b| !b.complete) {
            println!("no complete base backup: take one with `lifeboat pg backup`");
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(global: &GlobalArgs, args: &PgStatusArgs) -> Result<ExitCode> {
    let repo = crate::open(global)?;
    let stream = repository_stream(&repo, &args.stream)?;
    let mut session = if args.connect.connect.is_some() || args.connect.psql.is_some() {
        Some(lifeboat_postgres::Session::connect(
            &args.connect.options(),
        )?)
    } else {
        None
    };
    let status = lifeboat_postgres::check::status(&repo, &stream, session.as_mut())?;
    if let Some(session) = session {
        session.close();
    }
    if args.prometheus {
        print!("{}", status.prometheus(jiff::Timestamp::now()));
    } else if global.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("stream:          {}", status.stream);
        println!("archived files:  {}", status.archived_files);
        println!(
            "last archived:   {}",
            status.last_archived.as_deref().unwrap_or("-")
        );
        println!("base backups:    {}", status.base_backups);
        if let Some(last) = &status.last_backup {
            println!(
                "last backup:     {} at {}",
                last.id.short(),
                last.stop_time.map(|t| t.to_string()).unwrap_or_default()
            );
        }
        if let Some(server) = &status.server {
            println!(
                "archive lag:     {} segment(s), {:.0} s (server at {}, {} failures)",
                server.lag_segments, server.lag_seconds, server.current_wal, server.failed_count
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn expire(global: &GlobalArgs, args: &PgExpireArgs) -> Result<ExitCode> {
    let repo = crate::open(global)?;
    let stream = repository_stream(&repo, &args.stream)?;
    let policy = lifeboat_postgres::expire::ExpirePolicy {
        keep_last: args.keep,
        keep_within: args.keep_within,
    };
    let plan = lifeboat_postgres::expire::plan_for(&repo, &stream, &policy)?;
    if !args.dry_run {
        lifeboat_postgres::expire::apply(&repo, &stream, &plan)?;
    }
    if global.json {
        let mut value = serde_json::to_value(&plan)?;
        value["dry_run"] = args.dry_run.into();
        println!("{value}");
    } else if !global.quiet {
        let verb = if args.dry_run { "would" } else { "did" };
        println!(
            "{stream}: keeping {} base backup(s) and WAL from {}; {verb} forget {} backup(s) and delete {} WAL file(s)",
            plan.keep.len(),
            plan.wal_from.as_deref().unwrap_or("the start"),
            plan.forget.len(),
            plan.delete_wal.len(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

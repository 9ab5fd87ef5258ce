//! The `lifeboat` command: thin glue between command-line flags and the library crates.
//!
//! Exit codes: 0 success; 1 fatal error (nothing was changed, or the repository is still
//! valid); 2 bad usage (from clap); 3 partial success (a backup saved a snapshot but some files
//! could not be read, or a restore finished but some entries could not be restored).

mod password;
mod progress;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lifeboat_files::{BackupOptions, BackupProgress, RestoreOptions, RestoreProgress};
use lifeboat_repo::repository::KEYS_PREFIX;
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
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots,
    /// Restore a snapshot, whole or in part, into a directory.
    Restore(RestoreArgs),
    /// Print a repository object, decrypted, for debugging.
    Cat(CatArgs),
    /// Copy snapshots to a second repository (created with `init --copy-content-keys-from`),
    /// transferring only the blobs it lacks.
    Copy(CopyArgs),
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
}

#[derive(Args)]
struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
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
    /// Directory to restore into (created if missing; must be empty unless --overwrite).
    #[arg(short, long)]
    target: PathBuf,
    /// Restore only paths matching this glob and what is below them (repeatable), e.g.
    /// `/srv/app/config` or `**/*.toml`.
    #[arg(short, long)]
    include: Vec<String>,
    /// Restore into a non-empty directory, replacing files that are in the way.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct CatArgs {
    /// What to print: config, keys, key ID, snapshot ID, index ID, pack ID, blob ID, tree ID.
    kind: String,
    /// Object id (a snapshot also accepts a prefix or `latest`).
    id: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LIFEBOAT_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => init(global, &args),
        Command::Backup(args) => backup(global, &args),
        Command::Snapshots => snapshots(global),
        Command::Restore(args) => restore(global, &args),
        Command::Cat(args) => cat(global, &args),
        Command::Copy(args) => copy(global, &args),
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
            let other = GlobalArgs {
                repo: Some(from.clone()),
                password_file: args.from.from_password_file.clone(),
                password_command: args.from.from_password_command.clone(),
                json: global.json,
                quiet: global.quiet,
            };
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

fn backup(global: &GlobalArgs, args: &BackupArgs) -> Result<ExitCode> {
    let mut repo = open(global)?.load_index()?;
    let parent = match &args.parent {
        Some(query) => Some(repo.find_snapshot(query)?.id),
        None => None,
    };
    let options = BackupOptions {
        paths: args.paths.clone(),
        excludes: args.excludes.clone(),
        tags: args.tags.clone(),
        hostname: args.host.clone().unwrap_or_else(hostname),
        username: username(),
        force: args.force,
        parent,
        ..Default::default()
    };
    let progress = Arc::new(BackupProgress::default());
    let display = progress::start_backup(progress.clone(), show_progress(global));
    let outcome = lifeboat_files::backup(&mut repo, &options, &progress);
    display.stop();
    let outcome = outcome?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    let summary = outcome.snapshot.summary.clone().unwrap_or_default();
    if global.json {
        let value = serde_json::json!({
            "snapshot_id": outcome.snapshot_id,
            "summary": summary,
            "warnings": outcome.warnings,
            "requests": {
                "put": outcome.requests.puts, "get": outcome.requests.gets,
                "list": outcome.requests.lists, "stat": outcome.requests.stats,
                "delete": outcome.requests.deletes,
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
        println!("snapshot {} saved", outcome.snapshot_id.short());
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

fn show_progress(global: &GlobalArgs) -> bool {
    !global.quiet && !global.json && std::io::stderr().is_terminal()
}

fn snapshots(global: &GlobalArgs) -> Result<ExitCode> {
    let repo = open(global)?;
    let all = repo.snapshots()?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}

fn restore(global: &GlobalArgs, args: &RestoreArgs) -> Result<ExitCode> {
    let repo = open(global)?.load_index()?;
    let entry = repo.find_snapshot(&args.snapshot)?;
    let options = RestoreOptions {
        include: args.include.clone(),
        overwrite: args.overwrite,
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
            serde_json::json!({ "snapshot_id": entry.id, "summary": summary })
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

fn copy(global: &GlobalArgs, args: &CopyArgs) -> Result<ExitCode> {
    let source = open(global)?.load_index()?;
    if args.to_password_file.is_none()
        && args.to_password_command.is_none()
        && std::io::stdin().is_terminal()
    {
        eprintln!("destination repository {}:", args.to);
    }
    let to = GlobalArgs {
        repo: Some(args.to.clone()),
        password_file: args.to_password_file.clone(),
        password_command: args.to_password_command.clone(),
        json: global.json,
        quiet: global.quiet,
    };
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
    let mut destination = destination.load_index()?;
    let stats = lifeboat_repo::copy_snapshots(
        &source,
        &mut destination,
        &snapshots,
        &lifeboat_repo::CopyOptions::default(),
    )?;
    let requests = |s: lifeboat_storage::RequestStats| {
        serde_json::json!({
            "put": s.puts, "get": s.gets, "list": s.lists, "stat": s.stats,
            "delete": s.deletes, "retries": s.retries,
        })
    };
    if global.json {
        let value = serde_json::json!({
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

//! Browsing commands: `ls`, `dump`, `diff`, `stats`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use lifeboat_repo::browse::{self, Change};
use lifeboat_repo::{IndexedRepository, Node, NodeKind};

use crate::{GlobalArgs, bytes, open};

#[derive(Args)]
pub struct LsArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub(crate) snapshot: String,
    /// Directory or file in the snapshot (default: everything).
    #[arg(default_value = "/")]
    pub(crate) path: PathBuf,
    /// Show mode, owner, size and modification time.
    #[arg(short, long)]
    pub(crate) long: bool,
}

#[derive(Args)]
pub struct DumpArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub(crate) snapshot: String,
    /// File in the snapshot, written to standard output.
    pub(crate) path: PathBuf,
}

#[derive(Args)]
pub struct DiffArgs {
    /// Older snapshot.
    first: String,
    /// Newer snapshot.
    second: String,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Snapshots to measure (default: all).
    snapshots: Vec<String>,
}

fn kind_char(kind: NodeKind) -> char {
    match kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
        NodeKind::Socket => 's',
    }
}

fn mode_string(node: &Node) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind_char(node.kind));
    for shift in [6, 3, 0] {
        let bits = (node.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn mtime_string(node: &Node) -> String {
    jiff::Timestamp::new(node.mtime.sec, node.mtime.nsec as i32)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

fn node_json(path: &Path, node: &Node) -> serde_json::Value {
    serde_json::json!({
        "path": path.to_string_lossy(),
        "kind": node.kind,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "size": node.size,
        "mtime": mtime_string(node),
        "target": node.target.as_ref().map(|t| t.to_string()),
    })
}

/// Opens the repository and finds the entry at `path` in the snapshot `query` names.
fn open_entry(global: &GlobalArgs, query: &str, path: &Path) -> Result<(IndexedRepository, Node)> {
    let repo = open(global)?.load_index()?;
    let entry = repo.find_snapshot(query)?;
    let node = browse::lookup(&repo, &entry.snapshot.tree, path)?
        .with_context(|| format!("{} is not in snapshot {}", path.display(), entry.id.short()))?;
    Ok((repo, node))
}

pub fn ls(global: &GlobalArgs, args: &LsArgs) -> Result<ExitCode> {
    let (repo, start) = open_entry(global, &args.snapshot, &args.path)?;
    let mut out = std::io::stdout().lock();
    let mut print = |path: &Path, node: &Node| -> Result<()> {
        if global.json {
            writeln!(out, "{}", node_json(path, node))?;
        } else if args.long {
            let target = node
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{} {:>6} {:>6} {:>12} {} {}{target}",
                mode_string(node),
                node.uid,
                node.gid,
                node.size,
                mtime_string(node),
                path.display()
            )?;
        } else {
            writeln!(out, "{}", path.display())?;
        }
        Ok(())
    };
    match (start.kind, start.subtree) {
        (NodeKind::Dir, Some(tree)) => {
            let prefix = if args.path.as_os_str().is_empty() {
                PathBuf::from("/")
            } else {
                args.path.clone()
            };
            browse::walk(&repo, &tree, &prefix, &mut |path, node| {
                print(path, node).map_err(|e| lifeboat_repo::Error::Pipeline(e.to_string()))?;
                Ok(true)
            })?;
        }
        _ => print(&args.path, &start)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dump(global: &GlobalArgs, args: &DumpArgs) -> Result<ExitCode> {
    let (repo, node) = open_entry(global, &args.snapshot, &args.path)?;
    if node.kind != NodeKind::File {
        bail!(
            "{} is a {:?}, not a file; use `lifeboat restore --include` for directories",
            args.path.display(),
            node.kind
        );
    }
    let mut out = std::io::stdout().lock();
    for id in &node.content {
        out.write_all(&repo.read_blob(id)?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn diff(global: &GlobalArgs, args: &DiffArgs) -> Result<ExitCode> {
    let repo = open(global)?.load_index()?;
    let first = repo.find_snapshot(&args.first)?;
    let second = repo.find_snapshot(&args.second)?;
    let mut counts = [0u64; 4];
    let mut out = std::io::stdout().lock();
    let mut failure = None;
    browse::diff(
        &repo,
        Some(&first.snapshot.tree),
        Some(&second.snapshot.tree),
        Path::new("/"),
        &mut |path, change, _, after| {
            counts[change as usize] += 1;
            let line = if global.json {
                serde_json::json!({ "path": path.to_string_lossy(), "change": change, "size": after.map(|n| n.size) }).to_string()
            } else {
                format!("{}    {}", change.marker(), path.display())
            };
            if let Err(e) = writeln!(out, "{line}") {
                failure.get_or_insert(e);
            }
        },
    )?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if !global.json && !global.quiet {
        writeln!(
            out,
            "{} added, {} removed, {} modified, {} metadata only",
            counts[Change::Added as usize],
            counts[Change::Removed as usize],
            counts[Change::Modified as usize],
            counts[Change::Metadata as usize]
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stats(global: &GlobalArgs, args: &StatsArgs) -> Result<ExitCode> {
    let repo = open(global)?.load_index()?;
    let roots: Vec<_> = if args.snapshots.is_empty() {
        repo.snapshots()?
            .into_iter()
            .map(|s| s.snapshot.tree)
            .collect()
    } else {
        args.snapshots
            .iter()
            .map(|q| repo.find_snapshot(q).map(|s| s.snapshot.tree))
            .collect::<Result<_, _>>()?
    };
    let stats = browse::stats(&repo, &roots)?;
    let packs = repo.index().packs().len();
    if global.json {
        let mut value = serde_json::to_value(&stats)?;
        value["dedup_ratio"] = serde_json::json!(stats.dedup_ratio());
        value["compression_ratio"] = serde_json::json!(stats.compression_ratio());
        value["repository_blobs"] = serde_json::json!(repo.index().blob_count());
        value["repository_packs"] = serde_json::json!(packs);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("snapshots:          {}", stats.snapshots);
        println!("files, directories: {}, {}", stats.files, stats.dirs);
        println!("restore size:       {}", bytes(stats.restore_size));
        println!(
            "unique data:        {} in {} blobs",
            bytes(stats.unique_raw_size),
            stats.unique_blobs
        );
        println!("stored:             {}", bytes(stats.unique_stored_size));
        println!("deduplication:      {:.2}x", stats.dedup_ratio());
        println!("compression:        {:.2}x", stats.compression_ratio());
        println!(
            "repository:         {} blobs in {} packs",
            repo.index().blob_count(),
            packs
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! Point-in-time restore: the newest base backup that ends before the target, plus the
//! settings that make PostgreSQL replay archived WAL up to exactly the target.
//!
//! The restore writes the data directory's files, `backup_label` (and `tablespace_map`),
//! a `recovery.signal` (or `standby.signal`) and a marked block in `postgresql.auto.conf` with
//! `restore_command` pointing back at `lifeboat pg archive-get` and the recovery target. Starting
//! PostgreSQL on the directory then fetches WAL from the repository, replays it to the target
//! and promotes.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lifeboat_files::{RestoreOptions, RestoreProgress, RestoreSummary};
use lifeboat_repo::{Id, IndexedRepository, NodeKind, Repository, Snapshot};

use crate::archive;
use crate::backup::{BackupState, Tablespace, base_backups};
use crate::error::{Error, Result};
use crate::timeline::{self, TimelineHistory};
use crate::wal::Lsn;

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    /// Stop after the last transaction that committed at or before this time.
    Time(jiff::Timestamp),
    /// Stop at this WAL position.
    Lsn(Lsn),
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct PgRestoreOptions {
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// The data directory to write.
    pub to: PathBuf,
    /// Allow a non-empty directory: files not in the backup are removed, files that already
    /// hold the backup's content are kept, the others rebuilt (see
    /// [`lifeboat_files::RestoreOptions::delta`]).
    pub delta: bool,
    /// Write `standby.signal`: the server keeps replaying archived WAL instead of promoting.
    pub standby: bool,
    /// The `restore_command` to write (with `%f` and `%p`).
    pub restore_command: String,
    /// Whose backups (a `pg-<system identifier>` stream); `None` when the repository holds
    /// one cluster.
    pub stream: Option<String>,
    /// Turn WAL archiving off in the restored cluster (for restore tests, so that a copy
    /// does not archive into its original's stream).
    pub archive_off: bool,
    /// Threads reading packs; 0 picks a default.
    pub workers: usize,
    /// The timeline to recover into; `None`: the newest in the archive.
    pub timeline: Option<u32>,
    /// Where tablespaces go: (oid or original location, directory). Unnamed ones return to
    /// their original location, which must then be empty (unless `delta`).
    pub tablespace_map: Vec<(String, PathBuf)>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct PgRestoreOutcome {
    /// The base backup used.
    pub backup_id: Id,
    /// Its state.
    pub state: BackupState,
    /// What the file restore did.
    pub summary: RestoreSummary,
    /// Entries of a `--delta` target removed because the backup does not have them.
    pub removed: u64,
    /// The timeline recovery ends on (a standby follows newer ones as they appear).
    pub timeline: u32,
    /// Each tablespace's oid and the directory it was restored to.
    pub tablespaces: Vec<(u32, PathBuf)>,
}

/// What a restore starts from.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The base backup.
    pub backup_id: Id,
    /// Its state.
    pub state: BackupState,
    /// The timeline recovery ends on, and its ancestors.
    pub history: TimelineHistory,
}

/// Chooses what a restore of `stream` (`None`: the repository's only cluster) to `target`
/// starts from, following `timeline`'s history (`None`: the newest timeline in the archive,
/// as PostgreSQL's `recovery_target_timeline = 'latest'` does).
pub fn plan(
    repo: &Repository,
    stream: Option<&str>,
    target: RecoveryTarget,
    timeline: Option<u32>,
) -> Result<RestorePlan> {
    let backups = base_backups(repo)?;
    let stream = resolve_stream(&backups, stream)?;
    let files = archive::list(repo, &stream)?;
    let timeline = timeline.unwrap_or_else(|| {
        timeline::newest(
            files.iter().map(|(_, f)| f),
            backups
                .iter()
                .filter(|(_, _, s)| s.stream == stream && s.complete)
                .map(|(_, _, s)| s.timeline),
        )
    });
    let history = timeline::load(repo, &stream, timeline)?;
    let (backup_id, state) = choose_backup(&backups, Some(stream.as_str()), target, &history)?;
    Ok(RestorePlan {
        backup_id,
        state,
        history,
    })
}

/// The stream to restore: the one asked for, else the only one with a complete backup.
fn resolve_stream(backups: &[(Id, Snapshot, BackupState)], stream: Option<&str>) -> Result<String> {
    if let Some(stream) = stream {
        return Ok(stream.to_string());
    }
    let mut streams: Vec<&str> = backups
        .iter()
        .filter(|(_, _, s)| s.complete)
        .map(|(_, _, s)| s.stream.as_str())
        .collect();
    streams.sort();
    streams.dedup();
    match streams.as_slice() {
        [] => Err(Error::NoBackup(
            "the repository holds no complete PostgreSQL base backup; take one with \
             `lifeboat pg backup`"
                .to_string(),
        )),
        [one] => Ok(one.to_string()),
        many => Err(Error::NoBackup(format!(
            "the repository holds backups of {} clusters ({}); choose one with --stream",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Picks the base backup to restore: the newest complete one of `stream` that is consistent
/// before the target and lies on `history` (a backup from a branch the target timeline left,
/// taken after the branch point, holds a past that timeline does not share).
pub fn choose_backup(
    backups: &[(Id, Snapshot, BackupState)],
    stream: Option<&str>,
    target: RecoveryTarget,
    history: &TimelineHistory,
) -> Result<(Id, BackupState)> {
    let stream = resolve_stream(backups, stream)?;
    let complete: Vec<&BackupState> = backups
        .iter()
        .map(|(_, _, s)| s)
        .filter(|s| s.complete && s.stream == stream)
        .collect();
    let before_target = |s: &BackupState| match target {
        RecoveryTarget::Latest => true,
        RecoveryTarget::Time(t) => s.stop_time.is_some_and(|stop| stop <= t),
        RecoveryTarget::Lsn(l) => s.stop_lsn.is_some_and(|stop| stop <= l),
    };
    let on_history = |s: &BackupState| {
        s.stop_lsn
            .is_some_and(|stop| history.contains(s.timeline, stop))
    };
    // Along one history positions only grow, so the newest usable backup is the one that
    // ends last.
    let chosen = backups
        .iter()
        .filter(|(_, _, s)| s.complete && s.stream == stream)
        .filter(|(_, _, s)| before_target(s) && on_history(s))
        .max_by_key(|(_, _, s)| (s.stop_lsn, s.stop_time));
    if let Some((id, _, state)) = chosen {
        return Ok((*id, state.clone()));
    }
    let timeline = history.timeline;
    if complete.iter().any(|&s| before_target(s)) {
        return Err(Error::NoBackup(format!(
            "no base backup of {stream} on the history of timeline {timeline} ends before the \
             target: the ones that do were taken on a branch that timeline left (choose \
             another timeline with --timeline, or a later target)"
        )));
    }
    let oldest = complete
        .iter()
        .filter_map(|s| s.stop_time.zip(s.stop_lsn))
        .min();
    Err(Error::NoBackup(match oldest {
        Some((time, lsn)) => format!(
            "no base backup of {stream} ends before the target: the oldest ends at {time} \
             (LSN {lsn}); choose a later target"
        ),
        None => format!("the repository holds no complete base backup of {stream}"),
    }))
}

/// Restores a data directory for point-in-time recovery.
pub fn restore(
    repo: &IndexedRepository,
    options: &PgRestoreOptions,
    progress: &RestoreProgress,
) -> Result<PgRestoreOutcome> {
    let RestorePlan {
        backup_id,
        state,
        history,
    } = plan(
        repo,
        options.stream.as_deref(),
        options.target,
        options.timeline,
    )?;
    let snapshot = repo.load_snapshot(&backup_id)?;
    let data_dir_node =
        lifeboat_repo::browse::lookup(repo, &snapshot.tree, Path::new(&state.data_directory))?
            .filter(|n| n.kind == NodeKind::Dir);
    // The cluster's owner: files this restore writes itself must belong to it, or a restore
    // run as root leaves files the server cannot read.
    let owner = data_dir_node.as_ref().map(|n| (n.uid, n.gid));
    let data_node = data_dir_node.and_then(|n| n.subtree).ok_or_else(|| {
        Error::Unusable(format!(
            "snapshot {} has no directory {}: it is not a base backup this build can restore",
            backup_id.short(),
            state.data_directory
        ))
    })?;
    let to = &options.to;
    if to.join("postmaster.pid").exists() {
        return Err(Error::Unusable(format!(
            "{} holds postmaster.pid: a server may be running on it; stop it first",
            to.display()
        )));
    }
    // Where each tablespace goes, checked before anything is written.
    let tablespaces = tablespace_targets(&state, options)?;
    let mut tablespace_nodes = Vec::new();
    for (space, target) in &tablespaces {
        let node = lifeboat_repo::browse::lookup(repo, &snapshot.tree, Path::new(&space.location))?
            .filter(|n| n.kind == NodeKind::Dir)
            .and_then(|n| n.subtree)
            .ok_or_else(|| {
                Error::Unusable(format!(
                    "snapshot {} has no directory {} for tablespace {}",
                    backup_id.short(),
                    space.location,
                    space.oid
                ))
            })?;
        refuse_unless_empty(
            target,
            options.delta,
            &format!("tablespace {}'s target", space.oid),
        )?;
        tablespace_nodes.push(node);
    }
    refuse_unless_empty(to, options.delta, "the target directory")?;
    let (mut summary, mut removed) =
        restore_tree(repo, &snapshot, data_node, to, options, progress)?;
    for ((_, target), node) in tablespaces.iter().zip(tablespace_nodes) {
        let (part, gone) = restore_tree(repo, &snapshot, node, target, options, progress)?;
        removed += gone;
        add_summary(&mut summary, part);
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("set the mode of", to, e))?;
    let recreated: Vec<&str> = crate::backup::EXCLUDED
        .iter()
        .filter_map(|p| p.strip_suffix("/*"))
        .chain(["pg_wal/archive_status"])
        .collect();
    for dir in &recreated {
        let path = to.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| Error::io("create", &path, e))?;
    }
    if let Some(control) = &state.control_file {
        let bytes = hex::decode(control).map_err(|e| {
            Error::Unusable(format!(
                "backup {} holds an unreadable control file: {e}",
                backup_id.short()
            ))
        })?;
        let path = to.join("global").join("pg_control");
        archive::write_atomically(&path, &bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("set the mode of", &path, e))?;
        if let Some((uid, gid)) = owner {
            let _ = std::os::unix::fs::lchown(&path, Some(uid), Some(gid));
        }
    }
    let label = state.backup_label.as_deref().unwrap_or_default();
    write_file(&to.join("backup_label"), label)?;
    if !tablespaces.is_empty() {
        // PostgreSQL recreates pg_tblspc's links from this file when recovery starts; the
        // links are set here too, so the directory is consistent before it starts.
        let mut map = String::new();
        for (space, target) in &tablespaces {
            map.push_str(&format!("{} {}\n", space.oid, target.display()));
            let link = to.join("pg_tblspc").join(space.oid.to_string());
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link)
                .map_err(|e| Error::io("create the link", &link, e))?;
        }
        write_file(&to.join("tablespace_map"), &map)?;
    } else if let Some(map) = &state.tablespace_map {
        write_file(&to.join("tablespace_map"), map)?;
    }
    let auto_conf = to.join("postgresql.auto.conf");
    let existing = match std::fs::read_to_string(&auto_conf) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("read", &auto_conf, e)),
    };
    write_file(
        &auto_conf,
        &with_recovery_settings(&existing, options, history.timeline),
    )?;
    let (signal, other) = if options.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    write_file(&to.join(signal), "")?;
    let _ = std::fs::remove_file(to.join(other));
    if let Some((uid, gid)) = owner {
        let mut written = vec![
            to.to_path_buf(),
            to.join("backup_label"),
            to.join("postgresql.auto.conf"),
            to.join(signal),
            to.join("tablespace_map"),
        ];
        written.extend(recreated.iter().map(|d| to.join(d)));
        for (space, target) in &tablespaces {
            written.push(target.clone());
            written.push(to.join("pg_tblspc").join(space.oid.to_string()));
        }
        for path in written {
            // Without privileges (a restore by the cluster's owner) this fails or is a no-op,
            // and the files already belong to the right user.
            let _ = std::os::unix::fs::lchown(&path, Some(uid), Some(gid));
        }
    }
    Ok(PgRestoreOutcome {
        backup_id,
        state,
        summary,
        removed,
        timeline: history.timeline,
        tablespaces: tablespaces
            .into_iter()
            .map(|(space, target)| (space.oid, target))
            .collect(),
    })
}

/// Each tablespace of the backup and the directory it is restored to: its place in
/// `options.tablespace_map` (by oid or by original location), else its original location.
fn tablespace_targets(
    state: &BackupState,
    options: &PgRestoreOptions,
) -> Result<Vec<(Tablespace, PathBuf)>> {
    for (key, _) in &options.tablespace_map {
        if !state
            .tablespaces
            .iter()
            .any(|t| t.oid.to_string() == *key || t.location == *key)
        {
            let known: Vec<String> = state
                .tablespaces
                .iter()
                .map(|t| format!("{} ({})", t.oid, t.location))
                .collect();
            return Err(Error::Unusable(format!(
                "the backup has no tablespace {key}; it has {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(state
        .tablespaces
        .iter()
        .map(|space| {
            let target = options
                .tablespace_map
                .iter()
                .find(|(key, _)| *key == space.oid.to_string() || *key == space.location)
                .map(|(_, dir)| dir.clone())
                .unwrap_or_else(|| PathBuf::from(&space.location));
            (space.clone(), target)
        })
        .collect())
}

/// Refuses a non-empty `dir` unless `delta`: a restore never overwrites what it was not asked
/// to (a copy restored beside its running original would otherwise write into the original's
/// tablespaces, whose locations the backup records).
fn refuse_unless_empty(dir: &Path, delta: bool, what: &str) -> Result<()> {
    let not_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if not_empty && !delta {
        let hint = if what.starts_with("tablespace") {
            "restore it elsewhere with --tablespace-map OID=DIR, or pass --delta to restore over it"
        } else {
            "restore into an empty directory, or pass --delta to restore over it (keeping the \
             files that are unchanged)"
        };
        return Err(Error::Unusable(format!(
            "{what} {} is not empty: {hint}",
            dir.display()
        )));
    }
    Ok(())
}

/// Restores the tree `node` of `snapshot` into `dir` (with `--delta`, first removing what the
/// tree lacks); returns the summary and how many entries were removed.
fn restore_tree(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    node: Id,
    dir: &Path,
    options: &PgRestoreOptions,
    progress: &RestoreProgress,
) -> Result<(RestoreSummary, u64)> {
    let mut removed = 0;
    let not_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if not_empty {
        let mut keep = HashSet::new();
        lifeboat_repo::browse::walk(repo, &node, Path::new(""), &mut |path, _| {
            keep.insert(path.to_path_buf());
            Ok(true)
        })?;
        removed = remove_extra(dir, Path::new(""), &keep)?;
    }
    let mut part = snapshot.clone();
    part.tree = node;
    let summary = lifeboat_files::restore(
        repo,
        &part,
        dir,
        &RestoreOptions {
            delta: options.delta,
            workers: options.workers,
            ..Default::default()
        },
        progress,
    )?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("set the mode of", dir, e))?;
    Ok((summary, removed))
}

fn add_summary(total: &mut RestoreSummary, part: RestoreSummary) {
    total.files += part.files;
    total.reused_files += part.reused_files;
    total.reused_bytes += part.reused_bytes;
    total.written_files += part.written_files;
    total.written_bytes += part.written_bytes;
    total.local_bytes += part.local_bytes;
    total.dirs += part.dirs;
    total.others += part.others;
    total.hardlinks += part.hardlinks;
    total.bytes += part.bytes;
    total.blobs_read += part.blobs_read;
    total.warnings.extend(part.warnings);
}

/// Removes entries below `dir` whose path (relative to the data directory) is not in `keep`.
fn remove_extra(root: &Path, relative: &Path, keep: &HashSet<PathBuf>) -> Result<u64> {
    let dir = root.join(relative);
    let mut removed = 0;
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
        let rel = relative.join(entry.file_name());
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if keep.contains(&rel) {
            if is_dir {
                removed += remove_extra(root, &rel, keep)?;
            }
            continue;
        }
        if is_dir {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
        } else {
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
        removed += 1;
    }
    Ok(removed)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    crate::archive::write_atomically(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("set the mode of", path, e))
}

const BLOCK_BEGIN: &str = "# --- lifeboat pg restore: recovery settings (begin) ---";
const BLOCK_END: &str = "# --- lifeboat pg restore: recovery settings (end) ---";

/// Quotes a value for postgresql.conf.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Formats a time the way PostgreSQL's timestamptz input reads it, in UTC.
pub fn postgres_time(time: jiff::Timestamp) -> String {
    time.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// `postgresql.auto.conf` with this restore's block (replacing an earlier one); recovery ends
/// on `timeline` (a standby follows the newest one instead, to keep up with failovers).
pub fn with_recovery_settings(existing: &str, options: &PgRestoreOptions, timeline: u32) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line == BLOCK_BEGIN {
            inside = true;
        } else if line == BLOCK_END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(BLOCK_BEGIN);
    out.push('\n');
    let mut set = |key: &str, value: &str| {
        out.push_str(&format!("{key} = {}\n", conf_quote(value)));
    };
    set("restore_command", &options.restore_command);
    // The backup was chosen for this timeline's history: a newer branch archived before the
    // server starts must not change which one recovery follows.
    if options.standby {
        set("recovery_target_timeline", "latest");
    } else {
        set("recovery_target_timeline", &timeline.to_string());
    }
    if !options.standby {
        match options.target {
            RecoveryTarget::Latest => {}
            RecoveryTarget::Time(time) => set("recovery_target_time", &postgres_time(time)),
            RecoveryTarget::Lsn(lsn) => set("recovery_target_lsn", &lsn.to_string()),
        }
        if options.target != RecoveryTarget::Latest {
            set("recovery_target_action", "promote");
        }
    }
    if options.archive_off {
        set("archive_mode", "off");
    }
    out.push_str(BLOCK_END);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(target: RecoveryTarget) -> PgRestoreOptions {
        PgRestoreOptions {
            target,
            to: PathBuf::from("/x"),
            delta: false,
            standby: false,
            restore_command: "lifeboat pg archive-get --stream 'pg-1' %f %p".to_string(),
            stream: None,
            archive_off: false,
            workers: 0,
            timeline: None,
            tablespace_map: vec![],
        }
    }

    #[test]
    fn recovery_settings_replace_an_earlier_block() {
        let time: jiff::Timestamp = "2026-11-28T01:02:03.25Z".parse().unwrap();
        let first =
            with_recovery_settings("port = 5433\n", &options(RecoveryTarget::Time(time)), 3);
        assert!(first.starts_with("port = 5433\n"));
        assert!(first.contains("recovery_target_time = '2026-11-28 01:02:03.250000+00'\n"));
        assert!(
            first.contains("restore_command = 'lifeboat pg archive-get --stream ''pg-1'' %f %p'\n")
        );
        assert!(first.contains("recovery_target_action = 'promote'\n"));
        assert!(first.contains("recovery_target_timeline = '3'\n"));
        let second = with_recovery_settings(&first, &options(RecoveryTarget::Latest), 1);
        assert!(!second.contains("recovery_target_time ="));
        assert_eq!(second.matches(BLOCK_BEGIN).count(), 1);
        assert!(second.starts_with("port = 5433\n"));
        let standby = PgRestoreOptions {
            standby: true,
            ..options(RecoveryTarget::Latest)
        };
        let third = with_recovery_settings("", &standby, 2);
        assert!(third.contains("recovery_target_timeline = 'latest'\n"));
    }

    fn state(stream: &str, stop_secs: i64, complete: bool) -> BackupState {
        state_on(stream, 1, stop_secs, complete)
    }

    /// A backup on `timeline` that ends at `stop_secs` and LSN `stop_secs * 100 + 50`.
    fn state_on(stream: &str, timeline: u32, stop_secs: i64, complete: bool) -> BackupState {
        BackupState {
            version: 1,
            complete,
            system_identifier: "1".to_string(),
            stream: stream.to_string(),
            data_directory: "/d".to_string(),
            server_version: 150000,
            segment_size: crate::wal::DEFAULT_SEGMENT_SIZE,
            timeline,
            start_lsn: Lsn(stop_secs as u64 * 100),
            start_wal: String::new(),
            start_time: jiff::Timestamp::from_second(stop_secs - 1).unwrap(),
            stop_lsn: Some(Lsn(stop_secs as u64 * 100 + 50)),
            stop_wal: None,
            stop_time: Some(jiff::Timestamp::from_second(stop_secs).unwrap()),
            backup_label: Some(String::new()),
            tablespace_map: None,
            tablespaces: vec![],
            from_standby: false,
            control_file: None,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 1,
            time: jiff::Timestamp::UNIX_EPOCH,
            tree: Id::default(),
            paths: vec![],
            hostname: String::new(),
            username: String::new(),
            tags: vec![],
            parent: None,
            source: lifeboat_repo::SourceKind::Postgres,
            program_version: String::new(),
            summary: None,
            source_state: None,
        }
    }

    #[test]
    fn the_newest_backup_before_the_target_is_chosen() {
        let backups = vec![
            (Id([1; 32]), snapshot(), state("pg-1", 1000, true)),
            (Id([2; 32]), snapshot(), state("pg-1", 2000, true)),
            (Id([3; 32]), snapshot(), state("pg-1", 3000, false)),
        ];
        let at = |s| RecoveryTarget::Time(jiff::Timestamp::from_second(s).unwrap());
        let one = TimelineHistory::root(1);
        assert_eq!(
            choose_backup(&backups, None, at(1500), &one).unwrap().0,
            Id([1; 32])
        );
        assert_eq!(
            choose_backup(&backups, None, at(5000), &one).unwrap().0,
            Id([2; 32])
        );
        assert_eq!(
            choose_backup(&backups, None, RecoveryTarget::Latest, &one)
                .unwrap()
                .0,
            Id([2; 32])
        );
        let err = choose_backup(&backups, None, at(10), &one)
            .unwrap_err()
            .to_string();
        assert!(err.contains("choose a later target"), "{err}");
        let two = vec![
            (Id([1; 32]), snapshot(), state("pg-1", 1000, true)),
            (Id([2; 32]), snapshot(), state("pg-2", 2000, true)),
        ];
        let err = choose_backup(&two, None, at(5000), &one)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--stream"), "{err}");
        assert_eq!(
            choose_backup(&two, Some("pg-2"), at(5000), &one).unwrap().0,
            Id([2; 32])
        );
    }

    #[test]
    fn a_backup_from_a_branch_the_target_timeline_left_is_never_chosen() {
        // Backups end at LSN 100 × their time + 50. Timeline 1 was recovered to time 1600
        // (LSN 160000) and went on, abandoned, with a backup at 4000; timeline 2 branched off
        // there and took its own backup at 3000.
        let backups = vec![
            (Id([1; 32]), snapshot(), state_on("pg-1", 1, 1000, true)),
            (Id([2; 32]), snapshot(), state_on("pg-1", 1, 2000, true)),
            (Id([3; 32]), snapshot(), state_on("pg-1", 2, 3000, true)),
            (Id([4; 32]), snapshot(), state_on("pg-1", 1, 4000, true)),
        ];
        let two = TimelineHistory::parse(2, "1\t0/27100\tbefore 1600\n").unwrap();
        assert_eq!(two.ancestors, vec![(1, Lsn(160_000))]);
        let at = |s| RecoveryTarget::Time(jiff::Timestamp::from_second(s).unwrap());
        let chosen = |target, history: &TimelineHistory| {
            choose_backup(&backups, None, target, history).map(|(id, _)| id)
        };
        // Between the branch point and timeline 2's own backup: timeline 1's backup from
        // before the branch, not the later one of the abandoned branch.
        assert_eq!(chosen(at(2500), &two).unwrap(), Id([1; 32]));
        assert_eq!(chosen(at(3500), &two).unwrap(), Id([3; 32]));
        // The abandoned branch's backup at 4000 ends after timeline 2's at 3000: still not it.
        assert_eq!(chosen(at(5000), &two).unwrap(), Id([3; 32]));
        assert_eq!(chosen(RecoveryTarget::Latest, &two).unwrap(), Id([3; 32]));
        assert_eq!(
            chosen(RecoveryTarget::Lsn(Lsn(210_000)), &two).unwrap(),
            Id([1; 32])
        );
        // Following timeline 1 instead reaches its whole branch.
        let one = TimelineHistory::root(1);
        assert_eq!(chosen(at(5000), &one).unwrap(), Id([4; 32]));
        assert_eq!(chosen(at(2500), &one).unwrap(), Id([2; 32]));
        // A timeline whose history holds none of the backups before the target says why.
        let three = TimelineHistory::parse(3, "1\t0/13880\tbefore 800\n").unwrap();
        let err = chosen(at(2500), &three).unwrap_err().to_string();
        assert!(err.contains("--timeline"), "{err}");
    }
}

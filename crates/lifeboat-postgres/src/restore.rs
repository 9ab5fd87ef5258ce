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
use lifeboat_repo::{Id, IndexedRepository, NodeKind, Snapshot};

use crate::backup::{BackupState, base_backups};
use crate::error::{Error, Result};
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
}

/// Picks the base backup to restore: the newest complete one of `stream` that is consistent
/// before the target.
pub fn choose_backup(
    backups: &[(Id, Snapshot, BackupState)],
    stream: Option<&str>,
    target: RecoveryTarget,
) -> Result<(Id, BackupState)> {
    let complete: Vec<&(Id, Snapshot, BackupState)> =
        backups.iter().filter(|(_, _, s)| s.complete).collect();
    let stream = match stream {
        Some(s) => s.to_string(),
        None => {
            let mut streams: Vec<&str> =
                complete.iter().map(|(_, _, s)| s.stream.as_str()).collect();
            streams.sort();
            streams.dedup();
            match streams.as_slice() {
                [] => {
                    return Err(Error::NoBackup(
                        "the repository holds no complete PostgreSQL base backup; take one with \
                         `lifeboat pg backup`"
                            .to_string(),
                    ));
                }
                [one] => one.to_string(),
                many => {
                    return Err(Error::NoBackup(format!(
                        "the repository holds backups of {} clusters ({}); choose one with --stream",
                        many.len(),
                        many.join(", ")
                    )));
                }
            }
        }
    };
    let eligible = complete
        .iter()
        .filter(|(_, _, s)| s.stream == stream)
        .filter(|(_, _, s)| match target {
            RecoveryTarget::Latest => true,
            RecoveryTarget::Time(t) => s.stop_time.is_some_and(|stop| stop <= t),
            RecoveryTarget::Lsn(l) => s.stop_lsn.is_some_and(|stop| stop <= l),
        })
        // Latest: the newest timeline first (recovery follows the newest timeline, and a
        // promoted copy's backups may sit at lower positions than its old primary's last WAL).
        .max_by_key(|(_, _, s)| match target {
            RecoveryTarget::Latest => (s.timeline, s.stop_lsn, s.stop_time),
            _ => (0, s.stop_lsn, s.stop_time),
        });
    match eligible {
        Some((id, _, state)) => Ok((*id, state.clone())),
        None => {
            let oldest = complete
                .iter()
                .filter(|(_, _, s)| s.stream == stream)
                .filter_map(|(_, _, s)| s.stop_time.zip(s.stop_lsn))
                .min();
            Err(Error::NoBackup(match oldest {
                Some((time, lsn)) => format!(
                    "no base backup of {stream} ends before the target: the oldest ends at {time} \
                     (LSN {lsn}); choose a later target"
                ),
                None => format!("the repository holds no complete base backup of {stream}"),
            }))
        }
    }
}

/// Restores a data directory for point-in-time recovery.
pub fn restore(
    repo: &IndexedRepository,
    options: &PgRestoreOptions,
    progress: &RestoreProgress,
) -> Result<PgRestoreOutcome> {
    let backups = base_backups(repo)?;
    let (backup_id, state) = choose_backup(&backups, options.stream.as_deref(), options.target)?;
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
    let mut removed = 0;
    if to.join("postmaster.pid").exists() {
        return Err(Error::Unusable(format!(
            "{} holds postmaster.pid: a server may be running on it; stop it first",
            to.display()
        )));
    }
    let not_empty = std::fs::read_dir(to)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if not_empty {
        if !options.delta {
            return Err(Error::Unusable(format!(
                "{} is not empty: restore into an empty directory, or pass --delta to restore \
                 over it (keeping the files that are unchanged)",
                to.display()
            )));
        }
        let mut keep = HashSet::new();
        lifeboat_repo::browse::walk(repo, &data_node, Path::new(""), &mut |path, _| {
            keep.insert(path.to_path_buf());
            Ok(true)
        })?;
        removed = remove_extra(to, Path::new(""), &keep)?;
    }
    let mut data_snapshot = snapshot.clone();
    data_snapshot.tree = data_node;
    let summary = lifeboat_files::restore(
        repo,
        &data_snapshot,
        to,
        &RestoreOptions {
            delta: options.delta,
            workers: options.workers,
            ..Default::default()
        },
        progress,
    )?;
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
    let label = state.backup_label.as_deref().unwrap_or_default();
    write_file(&to.join("backup_label"), label)?;
    if let Some(map) = &state.tablespace_map {
        write_file(&to.join("tablespace_map"), map)?;
    }
    let auto_conf = to.join("postgresql.auto.conf");
    let existing = match std::fs::read_to_string(&auto_conf) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("read", &auto_conf, e)),
    };
    write_file(&auto_conf, &with_recovery_settings(&existing, options))?;
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
    })
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

/// `postgresql.auto.conf` with this restore's block (replacing an earlier one).
pub fn with_recovery_settings(existing: &str, options: &PgRestoreOptions) -> String {
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
    set("recovery_target_timeline", "latest");
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
        }
    }

    #[test]
    fn recovery_settings_replace_an_earlier_block() {
        let time: jiff::Timestamp = "2026-11-28T01:02:03.25Z".parse().unwrap();
        let first = with_recovery_settings("port = 5433\n", &options(RecoveryTarget::Time(time)));
        assert!(first.starts_with("port = 5433\n"));
        assert!(first.contains("recovery_target_time = '2026-11-28 01:02:03.250000+00'\n"));
        assert!(
            first.contains("restore_command = 'lifeboat pg archive-get --stream ''pg-1'' %f %p'\n")
        );
        assert!(first.contains("recovery_target_action = 'promote'\n"));
        let second = with_recovery_settings(&first, &options(RecoveryTarget::Latest));
        assert!(!second.contains("recovery_target_time ="));
        assert_eq!(second.matches(BLOCK_BEGIN).count(), 1);
        assert!(second.starts_with("port = 5433\n"));
    }

    fn state(stream: &str, stop_secs: i64, complete: bool) -> BackupState {
        BackupState {
            version: 1,
            complete,
            system_identifier: "1".to_string(),
            stream: stream.to_string(),
            data_directory: "/d".to_string(),
            server_version: 150000,
            segment_size: crate::wal::DEFAULT_SEGMENT_SIZE,
            timeline: 1,
            start_lsn: Lsn(stop_secs as u64 * 100),
            start_wal: String::new(),
            start_time: jiff::Timestamp::from_second(stop_secs - 1).unwrap(),
            stop_lsn: Some(Lsn(stop_secs as u64 * 100 + 50)),
            stop_wal: None,
            stop_time: Some(jiff::Timestamp::from_second(stop_secs).unwrap()),
            backup_label: Some(String::new()),
            tablespace_map: None,
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
        assert_eq!(
            choose_backup(&backups, None, at(1500)).unwrap().0,
            Id([1; 32])
        );
        assert_eq!(
            choose_backup(&backups, None, at(5000)).unwrap().0,
            Id([2; 32])
        );
        assert_eq!(
            choose_backup(&backups, None, RecoveryTarget::Latest)
                .unwrap()
                .0,
            Id([2; 32])
        );
        let err = choose_backup(&backups, None, at(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("choose a later target"), "{err}");
        let two = vec![
            (Id([1; 32]), snapshot(), state("pg-1", 1000, true)),
            (Id([2; 32]), snapshot(), state("pg-2", 2000, true)),
        ];
        let err = choose_backup(&two, None, at(5000)).unwrap_err().to_string();
        assert!(err.contains("--stream"), "{err}");
        assert_eq!(
            choose_backup(&two, Some("pg-2"), at(5000)).unwrap().0,
            Id([2; 32])
        );
    }
}

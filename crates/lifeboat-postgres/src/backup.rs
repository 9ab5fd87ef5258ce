//! Base backups: the data directory of a running cluster, copied between `pg_backup_start` and
//! `pg_backup_stop` into an ordinary Lifeboat snapshot.
//!
//! The files go through the file source ([`lifeboat_files::backup`]), so every base backup is
//! a full backup that stores only the chunks the repository lacks (incremental forever).
//! Every file is read (`force`): PostgreSQL can rewrite a page within the timestamp
//! granularity of a previous backup's read, and skipping such a file by size and mtime would
//! lose a change that the new backup's WAL range does not replay. Reading costs local I/O only;
//! unchanged chunks are not uploaded again.
//!
//! The backup label that `pg_backup_stop` returns is known only after the files are copied,
//! and a snapshot is written once, at the end of the file backup. So the file backup is saved
//! with `complete: false`, then a second snapshot with the same tree and the complete state
//! (label, stop position) is written and the first one is removed. A crash in between leaves a
//! snapshot marked incomplete, which `pg restore` and `pg check` ignore and report.

use std::path::{Path, PathBuf};

use lifeboat_files::{BackupOptions, BackupProgress, Warning};
use lifeboat_repo::{Id, IndexedRepository, Snapshot, SourceKind, WriterOptions};
use serde::{Deserialize, Serialize};

use crate::archive::{read_system_identifier, stream_for};
use crate::error::{Error, Result};
use crate::session::{ConnectOptions, Session, from_hex, literal};
use crate::wal::{Lsn, WalFile};

/// Version of [`BackupState`].
pub const STATE_VERSION: u32 = 1;

/// What a PostgreSQL snapshot records in `source_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupState {
    /// Version of this structure.
    pub version: u32,
    /// False until `pg_backup_stop` returned and its label was recorded.
    pub complete: bool,
    /// The cluster's system identifier (a string: it does not fit a JSON double).
    pub system_identifier: String,
    /// The stream holding the cluster's WAL.
    pub stream: String,
    /// The data directory on the server when the backup ran.
    pub data_directory: String,
    /// `server_version_num`.
    pub server_version: u32,
    /// WAL segment size in bytes.
    pub segment_size: u64,
    /// Timeline the backup started on.
    pub timeline: u32,
    /// Where the backup starts (the checkpoint's redo position).
    pub start_lsn: Lsn,
    /// The WAL file holding `start_lsn`: the oldest segment a restore of this backup needs.
    pub start_wal: String,
    /// Server time when the backup started.
    pub start_time: jiff::Timestamp,
    /// Where the backup ends: a restore is consistent from here on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_lsn: Option<Lsn>,
    /// The WAL file holding `stop_lsn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_wal: Option<String>,
    /// Server time when the backup ended: the earliest time this backup can restore to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<jiff::Timestamp>,
    /// The `backup_label` file `pg_backup_stop` returned, written into the data directory on
    /// restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_label: Option<String>,
    /// The `tablespace_map` file, if the cluster has tablespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// Tablespaces outside the data directory; each one's files are in the snapshot under its
    /// location.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
    /// True for a backup taken from a standby.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_standby: bool,
    /// A standby backup's `global/pg_control`, read after `pg_backup_stop` (hex). Its
    /// minimum recovery point is where the restored copy becomes consistent, so it must be
    /// copied after every other file; restore writes it over the one in the file tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_file: Option<String>,
}

/// A tablespace outside the data directory (a symbolic link `pg_tblspc/<oid>` to its location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// The tablespace's oid: its link's name in `pg_tblspc`.
    pub oid: u32,
    /// Its directory when the backup ran, as the backup host saw it.
    pub location: String,
}

/// The tablespaces of the data directory `data_dir`: the links in `pg_tblspc`. In-place
/// tablespaces (directories there rather than links) are part of the data directory's copy.
pub fn tablespaces(data_dir: &Path) -> Result<Vec<Tablespace>> {
    let dir = data_dir.join("pg_tblspc");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", &dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
        let path = entry.path();
        let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        let Some(oid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !is_link {
            continue;
        }
        let target = std::fs::read_link(&path).map_err(|e| Error::io("read the link", &path, e))?;
        let location = if target.is_absolute() {
            target
        } else {
            dir.join(target)
        };
        let location =
            std::path::absolute(&location).map_err(|e| Error::io("resolve", &location, e))?;
        if location.starts_with(data_dir) {
            return Err(Error::Unusable(format!(
                "tablespace {oid} lies inside the data directory ({}); move it out (ALTER \
                 TABLE ... SET TABLESPACE) before backing up",
                location.display()
            )));
        }
        found.push(Tablespace {
            oid,
            location: location.to_string_lossy().into_owned(),
        });
    }
    found.sort_by_key(|t| t.oid);
    Ok(found)
}

impl BackupState {
    /// The state of a PostgreSQL snapshot, if it has one this build reads.
    pub fn of(snapshot: &Snapshot) -> Option<BackupState> {
        if snapshot.source != SourceKind::Postgres {
            return None;
        }
        serde_json::from_value(snapshot.source_state.clone()?).ok()
    }

    /// The system identifier as a number.
    pub fn system_identifier(&self) -> u64 {
        self.system_identifier.parse().unwrap_or_default()
    }
}

/// How to take a base backup.
#[derive(Debug, Clone, Default)]
pub struct BaseBackupOptions {
    /// How to reach the server.
    pub connect: ConnectOptions,
    /// The data directory as this machine sees it (default: the server's `data_directory`).
    pub data_dir: Option<PathBuf>,
    /// Host name recorded in the snapshot.
    pub hostname: String,
    /// User name recorded in the snapshot.
    pub username: String,
    /// Labels for the snapshot.
    pub tags: Vec<String>,
    /// Tuning of the write pipeline.
    pub writer: WriterOptions,
    /// How long a backup from a standby waits for the primary to archive the WAL it needs
    /// (`None`: 10 minutes). A backup on a primary waits in `pg_backup_stop` instead.
    pub wal_wait: Option<std::time::Duration>,
}

/// What a base backup did.
#[derive(Debug, Clone)]
pub struct BaseBackupOutcome {
    /// The snapshot.
    pub snapshot_id: Id,
    /// The snapshot itself.
    pub snapshot: Snapshot,
    /// Its PostgreSQL state.
    pub state: BackupState,
    /// Files that could not be read and still exist. Always empty: a backup with such files
    /// fails instead (kept so callers print one list of problems).
    pub warnings: Vec<Warning>,
    /// Files that disappeared while being backed up (normal: PostgreSQL dropped them, and
    /// WAL replay does the same on restore).
    pub vanished: usize,
    /// The incomplete first snapshot could not be removed (append-only storage): it stays,
    /// marked incomplete.
    pub leftover: Option<Id>,
    /// WAL segments from the backup's start to its stop that are not in this repository's
    /// stream: `archive_command` archives somewhere else, and this backup cannot be restored
    /// from this repository.
    pub wal_missing: Vec<String>,
}

/// Paths below the data directory that a base backup leaves out (PostgreSQL's documented
/// list): WAL comes from the archive; the rest is rebuilt or meaningless after a restart.
pub const EXCLUDED: &[&str] = &[
    "pg_wal/*",
    "pg_replslot/*",
    "pg_dynshmem/*",
    "pg_notify/*",
    "pg_serial/*",
    "pg_snapshots/*",
    "pg_stat_tmp/*",
    "pg_subtrans/*",
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

fn glob_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Exclude patterns for a data directory.
pub fn excludes(data_dir: &Path) -> Vec<String> {
    let base = glob_escape(&data_dir.to_string_lossy());
    let mut patterns: Vec<String> = EXCLUDED.iter().map(|p| format!("{base}/{p}")).collect();
    // Temporary files of sorts and hashes, anywhere.
    patterns.push("pgsql_tmp*".to_string());
    patterns
}

fn parse_time(text: &str) -> Result<jiff::Timestamp> {
    text.trim().parse().map_err(|e| Error::Postgres {
        what: "read the server time".to_string(),
        message: format!("{text:?}: {e}"),
    })
}

const UTC_NOW: &str =
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Takes a base backup of the cluster `options.connect` reaches.
pub fn base_backup(
    repo: &mut IndexedRepository,
    options: &BaseBackupOptions,
    progress: &BackupProgress,
) -> Result<BaseBackupOutcome> {
    let mut session = Session::connect(&options.connect)?;
    let server_version: u32 = session
        .query_value("SHOW server_version_num")?
        .trim()
        .parse()
        .unwrap_or_default();
    if server_version < 150000 {
        return Err(Error::Unusable(format!(
            "the server runs PostgreSQL {server_version}; base backups need PostgreSQL 15 or newer \
             (pg_backup_start/pg_backup_stop)"
        )));
    }
    let from_standby = session.query_value("SELECT pg_is_in_recovery()")?.trim() == "t";
    // On a standby the primary's archiving is what counts; this one's setting is moot.
    let archive_mode = session.query_value("SHOW archive_mode")?;
    if archive_mode.trim() == "off" && !from_standby {
        return Err(Error::Unusable(
            "archive_mode is off: a base backup cannot be restored without the WAL written during \
             it. Set archive_mode = on and archive_command = 'lifeboat pg archive-push %p' \
             (see docs/postgres.md), restart the server, then back up"
                .to_string(),
        ));
    }
    let system_identifier: u64 = session
        .query_value("SELECT system_identifier FROM pg_control_system()")?
        .trim()
        .parse()
        .map_err(|_| Error::Unusable("the server returned no system identifier".to_string()))?;
    let segment_size: u64 = session
        .query_value("SELECT pg_size_bytes(current_setting('wal_segment_size'))")?
        .trim()
        .parse()
        .unwrap_or(crate::wal::DEFAULT_SEGMENT_SIZE);
    let server_data_dir = session.query_value("SHOW data_directory")?;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(server_data_dir.trim()));
    let local_identifier = read_system_identifier(&data_dir).map_err(|e| {
        Error::Unusable(format!(
            "cannot read the data directory {} ({e}): run `lifeboat pg backup` on the database \
             host as a user that can read it, or pass --pgdata",
            data_dir.display()
        ))
    })?;
    if local_identifier != system_identifier {
        return Err(Error::Unusable(format!(
            "{} belongs to cluster {local_identifier}, but the server is cluster \
             {system_identifier}: --pgdata or the connection points at the wrong cluster",
            data_dir.display()
        )));
    }
    // Read between pg_backup_start and the copy would be no better: a tablespace created
    // during the backup is replayed from WAL into the data directory's pg_tblspc anyway.
    let tablespaces = tablespaces(&data_dir)?;
    let stream = stream_for(system_identifier);

    let label = format!("lifeboat {}", jiff::Timestamp::now());
    let start = session.query_row(&format!(
        "SELECT b::text, {UTC_NOW}, (SELECT timeline_id FROM pg_control_checkpoint()) \
         FROM pg_backup_start({}, true) AS b",
        literal(&label)
    ))?;
    let start_lsn = Lsn::parse(&start[0]).ok_or_else(|| Error::Postgres {
        what: "pg_backup_start".to_string(),
        message: format!("unexpected LSN {:?}", start[0]),
    })?;
    let start_time = parse_time(&start[1])?;
    let mut timeline: u32 = start
        .get(2)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1);
    let mut state = BackupState {
        version: STATE_VERSION,
        complete: false,
        system_identifier: system_identifier.to_string(),
        stream: stream.clone(),
        data_directory: data_dir.to_string_lossy().into_owned(),
        server_version,
        segment_size,
        timeline,
        start_lsn,
        start_wal: WalFile::segment(timeline, start_lsn.segment(segment_size), segment_size)
            .to_string(),
        start_time,
        stop_lsn: None,
        stop_wal: None,
        stop_time: None,
        backup_label: None,
        tablespace_map: None,
        tablespaces: tablespaces.clone(),
        from_standby,
        control_file: None,
    };
    let mut paths = vec![data_dir.clone()];
    paths.extend(tablespaces.iter().map(|t| PathBuf::from(&t.location)));
    let files = BackupOptions {
        paths,
        excludes: excludes(&data_dir),
        tags: options.tags.clone(),
        hostname: options.hostname.clone(),
        username: options.username.clone(),
        force: true,
        writer: options.writer.clone(),
        source: SourceKind::Postgres,
        source_state: Some(serde_json::to_value(&state).expect("state serialises")),
        ..Default::default()
    };
    let outcome = lifeboat_files::backup(repo, &files, progress)?;

    // Waits until the last segment the backup needs is archived, so a completed backup is
    // always restorable from the repository alone.
    let stop = session.query_row(&format!(
        "SELECT s.lsn::text, encode(convert_to(s.labelfile, 'UTF8'), 'hex'), \
         encode(convert_to(coalesce(s.spcmapfile, ''), 'UTF8'), 'hex'), {UTC_NOW} \
         FROM pg_backup_stop(true) AS s"
    ))?;
    let mut stop_lsn = Lsn::parse(&stop[0]).ok_or_else(|| Error::Postgres {
        what: "pg_backup_stop".to_string(),
        message: format!("unexpected LSN {:?}", stop[0]),
    })?;
    let mut stop_time = parse_time(&stop[3])?;
    if from_standby {
        // A standby's copy becomes consistent at its pg_control's minimum recovery point,
        // which must cover every page copied: so pg_control is read now, after the copy, and
        // the backup ends no earlier than the point the server reports after that read.
        let control = read_control_file(&data_dir)?;
        let row = session.query_row(&format!(
            "SELECT min_recovery_end_lsn::text, {UTC_NOW} FROM pg_control_recovery()"
        ))?;
        if let Some(point) = Lsn::parse(&row[0]) {
            stop_lsn = stop_lsn.max(point);
        }
        stop_time = parse_time(&row[1])?;
        state.control_file = Some(hex::encode(control));
    }
    let backup_label = from_hex(&stop[1])?;
    let tablespace_map = from_hex(&stop[2])?;
    if let Some(t) = label_timeline(&backup_label) {
        timeline = t;
    }
    state.timeline = timeline;
    state.start_wal =
        WalFile::segment(timeline, start_lsn.segment(segment_size), segment_size).to_string();
    state.complete = true;
    state.stop_lsn = Some(stop_lsn);
    state.stop_wal = Some(
        WalFile::segment(timeline, stop_lsn.end_segment(segment_size), segment_size).to_string(),
    );
    state.stop_time = Some(stop_time);
    session.close();
    state.backup_label = Some(backup_label);
    state.tablespace_map = (!tablespace_map.is_empty()).then_some(tablespace_map);

    // A data file that exists but could not be read makes the copy incomplete, and WAL replay
    // cannot make up for a missing file: such a backup must never count as restorable.
    let (vanished, unreadable): (Vec<Warning>, Vec<Warning>) = outcome
        .warnings
        .iter()
        .cloned()
        .partition(|w| std::fs::symlink_metadata(&w.path).is_err());
    if !unreadable.is_empty() {
        let _ = repo.forget_snapshot(&outcome.snapshot_id);
        return Err(Error::Unusable(format!(
            "{} file(s) of the data directory could not be read, so the base backup is \
             incomplete and was not recorded: {}; run `lifeboat pg backup` as the cluster's \
             owner (or a user that can read every file)",
            unreadable.len(),
            unreadable
                .iter()
                .take(3)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let mut snapshot = outcome.snapshot.clone();
    snapshot.source_state = Some(serde_json::to_value(&state).expect("state serialises"));
    let snapshot_id = repo.save_snapshot(&snapshot)?;
    let leftover = repo
        .forget_snapshot(&outcome.snapshot_id)
        .err()
        .map(|_| outcome.snapshot_id);
    // pg_backup_stop waited for the WAL to be archived (on a primary); check that it was
    // archived here. A standby's last segment is archived by the primary once it fills or
    // switches: wait for it.
    let missing = || -> Result<Vec<String>> {
        let archived: std::collections::HashSet<String> = crate::archive::list(repo, &stream)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Ok(
            (start_lsn.segment(segment_size)..=stop_lsn.end_segment(segment_size))
                .map(|segno| WalFile::segment(timeline, segno, segment_size).to_string())
                .filter(|name| !archived.contains(name))
                .collect(),
        )
    };
    let mut wal_missing = missing()?;
    if from_standby && !wal_missing.is_empty() {
        let deadline = std::time::Instant::now()
            + options
                .wal_wait
                .unwrap_or(std::time::Duration::from_secs(600));
        while !wal_missing.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_secs(1));
            wal_missing = missing()?;
        }
    }
    Ok(BaseBackupOutcome {
        snapshot_id,
        snapshot,
        state,
        warnings: unreadable,
        vanished: vanished.len(),
        leftover,
        wal_missing,
    })
}

/// `global/pg_control`, read until two reads agree (PostgreSQL rewrites it in place, so one
/// read could see half of an update).
fn read_control_file(data_dir: &Path) -> Result<Vec<u8>> {
    let path = data_dir.join("global").join("pg_control");
    let read = || std::fs::read(&path).map_err(|e| Error::io("read control file", &path, e));
    let mut last = read()?;
    for _ in 0..10 {
        let next = read()?;
        if next == last {
            return Ok(next);
        }
        last = next;
    }
    Err(Error::Unusable(format!(
        "{} kept changing while it was read",
        path.display()
    )))
}

/// The `START TIMELINE:` line of a backup label.
fn label_timeline(label: &str) -> Option<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|t| t.trim().parse().ok())
}

/// The PostgreSQL base backups in the repository, oldest first, complete or not.
pub fn base_backups(repo: &lifeboat_repo::Repository) -> Result<Vec<(Id, Snapshot, BackupState)>> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .filter_map(|entry| {
            let state = BackupState::of(&entry.snapshot)?;
            Some((entry.id, entry.snapshot, state))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_timeline_is_read() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000020000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 2\n";
        assert_eq!(label_timeline(label), Some(2));
        assert_eq!(label_timeline("nothing"), None);
    }

    #[test]
    fn excludes_escape_the_data_directory() {
        let patterns = excludes(Path::new("/srv/pg[15]/data"));
        assert!(patterns.contains(&"/srv/pg\\[15\\]/data/pg_wal/*".to_string()));
        assert!(patterns.contains(&"pgsql_tmp*".to_string()));
    }
}

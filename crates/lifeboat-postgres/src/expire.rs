//! Retention: keep the newest N complete base backups and the WAL they need.
//!
//! Plan, then apply: [`plan`] is a pure function of the backups and the archived file names,
//! so it can be shown as a dry run and tested alone. Apply forgets the base backups first and
//! deletes WAL second, so an interruption leaves at worst WAL that no backup needs (removed by
//! the next run), never a kept backup without its WAL. Timeline history files are always kept:
//! they are tiny and recovery needs them to follow timelines. The data of forgotten snapshots
//! is freed by `lifeboat prune`.

use lifeboat_repo::{Id, Repository};
use serde::Serialize;

use crate::archive;
use crate::backup::{BackupState, base_backups};
use crate::error::{Error, Result};
use crate::wal::WalFile;

/// What retention will do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExpirePlan {
    /// Base backups kept, oldest first.
    pub keep: Vec<Id>,
    /// Base backups to forget (complete ones beyond N, and interrupted ones older than the
    /// oldest kept).
    pub forget: Vec<Id>,
    /// The oldest WAL segment kept (the oldest kept backup's start).
    pub wal_from: Option<String>,
    /// WAL files to delete.
    pub delete_wal: Vec<String>,
}

/// Plans keeping the newest `keep` complete backups of one cluster and the WAL from the oldest
/// kept backup's start on.
pub fn plan(
    keep: usize,
    backups: &[(Id, BackupState)],
    files: &[(String, WalFile)],
) -> Result<ExpirePlan> {
    if keep == 0 {
        return Err(Error::Unusable(
            "--keep must be at least 1: without a base backup the WAL archive restores nothing"
                .to_string(),
        ));
    }
    let mut complete: Vec<&(Id, BackupState)> =
        backups.iter().filter(|(_, s)| s.complete).collect();
    complete.sort_by_key(|(_, s)| (s.stop_lsn, s.stop_time));
    if complete.len() <= keep {
        return Ok(ExpirePlan {
            keep: complete.iter().map(|(id, _)| *id).collect(),
            ..Default::default()
        });
    }
    let (old, kept) = complete.split_at(complete.len() - keep);
    let oldest = &kept[0].1;
    let segment_size = oldest.segment_size;
    let from = WalFile::parse(&oldest.start_wal)
        .and_then(|f| f.segno(segment_size))
        .unwrap_or_else(|| oldest.start_lsn.segment(segment_size));
    let mut forget: Vec<Id> = old.iter().map(|(id, _)| *id).collect();
    forget.extend(
        backups
            .iter()
            .filter(|(_, s)| !s.complete && s.start_lsn < oldest.start_lsn)
            .map(|(id, _)| *id),
    );
    let delete_wal = files
        .iter()
        .filter(|(_, f)| !matches!(f, WalFile::History { .. }))
        .filter(|(_, f)| f.segno(segment_size).is_some_and(|n| n < from))
        .map(|(name, _)| name.clone())
        .collect();
    Ok(ExpirePlan {
        keep: kept.iter().map(|(id, _)| *id).collect(),
        forget,
        wal_from: Some(oldest.start_wal.clone()),
        delete_wal,
    })
}

/// Plans retention for `stream` in the repository.
pub fn plan_for(repo: &Repository, stream: &str, keep: usize) -> Result<ExpirePlan> {
    let backups: Vec<(Id, BackupState)> = base_backups(repo)?
        .into_iter()
        .filter(|(_, _, s)| s.stream == stream)
        .map(|(id, _, s)| (id, s))
        .collect();
    plan(keep, &backups, &archive::list(repo, stream)?)
}

/// Carries out a plan: forgets the backups, then deletes the WAL.
pub fn apply(repo: &Repository, stream: &str, plan: &ExpirePlan) -> Result<()> {
    for id in &plan.forget {
        repo.forget_snapshot(id)?;
    }
    for name in &plan.delete_wal {
        repo.delete_stream_object(stream, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{DEFAULT_SEGMENT_SIZE, Lsn};

    fn backup(n: u8, start_seg: u64, complete: bool) -> (Id, BackupState) {
        let start = Lsn(start_seg * DEFAULT_SEGMENT_SIZE + 40);
        (
            Id([n; 32]),
            BackupState {
                version: 1,
                complete,
                system_identifier: "1".to_string(),
                stream: "pg-1".to_string(),
                data_directory: "/d".to_string(),
                server_version: 150000,
                segment_size: DEFAULT_SEGMENT_SIZE,
                timeline: 1,
                start_lsn: start,
                start_wal: WalFile::segment(1, start_seg, DEFAULT_SEGMENT_SIZE).to_string(),
                start_time: jiff::Timestamp::UNIX_EPOCH,
                stop_lsn: complete.then_some(Lsn(start.0 + 100)),
                stop_wal: None,
                stop_time: None,
                backup_label: None,
                tablespace_map: None,
            },
        )
    }

    #[test]
    fn keeps_the_newest_backups_and_the_wal_from_the_oldest_kept_start() {
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000004",
            "000000010000000000000005",
        ];
        let files: Vec<(String, WalFile)> = names
            .iter()
            .map(|n| (n.to_string(), WalFile::parse(n).unwrap()))
            .collect();
        let backups = [
            backup(1, 2, true),
            backup(9, 3, false),
            backup(2, 4, true),
            backup(3, 5, true),
        ];
        let plan = plan(2, &backups, &files).unwrap();
        assert_eq!(plan.keep, vec![Id([2; 32]), Id([3; 32])]);
        assert_eq!(plan.forget, vec![Id([1; 32]), Id([9; 32])]);
        assert_eq!(plan.wal_from.as_deref(), Some("000000010000000000000004"));
        assert_eq!(
            plan.delete_wal,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
            ]
        );
        // Nothing to do when there are at most N backups; N = 0 is refused.
        assert_eq!(
            super::plan(3, &backups, &files).unwrap().delete_wal.len(),
            0
        );
        assert!(super::plan(0, &backups, &files).is_err());
    }
}

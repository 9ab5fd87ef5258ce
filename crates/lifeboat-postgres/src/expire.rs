//! Retention: keep the newest N complete base backups, or every moment of a recovery window,
//! and the WAL they need.
//!
//! Plan, then apply: [`plan`] is a pure function of the backups and the archived file names,
//! so it can be shown as a dry run and tested alone. Apply forgets the base backups first and
//! deletes WAL second, so an interruption leaves at worst WAL that no backup needs (removed by
//! the next run), never a kept backup without its WAL. Timeline history files are always kept:
//! they are tiny and recovery needs them to follow timelines. The data of forgotten snapshots
//! is freed by `lifeboat prune`.

use lifeboat_repo::{Id, Repository};
use serde::Serialize;

use crate::backup::BackupState;
use crate::error::{Error, Result};
use crate::timeline::{ClusterArchive, TimelineHistory};
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

/// Which base backups retention keeps; a backup is kept if either rule keeps it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpirePolicy {
    /// The newest N complete backups.
    pub keep_last: Option<usize>,
    /// Every moment of this window before now stays restorable: the backups that stopped
    /// within it, and the newest one that stopped before it (replay starts there).
    pub keep_within: Option<jiff::Span>,
}

/// Plans retention for one cluster: the backups `policy` keeps, and the WAL from the oldest
/// kept backup's start on. `now` is the end of a `keep_within` window.
///
/// The rules count the backups on `history` (the newest timeline's): after a point-in-time
/// recovery, backups of the abandoned branch taken after the branch point cannot restore the
/// new timeline, and counting them could forget the only backup that can. They are kept while
/// they are no older than the oldest backup the rules keep (for a look at the old branch), and
/// forgotten after that.
pub fn plan(
    policy: &ExpirePolicy,
    now: jiff::Timestamp,
    backups: &[(Id, BackupState)],
    files: &[(String, WalFile)],
    history: &TimelineHistory,
) -> Result<ExpirePlan> {
    if policy.keep_last == Some(0) {
        return Err(Error::Unusable(
            "--keep must be at least 1: without a base backup the WAL archive restores nothing"
                .to_string(),
        ));
    }
    let on_history = |s: &BackupState| {
        s.stop_lsn
            .is_some_and(|stop| history.contains(s.timeline, stop))
    };
    let stopped = |s: &BackupState| s.stop_time.unwrap_or(s.start_time);
    let mut complete: Vec<&(Id, BackupState)> = backups
        .iter()
        .filter(|(_, s)| s.complete && on_history(s))
        .collect();
    complete.sort_by_key(|(_, s)| (s.stop_lsn, s.stop_time));
    let branch: Vec<&(Id, BackupState)> = backups
        .iter()
        .filter(|(_, s)| s.complete && !on_history(s))
        .collect();
    let keep_all = || {
        let mut all: Vec<&(Id, BackupState)> = complete.iter().chain(&branch).copied().collect();
        all.sort_by_key(|(_, s)| stopped(s));
        ExpirePlan {
            keep: all.iter().map(|(id, _)| *id).collect(),
            ..Default::default()
        }
    };
    // Index of the oldest backup each rule keeps.
    let by_count = policy.keep_last.map(|n| complete.len().saturating_sub(n));
    let by_window = match policy.keep_within {
        Some(span) => {
            let start = now
                .to_zoned(jiff::tz::TimeZone::system())
                .checked_sub(span)
                .map_err(|e| Error::Unusable(format!("recovery window {span}: {e}")))?
                .timestamp();
            Some(
                complete
                    .iter()
                    .rposition(|(_, s)| stopped(s) <= start)
                    .unwrap_or(0),
            )
        }
        None => None,
    };
    let Some(oldest_kept) = by_count.into_iter().chain(by_window).min() else {
        return Err(Error::Unusable(
            "say what to keep: --keep N and/or --keep-within DURATION".to_string(),
        ));
    };
    if oldest_kept == 0 || complete.is_empty() {
        return Ok(keep_all());
    }
    let (old, kept) = complete.split_at(oldest_kept);
    let oldest = &kept[0].1;
    let (branch_kept, branch_old): (Vec<_>, Vec<_>) = branch
        .iter()
        .partition(|(_, s)| stopped(s) >= stopped(oldest));
    let mut keep: Vec<&(Id, BackupState)> = kept.iter().chain(&branch_kept).copied().collect();
    keep.sort_by_key(|(_, s)| stopped(s));
    let segment_size = oldest.segment_size;
    let from = WalFile::parse(&oldest.start_wal)
        .and_then(|f| f.segno(segment_size))
        .unwrap_or_else(|| oldest.start_lsn.segment(segment_size));
    let mut forget: Vec<Id> = old.iter().chain(&branch_old).map(|(id, _)| *id).collect();
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
        keep: keep.iter().map(|(id, _)| *id).collect(),
        forget,
        wal_from: Some(oldest.start_wal.clone()),
        delete_wal,
    })
}

/// Plans retention for `stream` in the repository, with a window ending now.
pub fn plan_for(repo: &Repository, stream: &str, policy: &ExpirePolicy) -> Result<ExpirePlan> {
    let archive = ClusterArchive::load(repo, stream)?;
    plan(
        policy,
        jiff::Timestamp::now(),
        &archive.backups,
        &archive.files,
        &archive.history,
    )
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
                tablespaces: vec![],
                from_standby: false,
                control_file: None,
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
        let plan = plan(
            &last(2),
            jiff::Timestamp::now(),
            &backups,
            &files,
            &TimelineHistory::root(1),
        )
        .unwrap();
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
        let now = jiff::Timestamp::now();
        assert_eq!(
            super::plan(&last(3), now, &backups, &files, &TimelineHistory::root(1))
                .unwrap()
                .delete_wal
                .len(),
            0
        );
        assert!(super::plan(&last(0), now, &backups, &files, &TimelineHistory::root(1)).is_err());
        assert!(
            super::plan(
                &ExpirePolicy::default(),
                now,
                &backups,
                &files,
                &TimelineHistory::root(1)
            )
            .is_err()
        );
    }

    fn last(n: usize) -> ExpirePolicy {
        ExpirePolicy {
            keep_last: Some(n),
            keep_within: None,
        }
    }

    #[test]
    fn a_recovery_window_keeps_the_backup_replay_starts_from() {
        let day = |d: i64| jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_hours(24 * d);
        // Backups that stopped on days 1, 3, 5 and 8; "now" is day 10.
        let backups: Vec<(Id, BackupState)> = [(1u8, 1i64, 2u64), (2, 3, 4), (3, 5, 6), (4, 8, 9)]
            .into_iter()
            .map(|(n, stopped, seg)| {
                let (id, mut state) = backup(n, seg, true);
                state.stop_time = Some(day(stopped));
                (id, state)
            })
            .collect();
        let files: Vec<(String, WalFile)> = (1..=9)
            .map(|seg| {
                let name = WalFile::segment(1, seg, DEFAULT_SEGMENT_SIZE).to_string();
                let parsed = WalFile::parse(&name).unwrap();
                (name, parsed)
            })
            .collect();
        let within = |days: i64| ExpirePolicy {
            keep_last: None,
            keep_within: Some(jiff::Span::new().days(days)),
        };
        // Six days back is day 4: replay from the day-3 backup covers it.
        let plan = plan(
            &within(6),
            day(10),
            &backups,
            &files,
            &TimelineHistory::root(1),
        )
        .unwrap();
        assert_eq!(plan.keep, vec![Id([2; 32]), Id([3; 32]), Id([4; 32])]);
        assert_eq!(plan.forget, vec![Id([1; 32])]);
        assert_eq!(plan.wal_from, Some(backups[1].1.start_wal.clone()));
        assert_eq!(plan.delete_wal.len(), 3, "{:?}", plan.delete_wal);
        // A window older than every backup keeps them all.
        assert!(
            super::plan(
                &within(30),
                day(10),
                &backups,
                &files,
                &TimelineHistory::root(1)
            )
            .unwrap()
            .forget
            .is_empty()
        );
        // Either rule keeping a backup keeps it: the count keeps the newest two, the window one more.
        let both = ExpirePolicy {
            keep_last: Some(2),
            ..within(6)
        };
        assert_eq!(
            super::plan(&both, day(10), &backups, &files, &TimelineHistory::root(1))
                .unwrap()
                .keep
                .len(),
            3
        );
        let both = ExpirePolicy {
            keep_last: Some(4),
            ..within(1)
        };
        assert_eq!(
            super::plan(&both, day(10), &backups, &files, &TimelineHistory::root(1))
                .unwrap()
                .keep
                .len(),
            4
        );
    }

    #[test]
    fn backups_of_an_abandoned_branch_do_not_count_and_never_displace_the_new_timelines_base() {
        let day = |d: i64| jiff::Timestamp::from_second(d * 86_400).unwrap();
        let at = |n: u8, timeline: u32, start_seg: u64, stop_day: i64| {
            let (id, mut state) = backup(n, start_seg, true);
            state.timeline = timeline;
            state.start_wal =
                WalFile::segment(timeline, start_seg, DEFAULT_SEGMENT_SIZE).to_string();
            state.stop_time = Some(day(stop_day));
            (id, state)
        };
        // Timeline 2 branched off timeline 1 in segment 4; backup 8 was taken on timeline 1
        // after that (the branch a point-in-time recovery abandoned).
        let history = TimelineHistory::parse(2, "1\t0/4000100\tbefore the mistake\n").unwrap();
        let files: Vec<(String, WalFile)> = (1..=7)
            .map(|seg| {
                let name = WalFile::segment(1, seg, DEFAULT_SEGMENT_SIZE).to_string();
                let parsed = WalFile::parse(&name).unwrap();
                (name, parsed)
            })
            .collect();
        let first = at(1, 1, 2, 1);
        let abandoned = at(8, 1, 5, 3);
        // Before timeline 2 has a backup of its own, the one from before the branch point is
        // the only one that restores it: kept, whatever the count says.
        let plan = plan(
            &last(1),
            day(4),
            &[first.clone(), abandoned.clone()],
            &files,
            &history,
        )
        .unwrap();
        assert_eq!(plan.keep, vec![Id([1; 32]), Id([8; 32])]);
        assert!(
            plan.forget.is_empty() && plan.delete_wal.is_empty(),
            "{plan:?}"
        );
        // Once timeline 2 has one, the older ones go, the abandoned branch's too.
        let own = at(2, 2, 6, 5);
        let plan =
            super::plan(&last(1), day(6), &[first, abandoned, own], &files, &history).unwrap();
        assert_eq!(plan.keep, vec![Id([2; 32])]);
        assert_eq!(plan.forget, vec![Id([1; 32]), Id([8; 32])]);
        assert_eq!(plan.wal_from.as_deref(), Some("000000020000000000000006"));
    }
}

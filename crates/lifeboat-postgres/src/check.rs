//! Checks of the WAL archive (`pg check`) and its figures (`pg status`).
//!
//! A point in time is restorable when a complete base backup ends before it and every WAL
//! segment from that backup's start to the point is archived. The check follows the newest
//! timeline's history (see [`crate::timeline`]): it lists the segment numbers present on that
//! history from the oldest complete backup's start segment to the newest archived one, and
//! names each run of missing segments and what it costs. Segments and backups of branches that
//! history left are not counted.

use std::collections::BTreeMap;

use lifeboat_repo::{Id, Repository};
use serde::Serialize;

use crate::archive;
use crate::backup::{BackupState, base_backups};
use crate::error::Result;
use crate::session::Session;
use crate::timeline::{ClusterArchive, TimelineHistory};
use crate::wal::{DEFAULT_SEGMENT_SIZE, Lsn, WalFile};

/// A run of missing segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The first missing segment.
    pub first_missing: String,
    /// The last missing segment.
    pub last_missing: String,
    /// How many segments are missing.
    pub segments: u64,
    /// The last segment archived before the gap: recovery from backups older than the gap
    /// stops here.
    pub replay_stops_after: Option<String>,
}

/// One base backup, as the check sees it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// Snapshot id.
    pub id: Id,
    /// False for a backup interrupted before `pg_backup_stop` (never restored from).
    pub complete: bool,
    /// First segment the backup needs.
    pub start_wal: String,
    /// Segment in which it becomes consistent.
    pub stop_wal: Option<String>,
    /// When it became consistent (server time).
    pub stop_time: Option<jiff::Timestamp>,
    /// Whether every segment from start to stop is archived, on the checked timeline's history.
    pub restorable: bool,
    /// Whether the backup lies on the history of the timeline the check follows: false for one
    /// taken on a branch that timeline left, after the branch point.
    pub on_timeline: bool,
    /// The newest archived segment reachable from this backup without crossing a gap.
    pub replays_to: Option<String>,
}

/// What `pg check` found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// The cluster's stream.
    pub stream: String,
    /// The timeline whose history the chain follows (the newest in the archive).
    pub timeline: u32,
    /// WAL segment size used to number segments.
    pub segment_size: u64,
    /// WAL files in the archive (segments, history, backup history, partial).
    pub files: usize,
    /// The segment the check starts from (the oldest complete backup's start).
    pub from: Option<String>,
    /// The newest archived segment.
    pub newest: Option<String>,
    /// Missing runs of segments between `from` and `newest`.
    pub gaps: Vec<Gap>,
    /// Base backups of this cluster, oldest first.
    pub backups: Vec<BackupReport>,
}

impl ChainReport {
    /// True when the chain has no gap and at least one complete backup is restorable.
    pub fn ok(&self) -> bool {
        self.gaps.is_empty() && self.backups.iter().any(|b| b.complete && b.restorable)
    }
}

/// The streams of PostgreSQL clusters in the repository.
pub fn clusters(repo: &Repository) -> Result<Vec<String>> {
    Ok(repo
        .list_streams()?
        .into_iter()
        .filter(|s| archive::system_identifier_of(s).is_some())
        .collect())
}

/// Checks the WAL chain of `stream`.
pub fn check_chain(repo: &Repository, stream: &str) -> Result<ChainReport> {
    let archive = ClusterArchive::load(repo, stream)?;
    Ok(chain_report(
        stream,
        &archive.files,
        &archive.backups,
        &archive.history,
    ))
}

/// The pure part of [`check_chain`]: the chain along `history` (segments of branches that
/// history left do not count).
pub fn chain_report(
    stream: &str,
    files: &[(String, WalFile)],
    backups: &[(Id, BackupState)],
    history: &TimelineHistory,
) -> ChainReport {
    let segment_size = backups
        .iter()
        .map(|(_, s)| s.segment_size)
        .next_back()
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    // Segment number → the newest timeline that has it.
    let mut present: BTreeMap<u64, u32> = BTreeMap::new();
    for (_, file) in files
        .iter()
        .filter(|(_, f)| f.is_segment() && history.holds_segment(f, segment_size))
    {
        let segno = file.segno(segment_size).expect("segments have numbers");
        let timeline = present.entry(segno).or_insert(0);
        *timeline = (*timeline).max(file.timeline());
    }
    let name =
        |segno: u64, timeline: u32| WalFile::segment(timeline, segno, segment_size).to_string();
    let start_segno = |s: &BackupState| {
        WalFile::parse(&s.start_wal)
            .and_then(|f| f.segno(segment_size))
            .unwrap_or_else(|| s.start_lsn.segment(segment_size))
    };
    let on_history = |s: &BackupState| {
        s.stop_lsn
            .is_some_and(|stop| history.contains(s.timeline, stop))
    };
    let from = backups
        .iter()
        .filter(|(_, s)| s.complete && on_history(s))
        .map(|(_, s)| (start_segno(s), s.timeline))
        .min()
        .or_else(|| present.iter().next().map(|(n, t)| (*n, *t)));
    let newest = present.iter().next_back().map(|(n, t)| (*n, *t));
    let mut gaps = Vec::new();
    if let (Some((first, first_tl)), Some((last, _))) = (from, newest) {
        let mut expected = first;
        let mut timeline = first_tl;
        let mut previous: Option<String> = None;
        for (&segno, &tl) in present.range(first..=last) {
            if segno > expected {
                gaps.push(Gap {
                    first_missing: name(expected, timeline),
                    last_missing: name(segno - 1, timeline),
                    segments: segno - expected,
                    replay_stops_after: previous.clone(),
                });
            }
            timeline = tl;
            previous = Some(name(segno, tl));
            expected = segno + 1;
        }
        if present.range(first..=first).next().is_none()
            && gaps.first().map(|g| &g.first_missing) != Some(&name(first, first_tl))
        {
            // The range starts with a missing segment that no later segment revealed.
            gaps.insert(
                0,
                Gap {
                    first_missing: name(first, first_tl),
                    last_missing: name(first, first_tl),
                    segments: 1,
                    replay_stops_after: None,
                },
            );
        }
    }
    let backups = backups
        .iter()
        .map(|(id, s)| {
            let start = start_segno(s);
            let stop = s.stop_lsn.map(|l| l.end_segment(segment_size));
            let mut replays_to = None;
            let mut expected = start;
            for (&segno, &tl) in present.range(start..) {
                if segno != expected {
                    break;
                }
                replays_to = Some((segno, tl));
                expected = segno + 1;
            }
            let on_timeline = on_history(s);
            let restorable = s.complete
                && on_timeline
                && stop.is_some_and(|stop| replays_to.is_some_and(|(r, _)| r >= stop));
            BackupReport {
                id: *id,
                complete: s.complete,
                start_wal: s.start_wal.clone(),
                stop_wal: s.stop_wal.clone(),
                stop_time: s.stop_time,
                restorable,
                on_timeline,
                replays_to: replays_to.map(|(n, t)| name(n, t)),
            }
        })
        .collect();
    ChainReport {
        stream: stream.to_string(),
        timeline: history.timeline,
        segment_size,
        files: files.len(),
        from: from.map(|(n, t)| name(n, t)),
        newest: newest.map(|(n, t)| name(n, t)),
        gaps,
        backups,
    }
}

/// What `pg status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The cluster's stream.
    pub stream: String,
    /// WAL files archived.
    pub archived_files: usize,
    /// The newest archived segment.
    pub last_archived: Option<String>,
    /// Complete base backups.
    pub base_backups: usize,
    /// The newest complete base backup.
    pub last_backup: Option<LastBackup>,
    /// Figures from the running server, when a connection was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerStatus>,
}

impl Status {
    /// The figures in Prometheus' text format (for node_exporter's textfile collector, say),
    /// as of `now`. Server figures appear only when the status has them.
    pub fn prometheus(&self, now: jiff::Timestamp) -> String {
        let stream = self.stream.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{stream=\"{stream}\"}} {value}\n"
            ));
        };
        metric(
            "lifeboat_pg_archived_files",
            "WAL files in the repository.",
            "gauge",
            self.archived_files.to_string(),
        );
        metric(
            "lifeboat_pg_base_backups",
            "Complete base backups in the repository.",
            "gauge",
            self.base_backups.to_string(),
        );
        if let Some(stop) = self.last_backup.as_ref().and_then(|b| b.stop_time) {
            let at = stop.as_millisecond() as f64 / 1000.0;
            metric(
                "lifeboat_pg_last_backup_timestamp_seconds",
                "When the newest complete base backup became consistent.",
                "gauge",
                format!("{at:.3}"),
            );
            let age = (now.as_millisecond() - stop.as_millisecond()).max(0) as f64 / 1000.0;
            metric(
                "lifeboat_pg_last_backup_age_seconds",
                "Seconds since the newest complete base backup became consistent.",
                "gauge",
                format!("{age:.3}"),
            );
        }
        if let Some(server) = &self.server {
            metric(
                "lifeboat_pg_archive_lag_segments",
                "Complete WAL segments the server has not yet archived into the repository.",
                "gauge",
                server.lag_segments.to_string(),
            );
            metric(
                "lifeboat_pg_archive_lag_seconds",
                "Seconds since the server last archived a segment while segments are waiting.",
                "gauge",
                format!("{:.3}", server.lag_seconds),
            );
            metric(
                "lifeboat_pg_archive_failures_total",
                "Failed archive_command calls since the server's statistics were reset.",
                "counter",
                server.failed_count.to_string(),
            );
        }
        out
    }
}

/// The newest base backup.
#[derive(Debug, Clone, Serialize)]
pub struct LastBackup {
    /// Snapshot id.
    pub id: Id,
    /// When it became consistent.
    pub stop_time: Option<jiff::Timestamp>,
    /// Where it became consistent.
    pub stop_lsn: Option<Lsn>,
}

/// Archive lag as the server sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// The server's current WAL insert position.
    pub current_lsn: Lsn,
    /// The segment being written now.
    pub current_wal: String,
    /// Complete segments not yet in the repository.
    pub lag_segments: u64,
    /// Seconds since the server last archived a segment, when segments are waiting (0 when
    /// none are).
    pub lag_seconds: f64,
    /// `pg_stat_archiver.last_archived_time`.
    pub last_archived_time: Option<String>,
    /// `pg_stat_archiver.failed_count`.
    pub failed_count: u64,
    /// `pg_stat_archiver.last_failed_wal`.
    pub last_failed_wal: Option<String>,
}

/// Figures of the archive of `stream`, and of the server if `session` is given.
pub fn status(repo: &Repository, stream: &str, session: Option<&mut Session>) -> Result<Status> {
    let files = archive::list(repo, stream)?;
    let backups: Vec<BackupState> = base_backups(repo)?
        .iter()
        .filter(|(_, _, s)| s.stream == stream && s.complete)
        .map(|(_, _, s)| s.clone())
        .collect();
    let last = base_backups(repo)?
        .into_iter()
        .filter(|(_, _, s)| s.stream == stream && s.complete)
        .max_by_key(|(_, _, s)| s.stop_lsn)
        .map(|(id, _, s)| LastBackup {
            id,
            stop_time: s.stop_time,
            stop_lsn: s.stop_lsn,
        });
    let segment_size = backups
        .last()
        .map(|s| s.segment_size)
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    let last_archived = files
        .iter()
        .filter(|(_, f)| f.is_segment())
        .max_by_key(|(_, f)| (f.segno(segment_size), f.timeline()))
        .map(|(n, f)| (n.clone(), *f));
    let server = match session {
        None => None,
        Some(session) => {
            let row = session.query_row(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                 ELSE pg_current_wal_lsn() END::text, \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 coalesce(last_archived_time::text, ''), \
                 coalesce(extract(epoch FROM now() - last_archived_time)::text, ''), \
                 failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver",
            )?;
            let current_lsn = Lsn::parse(&row[0]).unwrap_or_default();
            let timeline: u32 = row[1].trim().parse().unwrap_or(1);
            let current = current_lsn.segment(segment_size);
            let archived = last_archived
                .as_ref()
                .and_then(|(_, f)| f.segno(segment_size))
                .map_or(0, |s| s + 1);
            let lag_segments = current.saturating_sub(archived);
            let since: f64 = row[3].trim().parse().unwrap_or(0.0);
            Some(ServerStatus {
                current_lsn,
                current_wal: WalFile::segment(timeline, current, segment_size).to_string(),
                lag_segments,
                lag_seconds: if lag_segments == 0 { 0.0 } else { since },
                last_archived_time: Some(row[2].clone()).filter(|t| !t.is_empty()),
                failed_count: row[4].trim().parse().unwrap_or(0),
                last_failed_wal: Some(row[5].clone()).filter(|t| !t.is_empty()),
            })
        }
    };
    Ok(Status {
        stream: stream.to_string(),
        archived_files: files.len(),
        last_archived: last_archived.map(|(n, _)| n),
        base_backups: backups.len(),
        last_backup: last,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<(String, WalFile)> {
        names
            .iter()
            .map(|n| (n.to_string(), WalFile::parse(n).unwrap()))
            .collect()
    }

    fn backup(start: &str, stop_lsn: u64) -> (Id, BackupState) {
        (
            Id([7; 32]),
            BackupState {
                version: 1,
                complete: true,
                system_identifier: "1".to_string(),
                stream: "pg-1".to_string(),
                data_directory: "/d".to_string(),
                server_version: 150000,
                segment_size: DEFAULT_SEGMENT_SIZE,
                timeline: 1,
                start_lsn: Lsn(0),
                start_wal: start.to_string(),
                start_time: jiff::Timestamp::UNIX_EPOCH,
                stop_lsn: Some(Lsn(stop_lsn)),
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

    /// Timeline 2 branched off timeline 1 in segment 4.
    fn after_promotion() -> TimelineHistory {
        TimelineHistory::parse(2, "1\t0/4000100\tno recovery target specified\n").unwrap()
    }

    #[test]
    fn status_figures_render_as_prometheus_text() {
        let at = |s| jiff::Timestamp::from_second(s).unwrap();
        let mut status = Status {
            stream: "pg-1".to_string(),
            archived_files: 12,
            last_archived: Some("00000001000000000000000C".to_string()),
            base_backups: 2,
            last_backup: Some(LastBackup {
                id: Id([1; 32]),
                stop_time: Some(at(1_000)),
                stop_lsn: Some(Lsn(5)),
            }),
            server: None,
        };
        let text = status.prometheus(at(1_090));
        assert!(
            text.contains("lifeboat_pg_archived_files{stream=\"pg-1\"} 12\n"),
            "{text}"
        );
        assert!(text.contains("lifeboat_pg_base_backups{stream=\"pg-1\"} 2\n"));
        assert!(text.contains("lifeboat_pg_last_backup_age_seconds{stream=\"pg-1\"} 90.000\n"));
        assert!(text.contains("# TYPE lifeboat_pg_last_backup_timestamp_seconds gauge\n"));
        assert!(
            !text.contains("archive_lag"),
            "no server figures without a server"
        );
        status.server = Some(ServerStatus {
            current_lsn: Lsn(0),
            current_wal: String::new(),
            lag_segments: 3,
            lag_seconds: 42.5,
            last_archived_time: None,
            failed_count: 7,
            last_failed_wal: None,
        });
        let text = status.prometheus(at(1_090));
        assert!(text.contains("lifeboat_pg_archive_lag_segments{stream=\"pg-1\"} 3\n"));
        assert!(text.contains("lifeboat_pg_archive_lag_seconds{stream=\"pg-1\"} 42.500\n"));
        assert!(text.contains("# TYPE lifeboat_pg_archive_failures_total counter\n"));
    }

    #[test]
    fn segments_and_backups_of_an_abandoned_branch_do_not_count() {
        // Timeline 1 went on writing segments 5 and 6 after timeline 2 branched off in 4;
        // timeline 2's own segment 5 is missing.
        let files = files(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "00000002.history",
            "000000020000000000000004",
            "000000020000000000000006",
        ]);
        let (_, mut late) = backup("000000010000000000000005", 5 * DEFAULT_SEGMENT_SIZE + 9);
        late.start_lsn = Lsn(5 * DEFAULT_SEGMENT_SIZE);
        let early = backup("000000010000000000000002", 3 * DEFAULT_SEGMENT_SIZE + 5);
        let report = chain_report(
            "pg-1",
            &files,
            &[early, (Id([8; 32]), late)],
            &after_promotion(),
        );
        assert_eq!(report.timeline, 2);
        assert_eq!(report.gaps.len(), 1, "{report:?}");
        assert_eq!(report.gaps[0].first_missing, "000000020000000000000005");
        assert_eq!(
            report.gaps[0].replay_stops_after.as_deref(),
            Some("000000020000000000000004")
        );
        assert!(report.backups[0].on_timeline && report.backups[0].restorable);
        assert!(!report.backups[1].on_timeline, "{report:?}");
        assert!(!report.backups[1].restorable, "{report:?}");
        // Followed on its own, timeline 1 is whole.
        let report = chain_report("pg-1", &files, &[], &TimelineHistory::root(1));
        assert!(report.gaps.is_empty(), "{report:?}");
        assert_eq!(report.newest.as_deref(), Some("000000010000000000000006"));
    }

    #[test]
    fn a_complete_chain_has_no_gap() {
        let files = files(&[
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "00000002.history",
            "000000020000000000000004",
            "000000020000000000000005",
        ]);
        let report = chain_report(
            "pg-1",
            &files,
            &[backup(
                "000000010000000000000002",
                3 * DEFAULT_SEGMENT_SIZE + 5,
            )],
            &after_promotion(),
        );
        assert!(report.gaps.is_empty(), "{report:?}");
        assert!(report.ok());
        assert_eq!(report.newest.as_deref(), Some("000000020000000000000005"));
        assert_eq!(
            report.backups[0].replays_to.as_deref(),
            Some("000000020000000000000005")
        );
    }

    #[test]
    fn a_missing_segment_is_named() {
        let files = files(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000006",
            "000000010000000000000007",
        ]);
        let report = chain_report(
            "pg-1",
            &files,
            &[backup(
                "000000010000000000000002",
                2 * DEFAULT_SEGMENT_SIZE + 100,
            )],
            &TimelineHistory::root(1),
        );
        assert_eq!(
            report.gaps,
            vec![Gap {
                first_missing: "000000010000000000000004".to_string(),
                last_missing: "000000010000000000000005".to_string(),
                segments: 2,
                replay_stops_after: Some("000000010000000000000003".to_string()),
            }]
        );
        assert!(!report.ok());
        assert!(report.backups[0].restorable);
        assert_eq!(
            report.backups[0].replays_to.as_deref(),
            Some("000000010000000000000003")
        );
    }

    #[test]
    fn a_backup_whose_start_segment_is_missing_is_not_restorable() {
        let files = files(&["000000010000000000000003"]);
        let report = chain_report(
            "pg-1",
            &files,
            &[backup("000000010000000000000002", 3 * DEFAULT_SEGMENT_SIZE)],
            &TimelineHistory::root(1),
        );
        assert_eq!(report.gaps.len(), 1);
        assert_eq!(report.gaps[0].first_missing, "000000010000000000000002");
        assert!(!report.backups[0].restorable);
    }
}

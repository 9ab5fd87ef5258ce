//! Timelines: which branch of a cluster's WAL history a recovery follows.
//!
//! Each point-in-time recovery or promotion starts a new timeline, and PostgreSQL archives a
//! history file (`TTTTTTTT.history`) naming the timeline's ancestors and where each one was left.
//! The abandoned branch keeps its WAL and its base backups in the archive, and positions on it
//! past the switch point describe a history the new timeline does not share. So a restore must
//! start from a backup that lies on the target timeline's own history, and the WAL chain is
//! whole only if the segments *of that history* are there: this module answers both.

use lifeboat_repo::Repository;

use crate::error::{Error, Result};
use crate::wal::{Lsn, WalFile};

/// One timeline and the history that leads to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline this history ends in.
    pub timeline: u32,
    /// Its ancestors, oldest first: each timeline and the position where its successor on this
    /// history branched off (the ancestor's WAL after that position belongs to another history).
    pub ancestors: Vec<(u32, Lsn)>,
}

impl TimelineHistory {
    /// A timeline without ancestors (timeline 1, or one whose history file is not archived:
    /// PostgreSQL then assumes the same).
    pub fn root(timeline: u32) -> TimelineHistory {
        TimelineHistory {
            timeline,
            ancestors: Vec::new(),
        }
    }

    /// Parses the history file of `timeline`: lines of `parent<TAB>switchpoint<TAB>reason`,
    /// oldest first; blank lines and `#` comments are skipped.
    pub fn parse(timeline: u32, text: &str) -> Result<TimelineHistory> {
        let bad = |line: &str| {
            Error::Unusable(format!(
                "timeline {timeline}'s history file has an unreadable line {line:?}"
            ))
        };
        let mut ancestors: Vec<(u32, Lsn)> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let parent: u32 = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| bad(line))?;
            let switch = fields
                .next()
                .and_then(Lsn::parse)
                .ok_or_else(|| bad(line))?;
            if parent >= timeline || ancestors.last().is_some_and(|(t, _)| *t >= parent) {
                return Err(Error::Unusable(format!(
                    "timeline {timeline}'s history file lists timeline {parent} out of order"
                )));
            }
            ancestors.push((parent, switch));
        }
        Ok(TimelineHistory {
            timeline,
            ancestors,
        })
    }

    /// Whether WAL position `lsn` on `timeline` is part of this history, so that recovery can
    /// start (or become consistent) there and replay on into [`Self::timeline`].
    pub fn contains(&self, timeline: u32, lsn: Lsn) -> bool {
        timeline == self.timeline
            || self
                .ancestors
                .iter()
                .any(|&(t, switch)| t == timeline && lsn <= switch)
    }

    /// Whether `file` (a WAL segment) holds WAL of this history: a segment of the target
    /// timeline from its branch point on, or an ancestor's segment up to the one its successor
    /// branched off in.
    pub fn holds_segment(&self, file: &WalFile, segment_size: u64) -> bool {
        let Some(segno) = file.segno(segment_size) else {
            return false;
        };
        let timeline = file.timeline();
        let mut begin = 0;
        for &(ancestor, switch) in &self.ancestors {
            let end = switch.segment(segment_size);
            if ancestor == timeline {
                return begin <= segno && segno <= end;
            }
            begin = end;
        }
        timeline == self.timeline && segno >= begin
    }
}

/// The history of `timeline` as archived in `stream`.
pub fn load(repo: &Repository, stream: &str, timeline: u32) -> Result<TimelineHistory> {
    if timeline <= 1 {
        return Ok(TimelineHistory::root(timeline.max(1)));
    }
    let name = WalFile::History { timeline }.to_string();
    match repo.get_stream_object(stream, &name) {
        Ok(bytes) => TimelineHistory::parse(timeline, &String::from_utf8_lossy(&bytes)),
        Err(lifeboat_repo::Error::Storage(e)) if e.is_not_found() => {
            Ok(TimelineHistory::root(timeline))
        }
        Err(e) => Err(e.into()),
    }
}

/// The history of the newest timeline of `stream` (see [`newest`]), whose archived `files`
/// and complete base backups' timelines are given.
pub fn newest_history(
    repo: &Repository,
    stream: &str,
    files: &[(String, WalFile)],
    backup_timelines: impl IntoIterator<Item = u32>,
) -> Result<TimelineHistory> {
    let timeline = newest(files.iter().map(|(_, f)| f), backup_timelines);
    load(repo, stream, timeline)
}

/// One cluster's archive as the check and retention read it: its WAL files, its base backups
/// and the history of its newest timeline.
#[derive(Debug, Clone)]
pub struct ClusterArchive {
    /// Archived WAL files (segments, history and backup history files).
    pub files: Vec<(String, WalFile)>,
    /// Its base backups, complete or not.
    pub backups: Vec<(lifeboat_repo::Id, crate::BackupState)>,
    /// The newest timeline's history.
    pub history: TimelineHistory,
}

impl ClusterArchive {
    /// Reads the archive of `stream`.
    pub fn load(repo: &Repository, stream: &str) -> Result<ClusterArchive> {
        let files = crate::archive::list(repo, stream)?;
        let backups: Vec<_> = crate::backup::base_backups(repo)?
            .into_iter()
            .filter(|(_, _, s)| s.stream == stream)
            .map(|(id, _, s)| (id, s))
            .collect();
        let history = newest_history(
            repo,
            stream,
            &files,
            backups
                .iter()
                .filter(|(_, s)| s.complete)
                .map(|(_, s)| s.timeline),
        )?;
        Ok(ClusterArchive {
            files,
            backups,
            history,
        })
    }
}

/// The newest timeline in an archive: the highest one named by a history file, a segment or a
/// base backup. PostgreSQL's `recovery_target_timeline = 'latest'` picks the same one.
pub fn newest<'a>(
    files: impl IntoIterator<Item = &'a WalFile>,
    backup_timelines: impl IntoIterator<Item = u32>,
) -> u32 {
    files
        .into_iter()
        .map(WalFile::timeline)
        .chain(backup_timelines)
        .max()
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 16 << 20;

    fn lsn(text: &str) -> Lsn {
        Lsn::parse(text).unwrap()
    }

    fn segment(name: &str) -> WalFile {
        WalFile::parse(name).unwrap()
    }

    /// Timeline 1 left at 0/3000158 for timeline 2, which was left at 0/5000060 for 3.
    fn three() -> TimelineHistory {
        TimelineHistory::parse(
            3,
            "1\t0/3000158\tno recovery target specified\n\n\
             2\t0/5000060\tbefore 2026-12-03 10:00:00+00\n",
        )
        .unwrap()
    }

    #[test]
    fn a_history_file_lists_the_ancestors_oldest_first() {
        assert_eq!(
            three().ancestors,
            vec![(1, lsn("0/3000158")), (2, lsn("0/5000060"))]
        );
        assert_eq!(
            TimelineHistory::parse(2, "# comment\n").unwrap().ancestors,
            vec![]
        );
        assert!(TimelineHistory::parse(2, "1 garbage reason").is_err());
        assert!(TimelineHistory::parse(2, "2\t0/100\tself").is_err());
        assert!(TimelineHistory::parse(3, "2\t0/100\tx\n1\t0/200\ty").is_err());
    }

    #[test]
    fn positions_past_a_branch_point_belong_to_another_history() {
        let history = three();
        assert!(history.contains(1, lsn("0/2000000")));
        assert!(history.contains(1, lsn("0/3000158")));
        assert!(!history.contains(1, lsn("0/3000159")));
        assert!(history.contains(2, lsn("0/4000000")));
        assert!(!history.contains(2, lsn("0/6000000")));
        assert!(history.contains(3, lsn("0/9000000")));
        // A timeline that is not an ancestor (a sibling branch) is never on it.
        assert!(!history.contains(4, lsn("0/1000000")));
        // Without ancestors only the timeline itself is.
        assert!(TimelineHistory::root(2).contains(2, lsn("0/1")));
        assert!(!TimelineHistory::root(2).contains(1, lsn("0/1")));
    }

    #[test]
    fn segments_of_the_history_are_those_before_each_branch_point() {
        let history = three();
        let holds = |name: &str| history.holds_segment(&segment(name), SEGMENT);
        assert!(holds("000000010000000000000001"));
        // The branch point's segment exists on both timelines and belongs to both.
        assert!(holds("000000010000000000000003"));
        assert!(holds("000000020000000000000003"));
        assert!(!holds("000000010000000000000004"));
        assert!(!holds("000000020000000000000002"));
        assert!(holds("000000020000000000000005"));
        assert!(!holds("000000020000000000000006"));
        assert!(holds("000000030000000000000005"));
        assert!(holds("000000030000000000000042"));
        assert!(!holds("000000030000000000000004"));
        assert!(!holds("000000040000000000000009"));
        assert!(!history.holds_segment(&segment("00000003.history"), SEGMENT));
    }

    #[test]
    fn the_newest_timeline_counts_history_files_segments_and_backups() {
        let files = [
            segment("000000010000000000000001"),
            segment("00000003.history"),
        ];
        assert_eq!(newest(&files, [2]), 3);
        assert_eq!(newest(&files[..1], [2]), 2);
        assert_eq!(newest([], []), 1);
    }
}

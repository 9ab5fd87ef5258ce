//! Retention policies: which snapshots to keep, and for each kept one, which rule kept it.
//!
//! This is a pure function of the snapshot list, the policy and a time zone, so it is tested
//! without a repository. Semantics follow what restic and borg users expect:
//!
//! * `last N`: the N newest snapshots.
//! * `hourly/daily/weekly/monthly/yearly N`: the newest snapshot of each of the last N periods
//!   that have snapshots (`forever`: of every such period). Weeks are ISO weeks; periods are
//!   in the given time zone (the CLI uses the system's).
//! * `within D`: every snapshot taken within D of the newest snapshot of its group (relative to
//!   the newest, not to now, so a repository that stopped receiving backups does not empty).
//! * `within-daily D` (and hourly, weekly, monthly, yearly): the newest snapshot of each period,
//!   for the periods within D of the newest snapshot.
//! * `tag T`: every snapshot with tag T.
//!
//! Rules are evaluated per group (by default host and paths); a snapshot is kept if any rule
//! keeps it.
//!
//! **Timelines.** Some snapshots are the bases of a journal (an SQLite database's segments, a
//! PostgreSQL WAL archive) that makes every moment after them restorable, by replaying from
//! the newest snapshot at or before that moment. For those, `within D` is a promise about
//! every moment of D, so [`apply_with_timelines`] also keeps, for each timeline, the newest
//! snapshot at or before the window's start: without it the first moments of the window could
//! not be restored. Older snapshots of a timeline restore nothing in the window and follow the
//! other rules ("any second of the last 7 days, then daily for 30 days" is `within 7d` plus
//! `daily 30`). One base per timeline is enough: a journal generation alive at the window's
//! start began with a snapshot before it, and later generations begin inside the window.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

use crate::{Id, SnapshotEntry};

/// How many periods a rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// The last N periods.
    Last(u32),
    /// Every period.
    Forever,
}

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("forever") || s.eq_ignore_ascii_case("unlimited") {
            return Ok(Count::Forever);
        }
        s.parse()
            .map(Count::Last)
            .map_err(|_| format!("{s:?} is not a count: use a number or `forever`"))
    }
}

/// A calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    /// Clock hour.
    Hourly,
    /// Calendar day.
    Daily,
    /// ISO week.
    Weekly,
    /// Calendar month.
    Monthly,
    /// Calendar year.
    Yearly,
}

impl Period {
    /// All periods, shortest first.
    pub const ALL: [Period; 5] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    /// The rule's name as used in flags and reasons.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    fn bucket(self, time: &Zoned) -> (i16, i16, i8, i8) {
        match self {
            Period::Hourly => (
                time.year(),
                i16::from(time.month()),
                time.day(),
                time.hour(),
            ),
            Period::Daily => (time.year(), i16::from(time.month()), time.day(), 0),
            Period::Weekly => {
                let week = time.date().iso_week_date();
                (week.year(), i16::from(week.week()), 0, 0)
            }
            Period::Monthly => (time.year(), i16::from(time.month()), 0, 0),
            Period::Yearly => (time.year(), 0, 0, 0),
        }
    }
}

/// Parses a duration such as `7d`, `30d`, `2w`, `12h`, `1y6m` (y years, m months, w weeks,
/// d days, h hours).
pub fn parse_duration(text: &str) -> Result<Span, String> {
    let bad = || format!("{text:?} is not a duration: use forms like 7d, 12h, 4w, 6m, 1y6m");
    let mut span = Span::new();
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().map_err(|_| bad())?;
        number.clear();
        span = match c {
            'y' => span.try_years(n),
            'm' => span.try_months(n),
            'w' => span.try_weeks(n),
            'd' => span.try_days(n),
            'h' => span.try_hours(n),
            _ => return Err(bad()),
        }
        .map_err(|e| format!("{text:?}: {e}"))?;
    }
    if !number.is_empty() || span.is_zero() {
        return Err(bad());
    }
    Ok(span)
}

/// What to keep.
#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    /// Keep the N newest.
    pub last: Option<u32>,
    /// Keep the newest of each of the last N periods, by period.
    pub periods: BTreeMap<Period, Count>,
    /// Keep everything within this span of the newest snapshot.
    pub within: Option<Span>,
    /// Keep the newest of each period within this span of the newest snapshot, by period.
    pub within_periods: BTreeMap<Period, Span>,
    /// Keep snapshots with any of these tags.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// True if the policy keeps nothing (forgetting with it would remove every snapshot).
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.periods.is_empty()
            && self.within.is_none()
            && self.within_periods.is_empty()
            && self.tags.is_empty()
    }
}

/// Which snapshot properties form a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// Group by host name.
    pub host: bool,
    /// Group by backed-up paths.
    pub paths: bool,
    /// Group by tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: Id,
    /// Kept or to be removed.
    pub keep: bool,
    /// The rules that keep it (empty when removed).
    pub reasons: Vec<String>,
    /// The group it was judged in.
    pub group: String,
}

fn group_key(entry: &SnapshotEntry, by: GroupBy) -> String {
    let s = &entry.snapshot;
    let mut parts = Vec::new();
    if by.host {
        parts.push(format!("host {}", s.hostname));
    }
    if by.paths {
        parts.push(format!("paths {}", s.paths.join(",")));
    }
    if by.tags {
        let mut tags = s.tags.clone();
        tags.sort();
        parts.push(format!("tags {}", tags.join(",")));
    }
    parts.join("; ")
}

/// Applies `policy` to `snapshots`; decisions come newest first within each group.
pub fn apply(
    snapshots: &[SnapshotEntry],
    policy: &KeepPolicy,
    by: GroupBy,
    tz: &TimeZone,
) -> Vec<Decision> {
    apply_with_timelines(snapshots, policy, by, tz, &|_| None)
}

/// Like [`apply`], where `timeline` names the journal a snapshot is a base of (`None`: it
/// restores only its own moment). `within D` then also keeps each timeline's newest snapshot
/// at or before the window's start, with the reason `within D (replay base)`.
pub fn apply_with_timelines(
    snapshots: &[SnapshotEntry],
    policy: &KeepPolicy,
    by: GroupBy,
    tz: &TimeZone,
    timeline: &dyn Fn(&SnapshotEntry) -> Option<String>,
) -> Vec<Decision> {
    let mut groups: BTreeMap<String, Vec<&SnapshotEntry>> = BTreeMap::new();
    for entry in snapshots {
        groups.entry(group_key(entry, by)).or_default().push(entry);
    }
    let mut out = Vec::new();
    for (group, mut members) in groups {
        members.sort_by(|a, b| b.snapshot.time.cmp(&a.snapshot.time).then(b.id.cmp(&a.id)));
        let times: Vec<Zoned> = members
            .iter()
            .map(|m| m.snapshot.time.to_zoned(tz.clone()))
            .collect();
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); members.len()];
        let newest = &times[0];

        if let Some(n) = policy.last {
            for r in reasons.iter_mut().take(n as usize) {
                r.push(format!("last {n}"));
            }
        }
        let cutoff = |span: &Span| -> Timestamp {
            newest
                .checked_sub(*span)
                .map_or(Timestamp::MIN, |z| z.timestamp())
        };
        if let Some(span) = &policy.within {
            let limit = cutoff(span);
            for (i, t) in times.iter().enumerate() {
                if t.timestamp() >= limit {
                    reasons[i].push(format!("within {span:#}"));
                }
            }
            // Members are newest first: the first one before the window, per timeline, is
            // where a restore to the window's start replays from.
            let mut bases = std::collections::BTreeSet::new();
            for (i, member) in members.iter().enumerate() {
                if times[i].timestamp() < limit
                    && let Some(line) = timeline(member)
                    && bases.insert(line)
                {
                    reasons[i].push(format!("within {span:#} (replay base)"));
                }
            }
        }
        for (period, count) in &policy.periods {
            let limit = match count {
                Count::Last(n) => *n as usize,
                Count::Forever => usize::MAX,
            };
            let label = match count {
                Count::Last(n) => format!("{} {n}", period.name()),
                Count::Forever => format!("{} forever", period.name()),
            };
            keep_per_period(&times, *period, limit, None, &label, &mut reasons);
        }
        for (period, span) in &policy.within_periods {
            let label = format!("within-{} {span:#}", period.name());
            keep_per_period(
                &times,
                *period,
                usize::MAX,
                Some(cutoff(span)),
                &label,
                &mut reasons,
            );
        }
        if !policy.tags.is_empty() {
            for (i, m) in members.iter().enumerate() {
                for tag in &policy.tags {
                    if m.snapshot.tags.contains(tag) {
                        reasons[i].push(format!("tag {tag}"));
                    }
                }
            }
        }
        for (member, reasons) in members.iter().zip(reasons) {
            out.push(Decision {
                id: member.id,
                keep: !reasons.is_empty(),
                reasons,
                group: group.clone(),
            });
        }
    }
    out
}

/// Marks the newest snapshot of each of the first `limit` periods (newest first), only among
/// snapshots at or after `since`.
fn keep_per_period(
    times: &[Zoned],
    period: Period,
    limit: usize,
    since: Option<Timestamp>,
    label: &str,
    reasons: &mut [Vec<String>],
) {
    let mut last_bucket = None;
    let mut kept = 0usize;
    for (i, t) in times.iter().enumerate() {
        if since.is_some_and(|s| t.timestamp() < s) {
            break;
        }
        let bucket = period.bucket(t);
        if last_bucket == Some(bucket) {
            continue;
        }
        if kept == limit {
            break;
        }
        last_bucket = Some(bucket);
        kept += 1;
        reasons[i].push(label.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Snapshot, SourceKind};

    fn snap(n: u64, time: Timestamp, host: &str, tags: &[&str]) -> SnapshotEntry {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        SnapshotEntry {
            id: Id(id),
            snapshot: Snapshot {
                version: 1,
                time,
                tree: Id::default(),
                paths: vec!["/srv".into()],
                hostname: host.into(),
                username: "u".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                parent: None,
                source: SourceKind::Files,
                program_version: "test".into(),
                summary: None,
                source_state: None,
            },
        }
    }

    /// Two years of nightly backups at 03:00 UTC, from 2025-01-01 to 2026-12-31 (730 days).
    fn two_years() -> Vec<SnapshotEntry> {
        let start: Timestamp = "2025-01-01T03:00:00Z".parse().unwrap();
        (0..730)
            .map(|d| {
                snap(
                    d,
                    start.checked_add(Span::new().hours(24 * d as i64)).unwrap(),
                    "web1",
                    &[],
                )
            })
            .collect()
    }

    fn kept(snapshots: &[SnapshotEntry], policy: &KeepPolicy) -> Vec<String> {
        let mut times: Vec<String> = apply(snapshots, policy, GroupBy::default(), &TimeZone::UTC)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| {
                let s = snapshots.iter().find(|s| s.id == d.id).unwrap();
                s.snapshot.time.strftime("%Y-%m-%d").to_string()
            })
            .collect();
        times.sort();
        times
    }

    fn policy(f: impl FnOnce(&mut KeepPolicy)) -> KeepPolicy {
        let mut p = KeepPolicy::default();
        f(&mut p);
        p
    }

    #[test]
    fn policy_matrix_over_two_years() {
        let all = two_years();
        assert_eq!(
            all.last()
                .unwrap()
                .snapshot
                .time
                .strftime("%Y-%m-%d")
                .to_string(),
            "2026-12-31"
        );

        let last = kept(&all, &policy(|p| p.last = Some(3)));
        assert_eq!(last, ["2026-12-29", "2026-12-30", "2026-12-31"]);

        let daily = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Daily, Count::Last(30));
            }),
        );
        assert_eq!((daily.len(), daily[0].as_str()), (30, "2026-12-02"));

        // ISO weeks: 2026-12-31 is a Thursday in week 53 of 2026; the newest of each earlier
        // week is its Sunday.
        let weekly = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Weekly, Count::Last(4));
            }),
        );
        assert_eq!(
            weekly,
            ["2026-12-13", "2026-12-20", "2026-12-27", "2026-12-31"]
        );

        let monthly = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Monthly, Count::Last(3));
            }),
        );
        assert_eq!(monthly, ["2026-10-31", "2026-11-30", "2026-12-31"]);

        let yearly = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Yearly, Count::Forever);
            }),
        );
        assert_eq!(yearly, ["2025-12-31", "2026-12-31"]);

        // Every ISO week touched by the two years: 2025-W01 (starting 2024-12-30) to 2026-W53.
        let weekly_forever = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Weekly, Count::Forever);
            }),
        );
        assert_eq!(weekly_forever.len(), 52 + 53);

        let hourly = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Hourly, Count::Last(5));
            }),
        );
        assert_eq!(
            hourly.len(),
            5,
            "one snapshot per day: each is its own hour"
        );

        // Within: relative to the newest snapshot, inclusive.
        let within = kept(
            &all,
            &policy(|p| p.within = Some(parse_duration("7d").unwrap())),
        );
        assert_eq!((within.len(), within[0].as_str()), (8, "2026-12-24"));

        let within_weekly = kept(
            &all,
            &policy(|p| {
                p.within_periods
                    .insert(Period::Weekly, parse_duration("4w").unwrap());
            }),
        );
        assert_eq!(
            within_weekly,
            [
                "2026-12-06",
                "2026-12-13",
                "2026-12-20",
                "2026-12-27",
                "2026-12-31"
            ]
        );

        let within_monthly = kept(
            &all,
            &policy(|p| {
                p.within_periods
                    .insert(Period::Monthly, parse_duration("1y").unwrap());
            }),
        );
        assert_eq!(
            within_monthly.len(),
            13,
            "Dec 2025 (on its last day) to Dec 2026"
        );
        assert_eq!(within_monthly[0], "2025-12-31");

        // The seeds' policy: daily for 30 days, weekly forever.
        let seed = kept(
            &all,
            &policy(|p| {
                p.periods.insert(Period::Daily, Count::Last(30));
                p.periods.insert(Period::Weekly, Count::Forever);
            }),
        );
        // 30 dailies, plus one per week outside them: weeks before 2026-12-02, of which the
        // Sunday 2026-11-29 is the newest; the dailies already include 4 of the Sundays/last day.
        assert_eq!(seed.len(), 30 + (weekly_forever.len() - 5));

        // Nothing is lost that any rule keeps: a snapshot kept by one rule alone stays.
        let union = kept(
            &all,
            &policy(|p| {
                p.last = Some(1);
                p.periods.insert(Period::Yearly, Count::Last(1));
            }),
        );
        assert_eq!(union, ["2026-12-31"]);
    }

    #[test]
    fn reasons_name_every_rule_and_groups_are_separate() {
        let t: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let snapshots = vec![
            snap(1, t, "a", &["release"]),
            snap(2, t.checked_sub(Span::new().hours(48)).unwrap(), "a", &[]),
            snap(
                3,
                t.checked_sub(Span::new().hours(24 * 40)).unwrap(),
                "a",
                &["release"],
            ),
            snap(
                4,
                t.checked_sub(Span::new().hours(24 * 400)).unwrap(),
                "b",
                &[],
            ),
        ];
        let p = policy(|p| {
            p.last = Some(1);
            p.periods.insert(Period::Daily, Count::Last(2));
            p.tags = vec!["release".into()];
        });
        let decisions = apply(&snapshots, &p, GroupBy::default(), &TimeZone::UTC);
        let find = |n: u8| decisions.iter().find(|d| d.id.0[7] == n).unwrap();
        assert_eq!(find(1).reasons, ["last 1", "daily 2", "tag release"]);
        assert_eq!(find(2).reasons, ["daily 2"]);
        assert_eq!(find(3).reasons, ["tag release"]);
        // Host b is its own group: its only snapshot is its newest.
        assert_eq!(find(4).reasons, ["last 1", "daily 2"]);
        let nothing = policy(|p| p.tags = vec!["none".into()]);
        assert!(
            apply(&snapshots, &nothing, GroupBy::default(), &TimeZone::UTC)
                .iter()
                .all(|d| !d.keep)
        );
        assert!(KeepPolicy::default().is_empty());
    }

    /// Hourly snapshots of two databases with journals (timelines "a" and "b") and one plain
    /// file snapshot per hour, all in one group, over ten days.
    fn journaled() -> (
        Vec<SnapshotEntry>,
        impl Fn(&SnapshotEntry) -> Option<String>,
    ) {
        let start: Timestamp = "2026-06-01T00:30:00Z".parse().unwrap();
        let mut all = Vec::new();
        for h in 0..240u64 {
            let t = start.checked_add(Span::new().hours(h as i64)).unwrap();
            all.push(snap(3 * h, t, "db", &["a"]));
            // b's snapshots run 10 minutes behind a's.
            let tb = t.checked_add(Span::new().minutes(10)).unwrap();
            all.push(snap(3 * h + 1, tb, "db", &["b"]));
            all.push(snap(3 * h + 2, t, "db", &[]));
        }
        let timeline = |e: &SnapshotEntry| e.snapshot.tags.first().cloned();
        (all, timeline)
    }

    #[test]
    fn a_recovery_window_keeps_each_timelines_replay_base() {
        let (all, timeline) = journaled();
        let p = policy(|p| p.within = Some(parse_duration("7d").unwrap()));
        let decisions =
            apply_with_timelines(&all, &p, GroupBy::default(), &TimeZone::UTC, &timeline);
        let newest = all.iter().map(|e| e.snapshot.time).max().unwrap();
        let limit = newest.checked_sub(Span::new().hours(24 * 7)).unwrap();
        let entry = |d: &Decision| all.iter().find(|e| e.id == d.id).unwrap();
        // Everything in the window stays.
        for d in &decisions {
            if entry(d).snapshot.time >= limit {
                assert!(d.keep, "{d:?}");
            }
        }
        // Before it: exactly the newest snapshot of each timeline, nothing of plain snapshots.
        let before: Vec<&Decision> = decisions
            .iter()
            .filter(|d| d.keep && entry(d).snapshot.time < limit)
            .collect();
        assert_eq!(before.len(), 2, "{before:?}");
        for line in ["a", "b"] {
            let base = all
                .iter()
                .filter(|e| e.snapshot.tags == [line] && e.snapshot.time < limit)
                .max_by_key(|e| e.snapshot.time)
                .unwrap();
            let d = before.iter().find(|d| d.id == base.id).unwrap();
            assert_eq!(d.reasons, ["within 7d (replay base)"]);
        }
        // Without timelines (plain `apply`, what a file backup needs) the bases go: that is
        // the loss the timelines prevent.
        let plain = apply(&all, &p, GroupBy::default(), &TimeZone::UTC);
        assert!(
            plain
                .iter()
                .filter(|d| d.keep)
                .all(|d| entry(d).snapshot.time >= limit)
        );
        // A window reaching before every snapshot has no base to add.
        let long = policy(|p| p.within = Some(parse_duration("30d").unwrap()));
        let decisions =
            apply_with_timelines(&all, &long, GroupBy::default(), &TimeZone::UTC, &timeline);
        assert!(decisions.iter().all(|d| d.keep && d.reasons.len() == 1));
    }

    #[test]
    fn any_second_of_a_week_then_daily_for_a_month() {
        let (all, timeline) = journaled();
        let p = policy(|p| {
            p.within = Some(parse_duration("7d").unwrap());
            p.periods.insert(Period::Daily, Count::Last(30));
        });
        let decisions =
            apply_with_timelines(&all, &p, GroupBy::default(), &TimeZone::UTC, &timeline);
        let kept: Vec<&SnapshotEntry> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| all.iter().find(|e| e.id == d.id).unwrap())
            .collect();
        // The window (from 06-03 23:40, b's snapshot at that minute included), the two
        // replay bases just before it (a at 23:30, b at 22:40 on 06-03), and the daily
        // snapshots of the two days wholly before it (b at 23:40 on 06-01 and 06-02).
        let newest = all.iter().map(|e| e.snapshot.time).max().unwrap();
        let limit = newest.checked_sub(Span::new().hours(24 * 7)).unwrap();
        assert_eq!(limit.to_string(), "2026-06-03T23:40:00Z");
        let in_window = all.iter().filter(|e| e.snapshot.time >= limit).count();
        let mut before: Vec<String> = kept
            .iter()
            .filter(|e| e.snapshot.time < limit)
            .map(|e| format!("{} {}", e.snapshot.time, e.snapshot.tags.join("")))
            .collect();
        before.sort();
        assert_eq!(
            before,
            [
                "2026-06-01T23:40:00Z b",
                "2026-06-02T23:40:00Z b",
                "2026-06-03T22:40:00Z b",
                "2026-06-03T23:30:00Z a",
            ]
        );
        assert_eq!(kept.len(), in_window + 4);
    }

    #[test]
    fn durations_and_counts_parse() {
        assert_eq!(parse_duration("7d").unwrap().get_days(), 7);
        let mixed = parse_duration("1y6m2w3d12h").unwrap();
        assert_eq!(
            (
                mixed.get_years(),
                mixed.get_months(),
                mixed.get_weeks(),
                mixed.get_days(),
                mixed.get_hours()
            ),
            (1, 6, 2, 3, 12)
        );
        for bad in ["", "7", "d", "7x", "0d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!("forever".parse::<Count>().unwrap(), Count::Forever);
        assert_eq!("30".parse::<Count>().unwrap(), Count::Last(30));
        assert!("-1".parse::<Count>().is_err());
    }
}

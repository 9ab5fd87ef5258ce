//! Retention of journal segments: keep what a restore to any moment of a window needs.
//!
//! Restoring a moment needs the newest snapshot captured at or before it and the segments of
//! its generation from that snapshot's position on. So to restore *any second* since
//! `window_start`, the base is the newest snapshot captured at or before `window_start`, and
//! every segment before that base (in its generation, or in an older generation) can go.
//! Snapshots themselves are kept or forgotten by the repository's retention policies
//! (`lifeboat forget`), which also give "daily for 30 days": a snapshot alone restores its own
//! moment. Plan, then apply, so a dry run shows what would be deleted.

use lifeboat_repo::Repository;
use serde::Serialize;

use crate::catalog::DatabaseSnapshot;
use crate::error::Result;
use crate::segment;

/// What segment retention would delete.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SegmentPlan {
    /// The stream.
    pub stream: String,
    /// Generation and position of the base snapshot that everything kept applies to.
    pub keep_from: Option<(String, u64)>,
    /// Segments to delete.
    pub delete: Vec<String>,
    /// Segments kept.
    pub keep: usize,
}

/// Plans which segments of `stream` can go while every moment since `window_start` stays
/// restorable. `snapshots` are the database's snapshots (any order).
pub fn plan_segments(
    repo: &Repository,
    stream: &str,
    snapshots: &[DatabaseSnapshot],
    window_start: jiff::Timestamp,
) -> Result<SegmentPlan> {
    let of_stream = || snapshots.iter().filter(|s| s.state.stream == stream);
    let base = of_stream()
        .filter(|s| s.state.captured <= window_start)
        .max_by(|a, b| {
            (a.state.captured, &a.state.generation, a.state.position).cmp(&(
                b.state.captured,
                &b.state.generation,
                b.state.position,
            ))
        })
        .or_else(|| {
            // Nothing is that old: the oldest snapshot is the base, and segments before it
            // can restore nothing.
            of_stream().min_by(|a, b| {
                (&a.state.generation, a.state.position)
                    .cmp(&(&b.state.generation, b.state.position))
            })
        });
    let mut plan = SegmentPlan {
        stream: stream.to_string(),
        ..Default::default()
    };
    let Some(base) = base else {
        // Without any snapshot, segments cannot be restored, but they may belong to a
        // generation whose snapshot is still being written: keep them.
        plan.keep = repo.list_stream_objects(stream)?.len();
        return Ok(plan);
    };
    let keep_from = (base.state.generation.clone(), base.state.position);
    for name in repo.list_stream_objects(stream)? {
        let Some(parsed) = segment::parse_name(&name) else {
            plan.keep += 1;
            continue;
        };
        if (parsed.generation.as_str(), parsed.position) < (keep_from.0.as_str(), keep_from.1) {
            plan.delete.push(name);
        } else {
            plan.keep += 1;
        }
    }
    plan.keep_from = Some(keep_from);
    Ok(plan)
}

/// Deletes the segments a plan names.
pub fn apply_segments(repo: &Repository, plan: &SegmentPlan) -> Result<usize> {
    for name in &plan.delete {
        repo.delete_stream_object(&plan.stream, name)?;
    }
    Ok(plan.delete.len())
}

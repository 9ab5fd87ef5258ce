//! Prune: frees the space of data that no snapshot uses, in two phases and without locks.
//!
//! Backups from any number of hosts keep running while prune runs. The scheme:
//!
//! 1. **Mark.** Walk every snapshot to find the blobs in use. Packs holding nothing in use are
//!    *doomed*; packs holding mostly unused data are *repacked* (their used blobs copied into new
//!    packs, indexed at once) and doomed too. A *plan* object (`prune/<id>`) records the doomed
//!    packs with their contents, the snapshots the mark saw, the trees in use, and the time.
//!    The index is not changed: every snapshot stays readable through it.
//! 2. **Sweep**, in a later prune run, once the plan is older than its grace period. Snapshots
//!    written since the mark are walked; a doomed pack holding a blob one of them needs and no
//!    other pack holds is kept (*rescued*). A new index without the other doomed packs is
//!    committed, superseding every index object listed; then those packs are deleted, then the
//!    superseded index objects, and the plan is rewritten as swept. It is removed one grace
//!    period later.
//! 3. **Backups protect themselves** ([`save_snapshot_guarded`]): just before writing its
//!    snapshot, a backup reads the plans. A blob of its snapshot that it found in a doomed pack
//!    and that no other pack holds is stored again first. A plan written after that check is
//!    swept no sooner than a grace period later, and the snapshot is written within half of
//!    [`MIN_GRACE`] of the check (it checks again otherwise), so that sweep sees the snapshot.
//!
//! A crash at any point leaves a readable repository: the index names every doomed pack until
//! the sweep has committed the index that drops them, and only then are they deleted. What an
//! interrupted run leaves (packs no index names, superseded index objects, a plan not swept) is
//! found and finished by the next run. `docs/maintenance.md` walks through the argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::id::IdSet;
use crate::index::{Index, IndexFile, PackRecord};
use crate::object::ObjectKind;
use crate::pack::{self, BlobType};
use crate::repository::{DATA_PREFIX, INDEX_PREFIX, IndexedRepository, Repository, pack_key};
use crate::snapshot::Snapshot;
use crate::writer::{BlobWriter, WriterOptions};
use crate::{Error, Id, Result};

/// Where prune plans are stored.
pub const PLANS_PREFIX: &str = "prune/";
/// How long doomed packs stay by default before a sweep may delete them: long enough for any
/// reader (a restore, a check) that loaded the index before the sweep to finish.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The shortest grace period prune accepts. Backups write their snapshot within half of it
/// after checking the plans, which is what makes concurrent backups safe.
pub const MIN_GRACE: Duration = Duration::from_secs(10);
/// How long a swept plan stays (slimmed to the list of packs its sweep deleted). A backup that
/// deduplicated against a pack before a prune doomed it learns from the swept plan that the
/// pack is gone; a backup whose index is older than half this checks storage itself.
pub const SWEPT_PLAN_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
const PLAN_VERSION: u32 = 1;

/// Environment variable that makes prune abort itself at a named step; for crash tests only.
pub const KILL_AT_ENV: &str = "LIFEBOAT_TEST_KILL_AT";

/// Dies on the spot, like `kill -9`, when the crash tests ask for it at `step`.
fn crash_point(step: &str) {
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == step) {
        std::process::abort();
    }
}

/// The record a mark leaves for its sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Plan format version.
    pub version: u32,
    /// When the plan was written; the sweep waits until `created + grace`.
    pub created: jiff::Timestamp,
    /// Grace period in seconds.
    pub grace_secs: u64,
    /// Snapshots the mark walked; the sweep walks the others.
    pub snapshots: Vec<Id>,
    /// Trees in use at the mark. Every blob below them was in use, so it is either in a pack
    /// that is kept or was copied by the repack: walks skip them.
    pub used_trees: Vec<Id>,
    /// Doomed packs. Those the index names stay in it until the sweep, which finds their
    /// contents there; the others (left by interrupted backups) have their headers read.
    pub doomed: Vec<Id>,
    /// When the sweep ran; the plan itself is removed a grace period later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swept: Option<jiff::Timestamp>,
}

impl Plan {
    /// Ids of every pack the plan dooms.
    pub fn doomed_ids(&self) -> IdSet {
        self.doomed.iter().copied().collect()
    }

    /// When a sweep may run (or, once swept, when the plan may go).
    pub fn due_at(&self) -> jiff::Timestamp {
        let wait = match self.swept {
            None => self.grace_secs,
            Some(_) => self.grace_secs.max(SWEPT_PLAN_KEEP.as_secs()),
        };
        let since = self.swept.unwrap_or(self.created);
        since + jiff::SignedDuration::from_secs(wait.min(i64::MAX as u64) as i64)
    }
}

/// Stores a plan and returns its name.
fn save_plan(repo: &Repository, plan: &Plan) -> Result<Id> {
    let plain = serde_json::to_vec(plan).expect("plan serialises");
    repo.save_object(PLANS_PREFIX, ObjectKind::PrunePlan, &plain)
}

/// All prune plans in the repository, oldest first.
///
/// A sweep stores its plan again as swept and then deletes the unswept one. A listing taken
/// between the two names the old plan, which is gone when it is read, and lacks the new one; a
/// reader that went on would not know the plan's packs were deleted. So a plan that vanishes
/// makes the listing stale, and the plans are listed again.
pub fn load_plans(repo: &Repository) -> Result<Vec<(Id, Plan)>> {
    const ATTEMPTS: usize = 20;
    for attempt in 1..=ATTEMPTS {
        let mut plans = Vec::new();
        let mut vanished = None;
        for id in repo.list_ids(PLANS_PREFIX)? {
            match repo.load_object(PLANS_PREFIX, ObjectKind::PrunePlan, &id) {
                Ok(plain) => plans.push((id, decode_plan(&id, &plain)?)),
                Err(Error::Storage(e)) if e.is_not_found() => vanished = Some(id),
                Err(e) => return Err(e),
            }
        }
        match vanished {
            None => {
                plans.sort_by(|a, b| a.1.created.cmp(&b.1.created).then(a.0.cmp(&b.0)));
                return Ok(plans);
            }
            Some(id) if attempt < ATTEMPTS => {
                tracing::debug!(
                    "prune plan {} vanished while read; listing again",
                    id.short()
                );
            }
            Some(id) => {
                return Err(Error::malformed(
                    format!("prune plan {id}"),
                    format!(
                        "prune plans kept vanishing while they were read, {ATTEMPTS} times in a \
                         row; try again"
                    ),
                ));
            }
        }
    }
    unreachable!("the last attempt returns")
}

fn decode_plan(id: &Id, plain: &[u8]) -> Result<Plan> {
    let plan: Plan = serde_json::from_slice(plain)
        .map_err(|e| Error::malformed(format!("prune plan {id}"), e.to_string()))?;
    if plan.version > PLAN_VERSION {
        return Err(Error::UnsupportedVersion {
            what: format!("prune plan {id}"),
            found: plan.version,
            supported: PLAN_VERSION,
        });
    }
    Ok(plan)
}

/// How prune decides.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Unused space tolerated, as a fraction of the space in use: partly used packs are
    /// repacked, most wasteful first, until no more than this is left (0.05 = 5%).
    pub max_unused: f64,
    /// At most this many bytes of packs are repacked in one run.
    pub max_repack_bytes: Option<u64>,
    /// How long doomed packs stay before a sweep may delete them.
    pub grace: Duration,
    /// Report what would be done; write and delete nothing.
    pub dry_run: bool,
    /// Tuning of the pipeline that writes repacked blobs.
    pub writer: WriterOptions,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            max_repack_bytes: None,
            grace: DEFAULT_GRACE,
            dry_run: false,
            writer: WriterOptions::default(),
        }
    }
}

/// What a sweep did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    /// The plan swept.
    pub plan: Id,
    /// When its mark ran.
    pub marked: Option<jiff::Timestamp>,
    /// Doomed packs deleted.
    pub packs_deleted: u64,
    /// Their size.
    pub bytes_freed: u64,
    /// Doomed packs kept because a snapshot written since the mark needs them.
    pub packs_rescued: u64,
    /// Superseded index objects deleted.
    pub index_files_deleted: u64,
}

/// What a mark found and did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MarkReport {
    /// Snapshots walked.
    pub snapshots: u64,
    /// Blobs in use.
    pub blobs_used: u64,
    /// Blobs no snapshot uses.
    pub blobs_unused: u64,
    /// Stored bytes of the blobs in use.
    pub bytes_used: u64,
    /// Stored bytes of blobs no snapshot uses (before this prune).
    pub bytes_unused: u64,
    /// Packs in the index (not counting those an earlier plan already dooms).
    pub packs: u64,
    /// Packs with nothing in use, to be deleted.
    pub packs_unused: u64,
    /// Packs whose used blobs are copied into new packs, then deleted.
    pub packs_repacked: u64,
    /// Packs no index named (left by interrupted backups), to be deleted.
    pub packs_unindexed: u64,
    /// Unindexed packs indexed again because a snapshot needs them.
    pub packs_reindexed: u64,
    /// Blobs copied by the repack.
    pub blobs_repacked: u64,
    /// Bytes the repack wrote.
    pub bytes_repack_written: u64,
    /// Bytes the sweep will free (size of every doomed pack).
    pub bytes_to_free: u64,
    /// Unused bytes left in kept packs afterwards.
    pub bytes_unused_after: u64,
    /// The plan written (none in a dry run or when nothing is doomed).
    pub plan: Option<Id>,
    /// The earliest time its sweep may run.
    pub sweep_after: Option<jiff::Timestamp>,
}

/// What one prune run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Plans swept in this run.
    pub swept: Vec<SweepReport>,
    /// Older plans whose grace period has not ended: (plan, earliest sweep time).
    pub waiting: Vec<(Id, jiff::Timestamp)>,
    /// Swept plans removed.
    pub plans_removed: u64,
    /// The new mark.
    pub mark: MarkReport,
}

/// Runs a prune: sweeps the plans whose grace period is over, then marks.
pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneReport> {
    prune_at(repo, options, jiff::Timestamp::now())
}

/// [`prune`] as if the clock said `now` (tests move time forward this way).
pub fn prune_at(
    repo: &Repository,
    options: &PruneOptions,
    now: jiff::Timestamp,
) -> Result<PruneReport> {
    if options.grace < MIN_GRACE {
        return Err(Error::malformed(
            "prune options",
            format!(
                "the grace period must be at least {} s, so that concurrent backups stay safe",
                MIN_GRACE.as_secs()
            ),
        ));
    }
    let mut report = PruneReport {
        dry_run: options.dry_run,
        ..Default::default()
    };
    for (id, plan) in load_plans(repo)? {
        if plan.due_at() > now {
            if plan.swept.is_none() {
                report.waiting.push((id, plan.due_at()));
            }
            continue;
        }
        if plan.swept.is_some() {
            if !options.dry_run {
                delete_ignoring_missing(repo, &format!("{PLANS_PREFIX}{id}"))?;
            }
            report.plans_removed += 1;
            continue;
        }
        tracing::info!("sweeping prune plan {} of {}", id.short(), plan.created);
        report
            .swept
            .push(sweep(repo, id, plan, options.dry_run, now)?);
    }
    report.mark = mark(repo, options, now, None)?;
    Ok(report)
}

fn delete_ignoring_missing(repo: &Repository, key: &str) -> Result<bool> {
    match repo.storage().delete(key) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Ids of the packs in storage, with their sizes.
fn stored_packs(repo: &Repository) -> Result<HashMap<Id, u64>> {
    Ok(repo
        .storage()
        .list(DATA_PREFIX)?
        .into_iter()
        .filter_map(|o| {
            let id = o.key.rsplit('/').next().and_then(Id::from_hex)?;
            Some((id, o.size))
        })
        .collect())
}

/// Every snapshot, refusing to go on if one cannot be read: prune must not delete data that a
/// snapshot it cannot see might use.
fn all_snapshots(repo: &Repository) -> Result<Vec<(Id, Snapshot)>> {
    let (snapshots, mut unreadable) = repo.readable_snapshots()?;
    if let Some((id, error)) = unreadable.pop() {
        return Err(Error::malformed(
            format!("snapshot {id}"),
            format!(
                "cannot be read ({error}); prune stops rather than delete data it might use \
                 (remove it with `lifeboat forget {id}` if it is damaged beyond repair)"
            ),
        ));
    }
    Ok(snapshots
        .into_iter()
        .map(|entry| (entry.id, entry.snapshot))
        .collect())
}

/// Walks the trees below `root`, skipping those in `visited` (and adding those it walks), and
/// calls `blob` for every tree and data blob reached.
fn walk_blobs(
    repo: &IndexedRepository,
    root: Id,
    visited: &mut IdSet,
    blob: &mut dyn FnMut(Id, BlobType) -> Result<()>,
) -> Result<()> {
    crate::browse::walk_trees(repo, root, visited, &mut |tree_id, tree| {
        let tree = tree?;
        blob(tree_id, BlobType::Tree)?;
        for node in &tree.nodes {
            for id in &node.content {
                blob(*id, BlobType::Data)?;
            }
        }
        Ok(())
    })
}

/// One record per pack, the first met, from the index objects in force.
fn distinct_records(files: &[(Id, IndexFile)]) -> Vec<PackRecord> {
    let mut seen = IdSet::default();
    files
        .iter()
        .flat_map(|(_, file)| &file.packs)
        .filter(|p| seen.insert(p.id))
        .cloned()
        .collect()
}

/// Of `blobs`, those that some pack outside `doomed` holds, by a scan of the index objects
/// (cheaper in memory than a second index, and the candidates are few).
fn with_copies_outside(files: &[(Id, IndexFile)], blobs: &IdSet, doomed: &IdSet) -> IdSet {
    let mut found = IdSet::default();
    if blobs.is_empty() {
        return found;
    }
    for pack in files
        .iter()
        .flat_map(|(_, file)| &file.packs)
        .filter(|p| !doomed.contains(&p.id))
    {
        for entry in &pack.entries {
            if blobs.contains(&entry.id) {
                found.insert(entry.id);
            }
        }
    }
    found
}

/// Headers of packs in storage that no index names, as records; the packs whose header cannot
/// be read are returned apart.
fn read_headers(repo: &Repository, packs: &[Id]) -> (Vec<PackRecord>, Vec<Id>) {
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    for id in packs {
        match repo.read_pack_header(id) {
            Ok((trailer, entries)) => records.push(PackRecord {
                id: *id,
                salt: trailer.salt,
                entries,
            }),
            Err(Error::Storage(e)) if e.is_not_found() => {}
            Err(_) => unreadable.push(*id),
        }
    }
    (records, unreadable)
}

fn sweep(
    repo: &Repository,
    plan_id: Id,
    plan: Plan,
    dry_run: bool,
    now: jiff::Timestamp,
) -> Result<SweepReport> {
    let mut report = SweepReport {
        plan: plan_id,
        marked: Some(plan.created),
        ..Default::default()
    };
    // Snapshots first: a backup writes its index before its snapshot, so every snapshot listed
    // here has its blobs in the index read next.
    let snapshots = all_snapshots(repo)?;
    let crate::repository::IndexFiles {
        listed: listed_index,
        in_force: files,
    } = repo.read_index_files()?;
    let stored = stored_packs(repo)?;
    let doomed = plan.doomed_ids();
    let everything = Index::from_files(&files, &IdSet::default());
    // Doomed packs no index names (leftovers of interrupted backups) may still hold what a new
    // snapshot needs; their headers say.
    let unindexed: Vec<Id> = doomed
        .iter()
        .filter(|id| everything.pack_position(id).is_none() && stored.contains_key(id))
        .copied()
        .collect();
    let (unindexed_records, _) = read_headers(repo, &unindexed);
    let mut view = everything;
    for record in &unindexed_records {
        view.add_pack(record.clone());
    }
    let view = repo.clone().with_index(view);
    let index = view.index().clone();

    // Blobs of snapshots written since the mark that only doomed packs hold.
    let seen: IdSet = plan.snapshots.iter().copied().collect();
    let mut visited: IdSet = plan.used_trees.iter().copied().collect();
    let mut candidates = IdSet::default();
    for (_, snapshot) in snapshots.iter().filter(|(id, _)| !seen.contains(id)) {
        walk_blobs(&view, snapshot.tree, &mut visited, &mut |id, _| {
            match index.get(&id) {
                Some(location) if doomed.contains(&index.pack(location).id) => {
                    candidates.insert(id);
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    let safe = with_copies_outside(&files, &candidates, &doomed);
    let mut rescued = IdSet::default();
    for id in candidates.difference(&safe) {
        let pack = index
            .pack(index.get(id).expect("a candidate has a location"))
            .id;
        if !stored.contains_key(&pack) {
            return Err(Error::malformed(
                format!("prune plan {plan_id}"),
                format!("a snapshot written since the mark needs pack {pack}, which is gone"),
            ));
        }
        rescued.insert(pack);
    }
    let deletable: Vec<Id> = doomed
        .iter()
        .filter(|id| !rescued.contains(id))
        .copied()
        .collect();
    report.packs_rescued = rescued.len() as u64;
    for id in &deletable {
        if let Some(size) = stored.get(id) {
            report.packs_deleted += 1;
            report.bytes_freed += size;
        }
    }
    if dry_run {
        report.index_files_deleted = listed_index.len() as u64;
        return Ok(report);
    }

    // The index without the packs about to go, as one object replacing all listed ones.
    let deleting: IdSet = deletable.iter().copied().collect();
    let mut records = distinct_records(&files);
    drop(files);
    records.retain(|r| !deleting.contains(&r.id));
    records.extend(
        unindexed_records
            .into_iter()
            .filter(|r| rescued.contains(&r.id)),
    );
    let committed = repo.commit_index(&records, &listed_index)?;
    drop(records);
    crash_point("sweep-indexed");
    // A backup may have indexed a doomed pack (one in flight at the mark) after the listing
    // above: its index object is in force and names the pack, so the pack stays.
    let late = indexed_since(repo, &listed_index, committed, &deleting)?;
    let mut deletable = deletable;
    if !late.is_empty() {
        tracing::info!(
            "{} doomed packs were indexed after the sweep began; they stay",
            late.len()
        );
        deletable.retain(|id| !late.contains(id));
        report.packs_rescued += late.len() as u64;
        for id in &late {
            if let Some(size) = stored.get(id) {
                report.packs_deleted -= 1;
                report.bytes_freed -= size;
            }
        }
    }
    for id in &deletable {
        delete_ignoring_missing(repo, &pack_key(id))?;
    }
    crash_point("sweep-packs-deleted");
    for id in &listed_index {
        if delete_ignoring_missing(repo, &format!("{INDEX_PREFIX}{id}"))? {
            report.index_files_deleted += 1;
        }
    }
    crash_point("sweep-index-deleted");
    // What a backup that started before this sweep needs to learn from the plan is which packs
    // are gone; the walk's records (the bulk of a plan) and the packs that stayed are dropped.
    let swept = Plan {
        swept: Some(now.max(jiff::Timestamp::now())),
        snapshots: Vec::new(),
        used_trees: Vec::new(),
        doomed: deletable,
        ..plan
    };
    save_plan(repo, &swept)?;
    delete_ignoring_missing(repo, &format!("{PLANS_PREFIX}{plan_id}"))?;
    Ok(report)
}

/// Of `packs`, those that index objects written since `listed` was listed (other than
/// `committed`) name.
fn indexed_since(
    repo: &Repository,
    listed: &[Id],
    committed: Option<Id>,
    packs: &IdSet,
) -> Result<IdSet> {
    let listed: IdSet = listed.iter().copied().collect();
    let mut named = IdSet::default();
    for id in repo.list_ids(INDEX_PREFIX)? {
        if listed.contains(&id) || Some(id) == committed {
            continue;
        }
        match repo.load_index_file(&id) {
            Ok(file) => named.extend(
                file.packs
                    .iter()
                    .map(|p| p.id)
                    .filter(|p| packs.contains(p)),
            ),
            Err(Error::Storage(e)) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(named)
}

/// Usage of one pack.
#[derive(Default, Clone, Copy)]
struct PackUsage {
    used_blobs: u32,
    used_bytes: u64,
    unused_bytes: u64,
}

/// The mark phase. `plans_seen` stands for the plans found at the start (tests pass an older
/// view to play a mark that overlapped another prune).
fn mark(
    repo: &Repository,
    options: &PruneOptions,
    now: jiff::Timestamp,
    plans_seen: Option<IdSet>,
) -> Result<MarkReport> {
    let mut report = MarkReport::default();
    let plans = load_plans(repo)?;
    let plans_before: IdSet = match plans_seen {
        Some(seen) => seen,
        None => plans.iter().map(|(id, _)| *id).collect(),
    };
    // Snapshots before the index, the index before the packs: each writer stores packs, then
    // index objects, then its snapshot, so what a listed snapshot needs is in what is read next.
    let snapshots = all_snapshots(repo)?;
    report.snapshots = snapshots.len() as u64;
    let files = repo.read_index_files()?.in_force;
    let stored = stored_packs(repo)?;
    // Packs an earlier plan dooms are its sweep's to judge; this mark leaves them alone.
    let mut pending = IdSet::default();
    for (_, plan) in plans.iter().filter(|(_, p)| p.swept.is_none()) {
        pending.extend(plan.doomed_ids());
    }
    let index = Index::from_files_doomed_last(&files, &pending);
    drop(files);

    // Packs no index names: left by interrupted backups, or in flight from running ones (whose
    // index objects will name them; the sweep then leaves them). Their headers say what they
    // hold.
    let unindexed: Vec<Id> = stored
        .keys()
        .filter(|id| index.pack_position(id).is_none() && !pending.contains(id))
        .copied()
        .collect();
    let (unindexed, unreadable) = read_headers(repo, &unindexed);

    // Blobs in use. One the index lacks may be in an unindexed pack, which is then indexed.
    let view = if unindexed.is_empty() {
        repo.clone().with_index(index)
    } else {
        let mut view = index;
        for record in &unindexed {
            view.add_pack(record.clone());
        }
        repo.clone().with_index(view)
    };
    let mut used = IdSet::default();
    let mut used_trees = IdSet::default();
    for (_, snapshot) in &snapshots {
        walk_blobs(&view, snapshot.tree, &mut used_trees, &mut |id, _| {
            used.insert(id);
            Ok(())
        })?;
    }
    let index = view.index().clone();
    let unindexed_ids: IdSet = unindexed.iter().map(|r| r.id).collect();
    let mut reindexed = Vec::new();
    let mut doomed_unindexed = Vec::new();
    for record in unindexed {
        let needed = record.entries.iter().any(|e| {
            used.contains(&e.id)
                && index
                    .get(&e.id)
                    .is_some_and(|l| index.pack(l).id == record.id)
        });
        if needed {
            reindexed.push(record);
        } else {
            doomed_unindexed.push(record.id);
        }
    }
    if let Some(id) = used.iter().find(|id| !index.contains(id)) {
        return Err(Error::malformed(
            "repository",
            format!(
                "blob {id}, which a snapshot uses, is in no pack; prune stops. Run `lifeboat \
                 check` to see which snapshots are affected"
            ),
        ));
    }
    report.packs_reindexed = reindexed.len() as u64;
    report.packs_unindexed = (doomed_unindexed.len() + unreadable.len()) as u64;

    // Usage per pack, among the indexed packs this mark judges.
    let judged = |position: u32| {
        let id = index.packs()[position as usize].id;
        !pending.contains(&id) && !unindexed_ids.contains(&id)
    };
    let mut usage = vec![PackUsage::default(); index.packs().len()];
    for (id, location) in index.blobs() {
        if !judged(location.pack) {
            continue;
        }
        let pack = &mut usage[location.pack as usize];
        if used.contains(id) {
            pack.used_blobs += 1;
            pack.used_bytes += u64::from(location.stored_len);
            report.blobs_used += 1;
            report.bytes_used += u64::from(location.stored_len);
        } else {
            pack.unused_bytes += u64::from(location.stored_len);
            report.blobs_unused += 1;
            report.bytes_unused += u64::from(location.stored_len);
        }
    }
    let mut doomed = IdSet::default();
    let mut partly_used = Vec::new();
    let mut unused_left = 0u64;
    for (position, pack) in index.packs().iter().enumerate() {
        if !judged(position as u32) {
            continue;
        }
        report.packs += 1;
        let u = usage[position];
        if u.used_blobs == 0 {
            doomed.insert(pack.id);
            report.packs_unused += 1;
        } else if u.unused_bytes > 0 {
            partly_used.push(position);
            unused_left += u.unused_bytes;
        }
    }
    // Repack the most wasteful packs first until the unused space left is within the limit.
    partly_used.sort_by(|a, b| {
        let ratio = |p: usize| usage[p].unused_bytes as f64 / usage[p].used_bytes.max(1) as f64;
        ratio(*b).total_cmp(&ratio(*a))
    });
    let allowed = (report.bytes_used as f64 * options.max_unused.max(0.0)) as u64;
    let mut repack = Vec::new();
    let mut repack_bytes = 0u64;
    for position in partly_used {
        if unused_left <= allowed {
            break;
        }
        let u = usage[position];
        let pack_bytes = u.used_bytes + u.unused_bytes;
        if options
            .max_repack_bytes
            .is_some_and(|max| repack_bytes + pack_bytes > max)
        {
            continue;
        }
        repack_bytes += pack_bytes;
        unused_left -= u.unused_bytes;
        repack.push(index.packs()[position]);
        doomed.insert(index.packs()[position].id);
        report.blobs_repacked += u64::from(u.used_blobs);
    }
    report.packs_repacked = repack.len() as u64;
    report.bytes_unused_after = unused_left;
    doomed.extend(doomed_unindexed.iter().copied());
    doomed.extend(unreadable.iter().copied());
    report.bytes_to_free = doomed
        .iter()
        .map(|id| stored.get(id).copied().unwrap_or(0))
        .sum();

    if options.dry_run {
        return Ok(report);
    }
    if !reindexed.is_empty() {
        repo.commit_index(&reindexed, &[])?;
    }
    if doomed.is_empty() {
        return Ok(report);
    }

    // Copy the used blobs of the packs being repacked into new packs, indexed by the writer.
    // Its index is empty: a blob that also has a copy elsewhere is copied once more, which is
    // rare and harmless, and it spares a second index in memory.
    if !repack.is_empty() {
        let writer = BlobWriter::new(&repo.clone().with_index(Index::new()), &options.writer);
        report.blobs_repacked = 0;
        for pack in &repack {
            let key = pack_key(&pack.id);
            let bytes = repo.storage().get(&key)?;
            let (_, entries) = pack::read_header_from_bytes(repo.key(), &bytes, &key)?;
            for entry in entries.iter().filter(|e| used.contains(&e.id)) {
                if writer.is_known(&entry.id) {
                    continue;
                }
                let start = entry.offset as usize;
                let sealed = bytes
                    .get(start..start + entry.stored_len as usize)
                    .ok_or_else(|| Error::corrupt(format!("{key} (truncated)")))?;
                let what = format!("blob {} in pack {key}", entry.id);
                let data = pack::decode_blob(repo.key(), &pack.salt, entry, sealed, &what)?;
                writer.add_with_id(entry.blob_type, entry.id, data)?;
                report.blobs_repacked += 1;
            }
        }
        report.bytes_repack_written = writer.finish()?.bytes_stored;
    }
    crash_point("mark-repacked");

    // Another prune that wrote a plan meanwhile judged the same packs; stop rather than
    // interleave two plans.
    let concurrent = load_plans(repo)?
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| !plans_before.contains(id));
    if let Some(id) = concurrent {
        return Err(Error::malformed(
            "prune",
            format!(
                "another prune wrote plan {} while this one ran; nothing was deleted, run prune \
                 again when it has finished",
                id.short()
            ),
        ));
    }
    let mut doomed: Vec<Id> = doomed.into_iter().collect();
    doomed.sort();
    let plan = Plan {
        version: PLAN_VERSION,
        // The time of writing, not of the start of the run: backups that checked for plans
        // before this one existed count on its sweep waiting a grace period from here.
        created: now.max(jiff::Timestamp::now()),
        grace_secs: options.grace.as_secs(),
        snapshots: snapshots.iter().map(|(id, _)| *id).collect(),
        used_trees: used_trees.into_iter().collect(),
        doomed,
        swept: None,
    };
    let plan_id = save_plan(repo, &plan)?;
    tracing::info!(
        "prune plan {} dooms {} packs; a run after {} may delete them",
        plan_id.short(),
        plan.doomed.len(),
        plan.due_at()
    );
    crash_point("mark-planned");
    report.plan = Some(plan_id);
    report.sweep_after = Some(plan.due_at());
    Ok(report)
}

/// Writes a backup's snapshot so that a concurrent prune cannot take data it uses.
///
/// `repo`'s index must include the packs the backup wrote (see [`IndexedRepository::add_packs`]).
/// Blobs of the snapshot that sit in packs a prune has doomed, and that no other pack holds, are
/// stored again first; if a prune already deleted such a pack, the snapshot is not written and
/// [`Error::PrunedConcurrently`] says to run the backup again.
pub fn save_snapshot_guarded(
    repo: &mut IndexedRepository,
    snapshot: &Snapshot,
    writer_options: &WriterOptions,
) -> Result<Id> {
    const ATTEMPTS: usize = 5;
    let limit = MIN_GRACE / 2;
    if repo.index_age() >= SWEPT_PLAN_KEEP / 2 {
        // A plan swept since the index was read may be gone by now, and with it the record of
        // which packs were deleted: ask storage instead.
        refresh_index_from_storage(repo, snapshot.tree)?;
    }
    for attempt in 1..=ATTEMPTS {
        let checked = Instant::now();
        let changed = protect_tree(repo, snapshot.tree, writer_options)?;
        if (changed || checked.elapsed() >= limit) && attempt < ATTEMPTS {
            // Time has passed since the plans were read: read them again.
            continue;
        }
        let id = repo.save_snapshot(snapshot)?;
        if checked.elapsed() >= limit {
            // Storage is slow enough that a sweep could have overtaken the write: make sure
            // every blob is still there, or take the snapshot back.
            verify_complete(repo, id, snapshot)?;
        }
        return Ok(id);
    }
    unreachable!("the last attempt always writes")
}

/// Replaces `repo`'s index by the index in storage, without packs that are no longer stored,
/// and fails if a blob below `root` is not in it.
fn refresh_index_from_storage(repo: &mut IndexedRepository, root: Id) -> Result<()> {
    let files = repo.read_index_files()?.in_force;
    let stored = stored_packs(repo)?;
    let gone: IdSet = distinct_records(&files)
        .into_iter()
        .map(|record| record.id)
        .filter(|id| !stored.contains_key(id))
        .collect();
    let fresh = Index::from_files(&files, &gone);
    repo.replace_index(fresh);
    let index = repo.index().clone();
    let mut missing = 0usize;
    let walked = walk_blobs(repo, root, &mut IdSet::default(), &mut |id, _| {
        missing += usize::from(!index.contains(&id));
        Ok(())
    });
    match walked {
        Err(Error::MissingBlob(_)) => Err(Error::PrunedConcurrently {
            blobs: missing.max(1),
        }),
        Err(e) => Err(e),
        Ok(()) if missing > 0 => Err(Error::PrunedConcurrently { blobs: missing }),
        Ok(()) => Ok(()),
    }
}

/// Stores again the blobs below `root` that only doomed packs hold. Returns whether it stored
/// anything (the caller then checks again, since time has passed).
fn protect_tree(
    repo: &mut IndexedRepository,
    root: Id,
    writer_options: &WriterOptions,
) -> Result<bool> {
    let plans = load_plans(repo)?;
    let mut doomed = IdSet::default();
    let mut swept = IdSet::default();
    // Trees every relevant plan saw in use: nothing below them can be lost.
    let mut safe_trees: Option<IdSet> = None;
    for (_, plan) in &plans {
        let ids = plan.doomed_ids();
        if !ids.iter().any(|p| repo.index().pack_position(p).is_some()) {
            continue;
        }
        for pack in ids {
            if plan.swept.is_some() {
                swept.insert(pack);
            }
            doomed.insert(pack);
        }
        let trees: IdSet = plan.used_trees.iter().copied().collect();
        safe_trees = Some(match safe_trees {
            None => trees,
            Some(before) => before.intersection(&trees).copied().collect(),
        });
    }
    if doomed.is_empty() {
        return Ok(false);
    }
    let index = repo.index().clone();
    let mut at_risk = Vec::new();
    let mut visited = safe_trees.unwrap_or_default();
    walk_blobs(repo, root, &mut visited, &mut |id, blob_type| {
        if let Some(location) = index.get(&id)
            && doomed.contains(&index.pack(location).id)
        {
            at_risk.push((id, blob_type));
        }
        Ok(())
    })?;
    if at_risk.is_empty() {
        return Ok(false);
    }
    tracing::info!(
        "{} blobs of this snapshot sit in packs a prune has doomed",
        at_risk.len()
    );
    // A blob with a copy outside the doomed packs (a repacked one, or one another backup
    // stored) is safe as it is.
    let files = repo.read_index_files()?.in_force;
    let safe = Index::from_files(&files, &doomed);
    at_risk.retain(|(id, _)| !safe.contains(id));
    let lost = at_risk
        .iter()
        .filter(|(id, _)| swept.contains(&index.pack(index.get(id).expect("found above")).id))
        .count();
    if lost > 0 {
        return Err(Error::PrunedConcurrently { blobs: lost });
    }
    let mut current = safe;
    if !at_risk.is_empty() {
        let writer = BlobWriter::new(
            &(**repo).clone().with_index(current.clone()),
            writer_options,
        );
        for (id, blob_type) in &at_risk {
            if writer.is_known(id) {
                continue;
            }
            let data = repo.read_blob(id)?;
            writer.add_with_id(*blob_type, *id, data)?;
        }
        for record in writer.finish()?.packs {
            current.add_pack(record);
        }
    }
    // From here on the backup sees the doomed packs as gone.
    repo.replace_index(current);
    Ok(!at_risk.is_empty())
}

/// Checks, against a freshly read index, that every blob of a just-written snapshot is stored;
/// removes the snapshot and fails if not.
fn verify_complete(repo: &IndexedRepository, id: Id, snapshot: &Snapshot) -> Result<()> {
    let current = repo.read_index()?;
    let mut missing = 0usize;
    let mut visited = IdSet::default();
    let view = (**repo).clone().with_index(current.clone());
    let walked = walk_blobs(&view, snapshot.tree, &mut visited, &mut |blob, _| {
        if !current.contains(&blob) {
            missing += 1;
        }
        Ok(())
    });
    if walked.is_err() || missing > 0 {
        repo.forget_snapshot(&id)?;
        return Err(Error::PrunedConcurrently {
            blobs: missing.max(1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Node, NodeKind, Tree};
    use crate::{InitOptions, KdfParams, SourceKind};
    use lifeboat_storage::Storage;

    fn new_repo() -> Repository {
        let options = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            pack_size: 64 * 1024,
            ..Default::default()
        };
        Repository::init(Storage::memory().unwrap(), b"pw", &options).unwrap()
    }

    fn options() -> PruneOptions {
        PruneOptions {
            grace: MIN_GRACE,
            writer: WriterOptions {
                compressors: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Incompressible bytes, different for each seed.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A backup of files given as (name, seeds of their chunks), through the guarded save,
    /// with the index loaded from `indexed` (so a test can make it stale).
    fn backup_with(indexed: &mut IndexedRepository, files: &[(&str, &[u64])]) -> Id {
        try_backup_with(indexed, files).unwrap()
    }

    /// [`backup_with`], returning what the guarded save returns.
    fn try_backup_with(indexed: &mut IndexedRepository, files: &[(&str, &[u64])]) -> Result<Id> {
        let writer = BlobWriter::new(indexed, &WriterOptions::default());
        let mut nodes = Vec::new();
        for (name, seeds) in files {
            let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
            for seed in *seeds {
                let (id, _) = writer.add(BlobType::Data, noise(*seed, 20_000)).unwrap();
                node.content.push(id);
            }
            nodes.push(node);
        }
        let (tree, _) = writer
            .add(BlobType::Tree, Tree::new(nodes).to_bytes())
            .unwrap();
        let stats = writer.finish().unwrap();
        indexed.add_packs(stats.packs);
        save_snapshot_guarded(indexed, &test_snapshot(tree), &WriterOptions::default())
    }

    fn test_snapshot(tree: Id) -> Snapshot {
        Snapshot {
            version: 1,
            time: jiff::Timestamp::now(),
            tree,
            paths: vec!["/t".into()],
            hostname: "h".into(),
            username: "u".into(),
            tags: vec![],
            parent: None,
            source: SourceKind::Files,
            program_version: "test".into(),
            summary: None,
            source_state: None,
        }
    }

    /// A repository whose only snapshot is forgotten, and the index of a backup that loaded
    /// it before that: the backup deduplicates against data the next prune dooms.
    fn repo_with_stale_backup() -> (Repository, IndexedRepository) {
        let repo = new_repo();
        let old = backup(&repo, &[("a", &[1, 2, 3, 4, 5, 6])]);
        let stale = repo.clone().load_index().unwrap();
        repo.forget_snapshot(&old).unwrap();
        (repo, stale)
    }

    fn backup(repo: &Repository, files: &[(&str, &[u64])]) -> Id {
        backup_with(&mut repo.clone().load_index().unwrap(), files)
    }

    /// Reads every blob of every snapshot through a freshly loaded index.
    fn assert_all_snapshots_readable(repo: &Repository) {
        let indexed = repo.clone().load_index().unwrap();
        for entry in repo.snapshots().unwrap() {
            let mut visited = IdSet::default();
            walk_blobs(&indexed, entry.snapshot.tree, &mut visited, &mut |id, _| {
                indexed.read_blob(&id).map(|_| ())
            })
            .unwrap_or_else(|e| panic!("snapshot {}: {e}", entry.id));
        }
    }

    fn pack_count(repo: &Repository) -> usize {
        stored_packs(repo).unwrap().len()
    }

    fn later(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)
    }

    #[test]
    fn unused_packs_are_deleted_only_after_the_grace_period() {
        let repo = new_repo();
        let old = backup(&repo, &[("a", &[1, 2, 3, 4, 5, 6, 7, 8])]);
        backup(&repo, &[("b", &[100, 101])]);
        let packs_before = pack_count(&repo);
        repo.forget_snapshot(&old).unwrap();

        let first = prune(&repo, &options()).unwrap();
        assert!(first.swept.is_empty());
        assert!(first.mark.packs_unused >= 2, "{:?}", first.mark);
        assert!(first.mark.plan.is_some());
        // Marked, not deleted: the packs are still there, and still in the index.
        assert_eq!(pack_count(&repo), packs_before);
        assert_all_snapshots_readable(&repo);
        assert_eq!(repo.read_index().unwrap().packs().len(), packs_before);

        // Before the grace period ends, a second run waits.
        let early = prune(&repo, &options()).unwrap();
        assert!(early.swept.is_empty());
        assert_eq!(early.waiting.len(), 1);
        assert_eq!(pack_count(&repo), packs_before);

        let swept = prune_at(&repo, &options(), later(11)).unwrap();
        assert_eq!(swept.swept.len(), 1);
        assert_eq!(swept.swept[0].packs_deleted, first.mark.packs_unused);
        assert_eq!(swept.swept[0].packs_rescued, 0);
        assert_eq!(
            pack_count(&repo) as u64,
            packs_before as u64 - first.mark.packs_unused
        );
        // One index object replaces the others; the plan stays, swept, for one more grace
        // period.
        assert_eq!(repo.list_ids(INDEX_PREFIX).unwrap().len(), 1);
        assert_eq!(
            repo.read_index().unwrap().packs().len() as u64,
            packs_before as u64 - first.mark.packs_unused
        );
        let plans = load_plans(&repo).unwrap();
        assert_eq!(plans.len(), 1);
        assert!(plans[0].1.swept.is_some());
        // Slimmed: what a backup that started before the sweep needs is the list of packs.
        assert!(plans[0].1.used_trees.is_empty() && plans[0].1.snapshots.is_empty());
        let kept = prune_at(&repo, &options(), later(30)).unwrap();
        assert_eq!(kept.plans_removed, 0);
        let keep = SWEPT_PLAN_KEEP.as_secs() as i64;
        let cleaned = prune_at(&repo, &options(), later(keep + 30)).unwrap();
        assert_eq!(cleaned.plans_removed, 1);
        assert!(load_plans(&repo).unwrap().is_empty());
        assert_all_snapshots_readable(&repo);
    }

    #[test]
    fn a_backup_that_reused_a_doomed_blob_stores_it_again() {
        let (repo, mut stale) = repo_with_stale_backup();
        let marked = prune(&repo, &options()).unwrap();
        assert!(marked.mark.packs_unused > 0);
        let reused = backup_with(&mut stale, &[("again", &[1, 2, 3])]);
        prune_at(&repo, &options(), later(11)).unwrap();
        assert!(repo.snapshots().unwrap().iter().any(|s| s.id == reused));
        assert_all_snapshots_readable(&repo);
    }

    /// Regression: the swept plan used to go one grace period after its sweep, and with it
    /// the only record that the packs were deleted; a backup that had deduplicated against
    /// them before the mark then wrote a snapshot whose data was gone.
    #[test]
    fn a_backup_that_outlived_a_sweep_of_what_it_reused_is_refused() {
        let (repo, mut stale) = repo_with_stale_backup();
        let marked = prune(&repo, &options()).unwrap();
        assert!(marked.mark.packs_unused > 0);
        let swept = prune_at(&repo, &options(), later(11)).unwrap();
        assert_eq!(swept.swept[0].packs_deleted, marked.mark.packs_unused);
        // Runs that would once have removed the swept plan.
        prune_at(&repo, &options(), later(40)).unwrap();
        prune_at(&repo, &options(), later(80)).unwrap();

        let before = repo.snapshots().unwrap().len();
        let refused = try_backup_with(&mut stale, &[("again", &[1, 2, 3])]);
        assert!(
            matches!(refused, Err(Error::PrunedConcurrently { .. })),
            "{refused:?}"
        );
        assert_eq!(
            repo.snapshots().unwrap().len(),
            before,
            "no snapshot written"
        );
        assert_all_snapshots_readable(&repo);
    }

    /// A backup whose index is older than swept plans are kept checks storage itself.
    #[test]
    fn an_index_older_than_the_swept_plans_is_checked_against_storage() {
        let (repo, mut stale) = repo_with_stale_backup();
        prune(&repo, &options()).unwrap();
        prune_at(&repo, &options(), later(11)).unwrap();
        let keep = SWEPT_PLAN_KEEP.as_secs() as i64;
        let removed = prune_at(&repo, &options(), later(keep + 60)).unwrap();
        assert_eq!(removed.plans_removed, 1, "no record of the sweep is left");

        // What the stale backup stores, deduplicating against the deleted packs.
        let writer = BlobWriter::new(&stale, &WriterOptions::default());
        let mut node = Node::new(b"again".to_vec(), NodeKind::File);
        node.content
            .push(writer.add(BlobType::Data, noise(1, 20_000)).unwrap().0);
        let (tree, _) = writer
            .add(BlobType::Tree, Tree::new(vec![node]).to_bytes())
            .unwrap();
        stale.add_packs(writer.finish().unwrap().packs);

        let refused = refresh_index_from_storage(&mut stale, tree);
        assert!(
            matches!(refused, Err(Error::PrunedConcurrently { blobs: 1 })),
            "{refused:?}"
        );
        // A backup of new data passes the same check.
        let mut fresh = repo.clone().load_index().unwrap();
        let writer = BlobWriter::new(&fresh, &WriterOptions::default());
        let (tree, _) = writer
            .add(BlobType::Tree, Tree::new(vec![]).to_bytes())
            .unwrap();
        fresh.add_packs(writer.finish().unwrap().packs);
        refresh_index_from_storage(&mut fresh, tree).unwrap();
    }

    /// A pack in flight at the mark and indexed after the sweep listed the index is named by
    /// an index object in force; the sweep must see it there and keep the pack.
    #[test]
    fn packs_indexed_after_the_sweep_listed_the_index_are_found() {
        let repo = new_repo();
        backup(&repo, &[("a", &[1, 2])]);
        let listed = repo.list_ids(INDEX_PREFIX).unwrap();
        let before: IdSet = stored_packs(&repo).unwrap().into_keys().collect();
        backup(&repo, &[("b", &[3, 4])]);
        let new_packs: IdSet = stored_packs(&repo)
            .unwrap()
            .into_keys()
            .filter(|id| !before.contains(id))
            .collect();
        assert!(!new_packs.is_empty());
        let mut candidates = new_packs.clone();
        candidates.extend(before.iter().copied());
        let late = indexed_since(&repo, &listed, None, &candidates).unwrap();
        assert_eq!(late, new_packs);
        // The sweep's own commit does not count.
        let written: Vec<Id> = repo
            .list_ids(INDEX_PREFIX)
            .unwrap()
            .into_iter()
            .filter(|id| !listed.contains(id))
            .collect();
        assert_eq!(written.len(), 1);
        let late = indexed_since(&repo, &listed, Some(written[0]), &candidates).unwrap();
        assert!(late.is_empty());
    }

    #[test]
    fn after_a_mark_backups_store_doomed_blobs_again_instead_of_reusing_them() {
        let repo = new_repo();
        let old = backup(&repo, &[("a", &[1, 2, 3])]);
        repo.forget_snapshot(&old).unwrap();
        prune(&repo, &options()).unwrap();
        let fresh = repo.clone().load_index().unwrap();
        let writer = BlobWriter::new(&fresh, &WriterOptions::default());
        let id = writer.blob_id(&noise(2, 20_000));
        // Still readable until the sweep, but no longer deduplicated against.
        assert!(fresh.index().contains(&id));
        assert!(fresh.read_blob(&id).is_ok());
        assert!(!writer.is_known(&id));
        assert!(writer.add(BlobType::Data, noise(2, 20_000)).unwrap().1);
        writer.finish().unwrap();
    }

    #[test]
    fn the_sweep_rescues_packs_a_snapshot_written_after_the_mark_needs() {
        let repo = new_repo();
        let old = backup(&repo, &[("a", &[1, 2, 3, 4, 5, 6])]);
        repo.forget_snapshot(&old).unwrap();
        let mut stale = repo.clone().load_index().unwrap();
        prune(&repo, &options()).unwrap();
        // A backup that deduplicated against the doomed packs and wrote its snapshot without
        // the guard (as a backup whose check came just before the plan was written would).
        let writer = BlobWriter::new(&stale, &WriterOptions::default());
        let mut node = Node::new(b"f".to_vec(), NodeKind::File);
        node.content
            .push(writer.add(BlobType::Data, noise(2, 20_000)).unwrap().0);
        let (tree, _) = writer
            .add(BlobType::Tree, Tree::new(vec![node]).to_bytes())
            .unwrap();
        stale.add_packs(writer.finish().unwrap().packs);
        stale.save_snapshot(&test_snapshot(tree)).unwrap();

        let report = prune_at(&repo, &options(), later(11)).unwrap();
        assert_eq!(report.swept[0].packs_rescued, 1);
        assert_all_snapshots_readable(&repo);
    }

    #[test]
    fn partly_used_packs_are_repacked_beyond_max_unused() {
        let repo = new_repo();
        // Three chunks per pack; forgetting one file leaves packs a third or two thirds used.
        let keep: Vec<u64> = (0..9).collect();
        let drop: Vec<u64> = (100..109).collect();
        let mut interleaved = Vec::new();
        for (k, d) in keep.iter().zip(&drop) {
            interleaved.push(*k);
            interleaved.push(*d);
        }
        let both = backup(&repo, &[("mixed", &interleaved)]);
        backup(&repo, &[("kept", &keep)]);
        repo.forget_snapshot(&both).unwrap();

        let dry = prune(
            &repo,
            &PruneOptions {
                dry_run: true,
                ..options()
            },
        )
        .unwrap();
        assert!(dry.mark.packs_repacked > 0, "{:?}", dry.mark);
        assert!(dry.mark.plan.is_none());
        assert!(load_plans(&repo).unwrap().is_empty());

        let report = prune(&repo, &options()).unwrap();
        assert_eq!(report.mark.packs_repacked, dry.mark.packs_repacked);
        assert!(report.mark.blobs_repacked > 0);
        assert!(report.mark.bytes_unused_after <= report.mark.bytes_used / 20);
        prune_at(&repo, &options(), later(11)).unwrap();
        assert_all_snapshots_readable(&repo);
        // Nothing unused is left to find.
        let again = prune_at(&repo, &options(), later(12)).unwrap();
        assert_eq!(again.mark.blobs_unused, 0, "{:?}", again.mark);
    }

    #[test]
    fn unindexed_packs_are_doomed_unless_a_snapshot_needs_them() {
        let repo = new_repo();
        backup(&repo, &[("a", &[1, 2, 3])]);
        // Lose the index: every pack is now unindexed, but the snapshot needs them.
        for id in repo.list_ids(INDEX_PREFIX).unwrap() {
            repo.storage()
                .delete(&format!("{INDEX_PREFIX}{id}"))
                .unwrap();
        }
        let report = prune(&repo, &options()).unwrap();
        assert!(report.mark.packs_reindexed > 0);
        assert_eq!(report.mark.packs_unindexed, 0);
        assert_all_snapshots_readable(&repo);
    }

    #[test]
    fn a_mark_that_overlapped_another_prune_commits_nothing() {
        let repo = new_repo();
        let old = backup(&repo, &[("a", &[1, 2, 3])]);
        let other = backup(&repo, &[("b", &[4, 5, 6])]);
        repo.forget_snapshot(&old).unwrap();
        prune(&repo, &options()).unwrap();
        repo.forget_snapshot(&other).unwrap();
        let index_before = repo.list_ids(INDEX_PREFIX).unwrap();
        // A mark that started before that plan was written must refuse at its commit point.
        let overlapping = mark(
            &repo,
            &options(),
            jiff::Timestamp::now(),
            Some(IdSet::default()),
        );
        let message = overlapping.unwrap_err().to_string();
        assert!(message.contains("another prune"), "{message}");
        assert_eq!(repo.list_ids(INDEX_PREFIX).unwrap(), index_before);
        assert_eq!(load_plans(&repo).unwrap().len(), 1);
    }
}

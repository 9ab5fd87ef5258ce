//! Integrity checks: is every snapshot restorable, and are the stored bytes intact?
//!
//! Three levels, each including the one before:
//!
//! 1. **Structure** (always): every index object decrypts; every pack the index names exists and
//!    its header (read from the pack's tail) lists exactly the blobs the index says, at the same
//!    places; every snapshot decrypts, its trees decrypt and parse, and every blob they name is
//!    in the index. Packs no index names (left by interrupted backups) are reported, not errors.
//! 2. **Read data, subset** (`ReadData::Subset`): additionally downloads the chosen packs whole,
//!    checks each against its name and decrypts and verifies every blob in it. The subset is
//!    chosen so that repeated runs cover everything: least recently verified packs first.
//! 3. **Read data, all** (`ReadData::All`).
//!
//! Check only reads. The record of when each pack was last verified is kept by the caller (the
//! CLI keeps it in the user's cache directory), so a read-only credential is enough to check.

use std::collections::{BTreeMap, HashMap};

use crate::id::{IdMap, IdSet};
use crate::pack::{self, BlobType};
use crate::repository::{DATA_PREFIX, IndexedRepository, pack_key};
use crate::{Id, NodeKind, Result};

/// How much pack data to read and verify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// A fraction (0–1] of all packs, least recently verified first.
    Fraction(f64),
    /// Part `n` of `m` (1-based): packs whose id's first byte is `n-1` modulo `m`.
    Part {
        /// Which part, from 1.
        n: u32,
        /// Of how many.
        m: u32,
    },
    /// Every pack.
    All,
}

/// Live counters of a check, readable from another thread (for progress displays).
#[derive(Debug, Default)]
pub struct CheckProgress {
    /// Snapshots whose trees have been walked.
    pub snapshots_done: std::sync::atomic::AtomicU64,
    /// Packs chosen for reading.
    pub packs_total: std::sync::atomic::AtomicU64,
    /// Packs read and verified so far.
    pub packs_done: std::sync::atomic::AtomicU64,
    /// Bytes of pack data read so far.
    pub bytes_read: std::sync::atomic::AtomicU64,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object (e.g. `data/ab/ab12…`, `snapshot 1f2e…`, `tree 77aa…`).
    pub object: String,
    /// What is wrong with it.
    pub message: String,
}

/// What a check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Trees read.
    pub trees: u64,
    /// Packs the index names.
    pub packs: u64,
    /// Packs whose data was read and verified.
    pub packs_read: u64,
    /// Bytes of pack data read.
    pub bytes_read: u64,
    /// Blobs decrypted and verified.
    pub blobs_verified: u64,
    /// Packs found in storage that no index names (interrupted backups; prune removes them).
    pub unindexed_packs: Vec<Id>,
    /// Packs a prune has marked, waiting for its sweep to delete them.
    pub packs_awaiting_deletion: u64,
    /// Errors: anything that can make a restore fail.
    pub errors: Vec<Problem>,
    /// Packs verified in this run (for the caller's record).
    #[serde(skip)]
    pub verified: Vec<Id>,
}

impl CheckReport {
    fn error(&mut self, object: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            object: object.into(),
            message: message.into(),
        });
    }

    /// True if nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Chooses which packs to read. `last_verified` maps pack ids to a sortable time of their last
/// verification (absent: never), so fractions rotate through the repository.
pub fn select_packs(all: &[Id], read: ReadData, last_verified: &HashMap<Id, i64>) -> Vec<Id> {
    match read {
        ReadData::None => Vec::new(),
        ReadData::All => all.to_vec(),
        ReadData::Part { n, m } => all
            .iter()
            .filter(|id| u32::from(id.0[0]) % m.max(1) == (n.max(1) - 1) % m.max(1))
            .copied()
            .collect(),
        ReadData::Fraction(f) => {
            let count = ((all.len() as f64) * f.clamp(0.0, 1.0)).ceil() as usize;
            let mut order: Vec<Id> = all.to_vec();
            // Never-verified first, then oldest verification; ties broken by id for stability.
            order.sort_by_key(|id| (last_verified.get(id).copied().unwrap_or(i64::MIN), *id));
            order.truncate(count);
            order
        }
    }
}

/// Runs a check. `last_verified` steers subset selection (see [`select_packs`]).
pub fn check(
    repo: &IndexedRepository,
    read: ReadData,
    last_verified: &HashMap<Id, i64>,
    progress: &CheckProgress,
) -> Result<CheckReport> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut report = CheckReport::default();
    let index = repo.index();

    // Packs in storage against packs in the index.
    let stored: IdMap<u64> = repo
        .storage()
        .list(DATA_PREFIX)?
        .into_iter()
        .filter_map(|o| {
            o.key
                .rsplit('/')
                .next()
                .and_then(Id::from_hex)
                .map(|id| (id, o.size))
        })
        .collect();
    let mut indexed: BTreeMap<u32, Vec<(Id, crate::index::BlobLocation)>> = BTreeMap::new();
    for (id, location) in index.blobs() {
        indexed
            .entry(location.pack)
            .or_default()
            .push((*id, *location));
    }
    let packs: Vec<Id> = index.packs().iter().map(|p| p.id).collect();
    report.packs = packs.len() as u64;
    let known: IdSet = packs.iter().copied().collect();
    let mut doomed = IdSet::default();
    for (_, plan) in crate::prune::load_plans(repo)? {
        if plan.swept.is_none() {
            doomed.extend(plan.doomed_ids());
        }
    }
    for id in stored.keys() {
        if doomed.contains(id) {
            report.packs_awaiting_deletion += 1;
        } else if !known.contains(id) {
            report.unindexed_packs.push(*id);
        }
    }
    report.unindexed_packs.sort();

    for (position, info) in index.packs().iter().enumerate() {
        let key = pack_key(&info.id);
        if !stored.contains_key(&info.id) {
            report.error(&key, "pack is missing from storage");
            continue;
        }
        match repo.read_pack_header(&info.id) {
            Err(e) => report.error(&key, format!("header cannot be read: {e}")),
            Ok((_, entries)) => {
                let header: IdMap<pack::PackEntry> =
                    entries.into_iter().map(|e| (e.id, e)).collect();
                for (id, location) in indexed.get(&(position as u32)).into_iter().flatten() {
                    match header.get(id) {
                        None => report.error(
                            &key,
                            format!("index lists blob {id}, the pack header does not"),
                        ),
                        Some(e) if *e != index.entry(*id, location) => report.error(
                            &key,
                            format!("blob {id} is at another place than the index says"),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }

    // Snapshots and the trees below them.
    let mut seen_trees = IdSet::default();
    for snapshot_id in repo.list_ids(crate::repository::SNAPSHOTS_PREFIX)? {
        let snapshot = match repo.load_snapshot(&snapshot_id) {
            Ok(s) => s,
            Err(e) => {
                report.error(format!("snapshot {snapshot_id}"), e.to_string());
                continue;
            }
        };
        report.snapshots += 1;
        progress.snapshots_done.fetch_add(1, Relaxed);
        // The visitor reports damage and goes on, so the walk itself cannot fail.
        crate::browse::walk_trees(
            repo,
            snapshot.tree,
            &mut seen_trees,
            &mut |tree_id, tree| {
                let tree = match tree {
                    Ok(tree) => tree,
                    Err(e) => {
                        report.error(
                            format!("tree {tree_id} (snapshot {})", snapshot_id.short()),
                            e.to_string(),
                        );
                        return Ok(());
                    }
                };
                report.trees += 1;
                for node in &tree.nodes {
                    match node.kind {
                        NodeKind::Dir if node.subtree.is_none() => report.error(
                            format!("tree {tree_id}"),
                            format!("directory {} has no tree", node.name),
                        ),
                        NodeKind::File => {
                            for blob in &node.content {
                                match index.get(blob) {
                                    Some(l) if l.blob_type == BlobType::Data => {}
                                    Some(_) => report.error(
                                        format!("tree {tree_id}"),
                                        format!(
                                            "file {} names tree blob {blob} as data",
                                            node.name
                                        ),
                                    ),
                                    None => report.error(
                                        format!("tree {tree_id}"),
                                        format!(
                                            "file {} needs blob {blob}, which is not in the index",
                                            node.name
                                        ),
                                    ),
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            },
        )?;
    }

    // Pack data.
    let present: Vec<Id> = packs
        .iter()
        .filter(|id| stored.contains_key(id))
        .copied()
        .collect();
    // Packs are verified in parallel, one thread per core: decryption, decompression and
    // hashing are CPU-bound, and on object storage the downloads overlap.
    let chosen = select_packs(&present, read, last_verified);
    progress.packs_total.store(chosen.len() as u64, Relaxed);
    let queue = parking_lot::Mutex::new(chosen);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let partial: Vec<CheckReport> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut part = CheckReport::default();
                    loop {
                        // A separate statement, so the lock is released before the work.
                        let Some(pack_id) = queue.lock().pop() else {
                            break;
                        };
                        let before = part.bytes_read;
                        verify_pack(repo, &pack_id, &mut part);
                        progress.packs_done.fetch_add(1, Relaxed);
                        progress
                            .bytes_read
                            .fetch_add(part.bytes_read - before, Relaxed);
                    }
                    part
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("check worker panicked"))
            .collect()
    });
    for part in partial {
        report.packs_read += part.packs_read;
        report.bytes_read += part.bytes_read;
        report.blobs_verified += part.blobs_verified;
        report.errors.extend(part.errors);
        report.verified.extend(part.verified);
    }
    Ok(report)
}

/// Downloads one pack, checks it against its name, and decrypts and verifies every blob.
fn verify_pack(repo: &IndexedRepository, pack_id: &Id, report: &mut CheckReport) {
    let key = pack_key(pack_id);
    let bytes = match repo.storage().get(&key) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.error(&key, e.to_string());
            return;
        }
    };
    report.packs_read += 1;
    report.bytes_read += bytes.len() as u64;
    if Id::of_stored_bytes(&bytes) != *pack_id {
        report.error(
            &key,
            "content does not match its name (corrupt or truncated)",
        );
        return;
    }
    let (trailer, entries) = match pack::read_header_from_bytes(repo.key(), &bytes, &key) {
        Ok(h) => h,
        Err(e) => {
            report.error(&key, e.to_string());
            return;
        }
    };
    let mut ok = true;
    for entry in &entries {
        let range = entry.offset as usize..(entry.offset + entry.stored_len) as usize;
        let what = format!("blob {} in pack {key}", entry.id);
        match pack::decode_blob(repo.key(), &trailer.salt, entry, &bytes[range], &what) {
            Ok(_) => report.blobs_verified += 1,
            Err(e) => {
                ok = false;
                report.error(&key, e.to_string());
            }
        }
    }
    if ok {
        report.verified.push(*pack_id);
    }
}

//! Copying snapshots to a second repository (another disk, region or provider).
//!
//! Both repositories must share their content keys (blob-id key and chunker seed, see
//! `docs/format.md` §2): the destination is created with
//! [`InitOptions::content_keys`](crate::InitOptions::content_keys) taken from the source
//! (`lifeboat init --copy-content-keys-from`). Blob ids then agree, so a copy
//!
//! * transfers only the blobs the destination lacks: each is read from the source, authenticated
//!   and checked against its id, and added through a [`BlobWriter`], which encrypts it under the
//!   destination's own keys and packs and indexes it as a backup would;
//! * writes each snapshot last, with the same content (tree, time, host, paths, tags, summary)
//!   as a new object of the destination;
//! * is **idempotent**: a snapshot whose tree, time, host and paths match one already in the
//!   destination is skipped;
//! * is **resumable**: packs of an interrupted copy that reached an index object are reused by
//!   the next run, like those of an interrupted backup. Each snapshot is finished (packs, index,
//!   snapshot) before the next one starts, so an interruption loses at most one snapshot's work
//!   in progress.
//!
//! The walk always reads every tree of a copied snapshot from the source, even where the
//! destination already has the tree: an interrupted copy can leave a tree indexed before the
//! data below it, so the presence of a tree does not prove its subtree is complete.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use crossbeam_channel::bounded;

use crate::id::IdSet;
use crate::index::BlobLocation;
use crate::pack::{self, BlobType};
use crate::repository::{IndexedRepository, Repository, pack_key};
use crate::snapshot::{Snapshot, SnapshotEntry};
use crate::writer::{BlobWriter, WriterOptions};
use crate::{Error, Id, Result};

/// Tuning of [`copy_snapshots`]. Blobs are read in runs of nearby blobs of one pack (one range
/// request each, at most 8 MiB), so a copy from object storage costs about a request per pack.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// The destination's write pipeline.
    pub writer: WriterOptions,
    /// Threads reading blobs from the source (each read is one range request on object storage).
    pub readers: usize,
    /// Live counters for a progress display.
    pub progress: Option<std::sync::Arc<CopyProgress>>,
}

/// Live counters of a copy, readable from another thread.
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Snapshots to consider.
    pub snapshots_total: std::sync::atomic::AtomicU64,
    /// Snapshots copied or skipped so far.
    pub snapshots_done: std::sync::atomic::AtomicU64,
    /// Plaintext bytes of blobs transferred so far.
    pub bytes_copied: std::sync::atomic::AtomicU64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            writer: WriterOptions::default(),
            readers: 4,
            progress: None,
        }
    }
}

/// What one copied snapshot became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedSnapshot {
    /// Id in the source.
    pub source: Id,
    /// Id of the new snapshot object in the destination.
    pub destination: Id,
}

/// What [`copy_snapshots`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Snapshots written to the destination, in order.
    pub copied: Vec<CopiedSnapshot>,
    /// Source snapshots the destination already had (or that repeat another one copied).
    pub skipped: Vec<Id>,
    /// Blobs transferred.
    pub blobs_copied: u64,
    /// Their plaintext bytes.
    pub bytes_copied: u64,
    /// Blobs of the copied snapshots that the destination had already.
    pub blobs_present: u64,
    /// Packs written to the destination.
    pub packs_written: u64,
}

/// What makes two snapshots "the same" for copying: same tree, time, host and paths.
type SnapshotKey = (Id, jiff::Timestamp, String, Vec<String>);

fn snapshot_key(s: &Snapshot) -> SnapshotKey {
    (s.tree, s.time, s.hostname.clone(), s.paths.clone())
}

/// Checks that two repositories share content keys, so that blob ids agree between them.
pub fn check_content_keys(source: &Repository, destination: &Repository) -> Result<()> {
    if source.config().content_keys == destination.config().content_keys {
        Ok(())
    } else {
        Err(Error::ContentKeysDiffer {
            from: source.storage().location().to_string(),
            to: destination.storage().location().to_string(),
        })
    }
}

/// Copies `snapshots` of `source` into `destination`, skipping those it has already; updates
/// the destination's in-memory index with the packs written.
pub fn copy_snapshots(
    source: &IndexedRepository,
    destination: &mut IndexedRepository,
    snapshots: &[SnapshotEntry],
    options: &CopyOptions,
) -> Result<CopyStats> {
    check_content_keys(source, destination)?;
    let mut present: HashSet<SnapshotKey> = destination
        .snapshots()?
        .iter()
        .map(|e| snapshot_key(&e.snapshot))
        .collect();
    let mut stats = CopyStats::default();
    let progress = options.progress.clone().unwrap_or_default();
    progress
        .snapshots_total
        .store(snapshots.len() as u64, Ordering::Relaxed);
    for entry in snapshots {
        if !present.insert(snapshot_key(&entry.snapshot)) {
            stats.skipped.push(entry.id);
            progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let missing = missing_blobs(source, destination, &entry.snapshot.tree, &mut stats)?;
        let writer = BlobWriter::new(destination, &options.writer);
        let transfer = transfer(source, &writer, &missing, options.readers.max(1), &progress);
        let (blobs, bytes) = match transfer {
            Ok(counts) => counts,
            Err(e) => {
                // Stop the pipeline; blobs already indexed stay for the next run.
                drop(writer);
                return Err(e);
            }
        };
        let written = writer.finish()?;
        stats.blobs_copied += blobs;
        stats.bytes_copied += bytes;
        stats.packs_written += written.packs_written;
        destination.add_packs(written.packs);
        let id =
            crate::prune::save_snapshot_guarded(destination, &entry.snapshot, &options.writer)?;
        stats.copied.push(CopiedSnapshot {
            source: entry.id,
            destination: id,
        });
        progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Walks the snapshot's trees in the source and lists the blobs the destination lacks, data
/// before the trees that refer to them.
fn missing_blobs(
    source: &IndexedRepository,
    destination: &IndexedRepository,
    root: &Id,
    stats: &mut CopyStats,
) -> Result<Vec<(BlobType, Id)>> {
    let mut missing = Vec::new();
    let mut seen = IdSet::default();
    let dst_index = destination.index();
    let mut note = |blob_type: BlobType, id: Id, missing: &mut Vec<(BlobType, Id)>| {
        if !seen.insert(id) {
            return;
        }
        if dst_index.contains(&id) {
            stats.blobs_present += 1;
        } else {
            missing.push((blob_type, id));
        }
    };
    // Depth-first, iterative: (tree, children done?).
    let mut stack = vec![(*root, false)];
    let mut walked = IdSet::default();
    while let Some((tree_id, children_done)) = stack.pop() {
        if children_done {
            note(BlobType::Tree, tree_id, &mut missing);
            continue;
        }
        if !walked.insert(tree_id) {
            continue;
        }
        let tree = source.read_tree(&tree_id)?;
        stack.push((tree_id, true));
        for node in &tree.nodes {
            for id in &node.content {
                note(BlobType::Data, *id, &mut missing);
            }
            if let Some(subtree) = node.subtree {
                stack.push((subtree, false));
            }
        }
    }
    Ok(missing)
}

/// Blobs of one pack read with one range request.
struct Run {
    pack: u32,
    start: u64,
    end: u64,
    blobs: Vec<(Id, BlobLocation)>,
}

/// Gap between two wanted blobs of a pack up to which one request reads both (and the bytes
/// between): a request costs about as much as 256 KiB of transfer on object storage.
const RUN_GAP: u64 = 256 * 1024;
/// Longest single range read.
const RUN_MAX: u64 = 8 * 1024 * 1024;

/// Groups blobs into runs of nearby blobs of the same pack, so that a copy costs about one
/// request per pack rather than one per blob.
fn plan_runs(source: &IndexedRepository, blobs: &[(BlobType, Id)]) -> Result<Vec<Run>> {
    let index = source.index();
    let mut located = blobs
        .iter()
        .map(|(_, id)| {
            index
                .get(id)
                .map(|loc| (*id, *loc))
                .ok_or(Error::MissingBlob(*id))
        })
        .collect::<Result<Vec<_>>>()?;
    located.sort_by_key(|(_, loc)| (loc.pack, loc.offset));
    let mut runs: Vec<Run> = Vec::new();
    for (id, loc) in located {
        let start = u64::from(loc.offset);
        let end = start + u64::from(loc.stored_len);
        match runs.last_mut() {
            Some(run)
                if run.pack == loc.pack
                    && start <= run.end + RUN_GAP
                    && end - run.start <= RUN_MAX =>
            {
                run.end = run.end.max(end);
                run.blobs.push((id, loc));
            }
            _ => runs.push(Run {
                pack: loc.pack,
                start,
                end,
                blobs: vec![(id, loc)],
            }),
        }
    }
    Ok(runs)
}

/// Reads one run and decodes (authenticates, decompresses, checks the id of) each blob in it.
fn read_run(source: &IndexedRepository, run: &Run) -> Result<Vec<(BlobType, Id, Vec<u8>)>> {
    let index = source.index();
    let pack = &index.packs()[run.pack as usize];
    let key = pack_key(&pack.id);
    let bytes = source.storage().get_range(&key, run.start..run.end)?;
    if (bytes.len() as u64) < run.end - run.start {
        return Err(Error::Corrupt {
            what: format!("pack {key} (truncated)"),
        });
    }
    run.blobs
        .iter()
        .map(|(id, loc)| {
            let from = (u64::from(loc.offset) - run.start) as usize;
            let sealed = &bytes[from..from + loc.stored_len as usize];
            let what = format!("blob {id} in pack {key}");
            let data = pack::decode_blob(
                source.key(),
                &pack.salt,
                &index.entry(*id, loc),
                sealed,
                &what,
            )?;
            Ok((loc.blob_type, *id, data))
        })
        .collect()
}

/// Reads blobs from the source with several threads and adds them to the writer.
fn transfer(
    source: &IndexedRepository,
    writer: &BlobWriter,
    blobs: &[(BlobType, Id)],
    readers: usize,
    progress: &CopyProgress,
) -> Result<(u64, u64)> {
    let runs = plan_runs(source, blobs)?;
    let (tx, rx) = bounded::<&Run>(readers * 2);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..readers)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || -> Result<(u64, u64)> {
                    let (mut count, mut bytes) = (0, 0);
                    for run in rx {
                        for (blob_type, id, data) in read_run(source, run)? {
                            bytes += data.len() as u64;
                            progress
                                .bytes_copied
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                            if writer.add_with_id(blob_type, id, data)? {
                                count += 1;
                            }
                        }
                    }
                    Ok((count, bytes))
                })
            })
            .collect();
        drop(rx);
        for run in &runs {
            // A closed channel means every reader stopped on an error, reported below.
            if tx.send(run).is_err() {
                break;
            }
        }
        drop(tx);
        let mut total = (0, 0);
        let mut first_error = None;
        for worker in workers {
            match worker.join() {
                Ok(Ok((count, bytes))) => {
                    total.0 += count;
                    total.1 += bytes;
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Pipeline("a copy reader panicked".into()));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    })
}

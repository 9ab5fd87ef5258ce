//! Repairs: rebuilding the index from the packs themselves.
//!
//! Every pack carries its own authenticated header, so the index is a cache that can always be
//! rebuilt: after index objects are lost or damaged, or to take in packs that an interrupted
//! backup stored but never indexed. The new index is written first, as one object naming the old
//! ones as superseded; only then are the old ones deleted, so a crash at any point leaves a
//! readable repository.

use crate::index::PackRecord;
use crate::repository::{DATA_PREFIX, INDEX_PREFIX, Repository};
use crate::{Id, Result};

/// What [`rebuild_index`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RebuildReport {
    /// Packs whose headers were read into the new index.
    pub packs_indexed: u64,
    /// Blobs in the new index.
    pub blobs_indexed: u64,
    /// Packs whose header could not be read (named, with the reason); they are left in place.
    pub unreadable_packs: Vec<(Id, String)>,
    /// Index objects written.
    pub index_files_written: u64,
    /// Old index objects removed.
    pub index_files_removed: u64,
}

/// Rebuilds the index from the headers of all packs in storage.
pub fn rebuild_index(repo: &Repository) -> Result<RebuildReport> {
    let mut report = RebuildReport::default();
    let old_index = repo.list_ids(INDEX_PREFIX)?;
    let packs: Vec<Id> = repo
        .storage()
        .list(DATA_PREFIX)?
        .iter()
        .filter_map(|o| o.key.rsplit('/').next().and_then(Id::from_hex))
        .collect();
    let mut records = Vec::new();
    for id in packs {
        match repo.read_pack_header(&id) {
            Ok((trailer, entries)) => {
                report.packs_indexed += 1;
                report.blobs_indexed += entries.len() as u64;
                records.push(PackRecord {
                    id,
                    salt: trailer.salt,
                    entries,
                });
            }
            Err(e) => report.unreadable_packs.push((id, e.to_string())),
        }
    }
    report.index_files_written = u64::from(repo.commit_index(&records, &old_index)?.is_some());
    for id in &old_index {
        match repo.storage().delete(&format!("{INDEX_PREFIX}{id}")) {
            Ok(()) => report.index_files_removed += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// How [`repair_snapshots`] works.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRepairOptions {
    /// Also read every pack and treat blobs that fail verification as lost (without it, only
    /// blobs missing from the index or whose pack is gone count).
    pub read_data: bool,
    /// Report what would be done; write nothing.
    pub dry_run: bool,
    /// Remove the damaged originals once their repaired versions are written.
    pub forget: bool,
}

/// One damaged snapshot and what its repair left out.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairedSnapshot {
    /// The damaged snapshot.
    pub original: Id,
    /// Its repaired version (none in a dry run).
    pub repaired: Option<Id>,
    /// Paths left out: files with lost data, directories whose listing is lost.
    pub lost_paths: Vec<String>,
}

/// What [`repair_snapshots`] found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SnapshotRepairReport {
    /// Blobs found lost (missing, in a missing pack, or failing verification).
    pub lost_blobs: u64,
    /// Damaged blobs removed from the index, so the next backup stores them again.
    pub index_entries_removed: u64,
    /// Snapshots examined.
    pub snapshots_checked: u64,
    /// The damaged ones.
    pub damaged: Vec<RepairedSnapshot>,
}

/// For snapshots that reference lost data, writes repaired snapshots that keep everything
/// still intact, and names every path left out.
///
/// A file with any lost blob is left out whole (a file with a hole in it would restore as
/// silently wrong data); a directory whose tree is lost becomes empty. Damaged blobs are taken
/// out of the index first, so the next backup of the same data stores it again and heals the
/// repository. Repaired snapshots carry the tag `repaired`.
pub fn repair_snapshots(
    repo: &crate::IndexedRepository,
    options: &SnapshotRepairOptions,
    writer_options: &crate::WriterOptions,
) -> Result<SnapshotRepairReport> {
    use crate::id::IdSet;
    let mut report = SnapshotRepairReport::default();
    let index = repo.index().clone();
    let stored: IdSet = repo
        .storage()
        .list(DATA_PREFIX)?
        .iter()
        .filter_map(|o| o.key.rsplit('/').next().and_then(Id::from_hex))
        .collect();
    let mut damaged_in_index = IdSet::default();
    let mut damaged_packs = IdSet::default();
    for (id, location) in index.blobs() {
        let pack = index.pack(location).id;
        if !stored.contains(&pack) {
            damaged_in_index.insert(*id);
            damaged_packs.insert(pack);
        }
    }
    if options.read_data {
        let (blobs, packs) = unreadable_blobs(repo, &stored)?;
        damaged_in_index.extend(blobs);
        damaged_packs.extend(packs);
    }

    // Rebuild the trees of every snapshot, bottom-up, without what is lost.
    let mut repairer = TreeRepairer {
        repo,
        damaged: &damaged_in_index,
        rebuilt: crate::IdMap::default(),
        new_trees: Vec::new(),
        lost_blobs: IdSet::default(),
    };
    let mut plans = Vec::new();
    for entry in repo.snapshots()? {
        report.snapshots_checked += 1;
        let (root, lost_paths) = repairer.repair(entry.snapshot.tree)?;
        if !lost_paths.is_empty() {
            plans.push((entry, root, lost_paths));
        }
    }
    let TreeRepairer {
        new_trees,
        mut lost_blobs,
        ..
    } = repairer;
    lost_blobs.extend(damaged_in_index.iter().copied());
    report.lost_blobs = lost_blobs.len() as u64;
    if options.dry_run {
        report.damaged = plans
            .into_iter()
            .map(|(entry, _, lost_paths)| RepairedSnapshot {
                original: entry.id,
                repaired: None,
                lost_paths,
            })
            .collect();
        report.index_entries_removed = damaged_in_index.len() as u64;
        return Ok(report);
    }

    // Copy what is intact in damaged packs to new packs, with the new trees; then commit an
    // index without the damaged packs, so backups do not deduplicate against lost blobs. The
    // damaged pack files stay where they are (named by `check`, removed by the next prune).
    let files = repo.read_index_files()?;
    let mut target = repo.clone();
    target.replace_index(crate::index::Index::from_files(
        &files.in_force,
        &damaged_packs,
    ));
    let writer = crate::BlobWriter::new(&target, writer_options);
    for pack_id in damaged_packs.iter().filter(|p| stored.contains(p)) {
        let key = crate::repository::pack_key(pack_id);
        let bytes = repo.storage().get(&key)?;
        for (id, location) in index.blobs() {
            if index.pack(location).id != *pack_id || damaged_in_index.contains(id) {
                continue;
            }
            let range = location.offset as usize..(location.offset + location.stored_len) as usize;
            let sealed = bytes.get(range).unwrap_or_default();
            let data = crate::pack::decode_blob(
                repo.key(),
                &index.pack(location).salt,
                &index.entry(*id, location),
                sealed,
                &key,
            )?;
            writer.add_with_id(location.blob_type, *id, data)?;
        }
    }
    for tree in &new_trees {
        writer.add(crate::BlobType::Tree, tree.to_bytes())?;
    }
    let stats = writer.finish()?;
    if !damaged_packs.is_empty() {
        let mut records: Vec<PackRecord> = Vec::new();
        let mut seen = IdSet::default();
        for (_, file) in &files.in_force {
            for pack in &file.packs {
                if !seen.insert(pack.id) {
                    continue;
                }
                if damaged_packs.contains(&pack.id) {
                    report.index_entries_removed += pack
                        .entries
                        .iter()
                        .filter(|e| damaged_in_index.contains(&e.id))
                        .count() as u64;
                } else {
                    records.push(pack.clone());
                }
            }
        }
        records.extend(stats.packs.iter().cloned());
        repo.commit_index(&records, &files.listed)?;
        for id in &files.listed {
            match repo.storage().delete(&format!("{INDEX_PREFIX}{id}")) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    target.add_packs(stats.packs);
    for (entry, root, lost_paths) in plans {
        let mut snapshot = entry.snapshot.clone();
        snapshot.tree = root;
        if !snapshot.tags.iter().any(|t| t == "repaired") {
            snapshot.tags.push("repaired".to_string());
        }
        let repaired = crate::prune::save_snapshot_guarded(&mut target, &snapshot, writer_options)?;
        if options.forget {
            repo.forget_snapshot(&entry.id)?;
        }
        report.damaged.push(RepairedSnapshot {
            original: entry.id,
            repaired: Some(repaired),
            lost_paths,
        });
    }
    Ok(report)
}

/// Rebuilds trees without lost data, each tree once however many snapshots share it.
struct TreeRepairer<'a> {
    repo: &'a crate::IndexedRepository,
    damaged: &'a crate::id::IdSet,
    /// Per tree already seen: its repaired id (the same if nothing below was lost) and the lost
    /// paths below it, relative to it (`/dir/file`).
    rebuilt: crate::IdMap<(Id, Vec<String>)>,
    /// New trees, children before parents.
    new_trees: Vec<crate::Tree>,
    lost_blobs: crate::id::IdSet,
}

impl TreeRepairer<'_> {
    fn is_lost(&self, id: &Id) -> bool {
        self.damaged.contains(id) || !self.repo.index().contains(id)
    }

    /// The repaired id of `tree_id` and the lost paths below it, relative to it.
    fn repair(&mut self, tree_id: Id) -> Result<(Id, Vec<String>)> {
        if let Some(done) = self.rebuilt.get(&tree_id) {
            return Ok(done.clone());
        }
        let tree = self.repo.read_tree(&tree_id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut lost_paths = Vec::new();
        let mut changed = false;
        for mut node in tree.nodes {
            let child = format!("/{}", node.name);
            let missing: Vec<Id> = node
                .content
                .iter()
                .filter(|id| self.is_lost(id))
                .copied()
                .collect();
            if !missing.is_empty() {
                self.lost_blobs.extend(missing);
                lost_paths.push(child);
                changed = true;
                continue;
            }
            if let Some(sub) = node.subtree {
                if self.is_lost(&sub) {
                    self.lost_blobs.insert(sub);
                    lost_paths.push(format!("{child}/ (directory listing lost; kept empty)"));
                    let empty = crate::Tree::new(Vec::new());
                    node.subtree = Some(self.repo.key().blob_id(&empty.to_bytes()));
                    self.new_trees.push(empty);
                    changed = true;
                } else {
                    let (new, below) = self.repair(sub)?;
                    lost_paths.extend(below.into_iter().map(|p| format!("{child}{p}")));
                    if new != sub {
                        node.subtree = Some(new);
                        changed = true;
                    }
                }
            }
            nodes.push(node);
        }
        let id = if changed {
            let tree = crate::Tree::new(nodes);
            let id = self.repo.key().blob_id(&tree.to_bytes());
            self.new_trees.push(tree);
            id
        } else {
            tree_id
        };
        self.rebuilt.insert(tree_id, (id, lost_paths.clone()));
        Ok((id, lost_paths))
    }
}

/// Blobs of stored packs that fail verification, and the packs that are damaged (a blob fails,
/// or the bytes no longer match the pack's name). Reads every pack the index names.
fn unreadable_blobs(
    repo: &crate::IndexedRepository,
    stored: &crate::id::IdSet,
) -> Result<(Vec<Id>, Vec<Id>)> {
    let index = repo.index();
    let mut by_pack: crate::IdMap<Vec<Id>> = crate::IdMap::default();
    for (id, location) in index.blobs() {
        by_pack
            .entry(index.pack(location).id)
            .or_default()
            .push(*id);
    }
    let mut bad = Vec::new();
    let mut bad_packs = Vec::new();
    for (pack_id, blobs) in by_pack {
        if !stored.contains(&pack_id) {
            continue;
        }
        let key = crate::repository::pack_key(&pack_id);
        let bytes = repo.storage().get(&key)?;
        if Id::of_stored_bytes(&bytes) != pack_id {
            bad_packs.push(pack_id);
        }
        for id in blobs {
            let location = index.get(&id).expect("listed above");
            let range = location.offset as usize..(location.offset + location.stored_len) as usize;
            let ok = bytes.get(range).is_some_and(|sealed| {
                crate::pack::decode_blob(
                    repo.key(),
                    &index.pack(location).salt,
                    &index.entry(id, location),
                    sealed,
                    &key,
                )
                .is_ok()
            });
            if !ok {
                bad.push(id);
                if bad_packs.last() != Some(&pack_id) {
                    bad_packs.push(pack_id);
                }
            }
        }
    }
    Ok((bad, bad_packs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Node, NodeKind, Tree};
    use crate::{
        BlobType, BlobWriter, InitOptions, KdfParams, Snapshot, SourceKind, WriterOptions,
    };
    use lifeboat_storage::Storage;

    fn snapshot(tree: Id) -> Snapshot {
        Snapshot {
            version: 1,
            time: jiff::Timestamp::now(),
            tree,
            paths: vec!["/".into()],
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

    #[test]
    fn a_damaged_tree_shared_by_two_snapshots_is_named_in_each() {
        let options = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            pack_size: 64 * 1024,
            ..Default::default()
        };
        let repo = Repository::init(Storage::memory().unwrap(), b"pw", &options).unwrap();
        let indexed = repo.clone().load_index().unwrap();
        let writer = BlobWriter::new(&indexed, &WriterOptions::default());
        let noise = |seed: u8| -> Vec<u8> {
            let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..100_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let (bad, _) = writer.add(BlobType::Data, noise(1)).unwrap();
        let (good, _) = writer.add(BlobType::Data, noise(2)).unwrap();
        let file = |name: &str, blob: Id| {
            let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
            node.content.push(blob);
            node
        };
        let (shared, _) = writer
            .add(
                BlobType::Tree,
                Tree::new(vec![file("bad", bad), file("good", good)]).to_bytes(),
            )
            .unwrap();
        let mut roots = Vec::new();
        for dir in ["x", "y"] {
            let mut node = Node::new(dir.as_bytes().to_vec(), NodeKind::Dir);
            node.subtree = Some(shared);
            let (root, _) = writer
                .add(BlobType::Tree, Tree::new(vec![node]).to_bytes())
                .unwrap();
            roots.push(root);
        }
        writer.finish().unwrap();
        for root in roots {
            repo.save_snapshot(&snapshot(root)).unwrap();
        }
        let indexed = repo.clone().load_index().unwrap();
        let bad_pack = indexed.index().pack(indexed.index().get(&bad).unwrap()).id;
        let good_pack = indexed.index().pack(indexed.index().get(&good).unwrap()).id;
        assert_ne!(
            bad_pack, good_pack,
            "the test needs the blobs in separate packs"
        );
        repo.storage()
            .delete(&crate::repository::pack_key(&bad_pack))
            .unwrap();

        let dry = SnapshotRepairOptions {
            dry_run: true,
            ..Default::default()
        };
        let report = repair_snapshots(&indexed, &dry, &WriterOptions::default()).unwrap();
        let mut lost: Vec<Vec<String>> = report
            .damaged
            .iter()
            .map(|d| d.lost_paths.clone())
            .collect();
        lost.sort();
        assert_eq!(
            lost,
            [vec!["/x/bad".to_string()], vec!["/y/bad".to_string()]]
        );

        let report = repair_snapshots(
            &indexed,
            &SnapshotRepairOptions::default(),
            &WriterOptions::default(),
        )
        .unwrap();
        let repaired = repo.clone().load_index().unwrap();
        for damaged in &report.damaged {
            let root = repaired
                .read_tree(&repo.load_snapshot(&damaged.repaired.unwrap()).unwrap().tree)
                .unwrap();
            let dir = repaired.read_tree(&root.nodes[0].subtree.unwrap()).unwrap();
            let names: Vec<String> = dir.nodes.iter().map(|n| n.name.to_string()).collect();
            assert_eq!(names, ["good"]);
        }
    }
}

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

//! Index objects and the in-memory index.
//!
//! An index object lists, for a set of packs, each pack's id and key salt and the position of
//! every blob in it: the same entries as the packs' own headers, gathered so that opening a
//! repository reads a few index objects instead of every pack. Index objects are written by the
//! backup that wrote the packs (every [`INDEX_PACKS_PER_OBJECT`] packs and at the end), so an
//! interrupted backup leaves indexed packs that the next backup reuses.
//!
//! Binary layout of the plaintext (little-endian):
//!
//! ```text
//! version u8 (1)
//! supersedes: count u32, count × id[32]   (index objects this one replaces; used by prune)
//! packs: count u32, count × (pack id[32] | salt[32] | blob count u32 | blob count × entry[46])
//! entry: blob type u8 | compression u8 | id[32] | offset u32 | stored_len u32 | raw_len u32
//! ```
//!
//! In memory each blob costs one hash-map slot: a 32-byte id and a 20-byte [`BlobLocation`],
//! about 60 bytes with the table's overhead (measured figures are in `docs/format.md`).

use crate::crypto::SALT_LEN;
use crate::id::{IdMap, IdSet};
use crate::pack::{BlobType, Compression, ENTRY_LEN, PackEntry};
use crate::{Error, Id, Result};

/// How many packs one index object covers before a backup writes it out.
pub const INDEX_PACKS_PER_OBJECT: usize = 32;
const INDEX_VERSION: u8 = 1;

/// One pack's record in an index object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRecord {
    /// Pack id (its object name).
    pub id: Id,
    /// Salt of the pack key.
    pub salt: [u8; SALT_LEN],
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

/// The contents of one index object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index objects this one replaces.
    pub supersedes: Vec<Id>,
    /// Packs described.
    pub packs: Vec<PackRecord>,
}

struct Cursor<'a> {
    data: &'a [u8],
    what: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(Error::malformed(self.what, "truncated index"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn id(&mut self) -> Result<Id> {
        Ok(Id(self.take(32)?.try_into().expect("32")))
    }
    /// A count whose items need at least `item_len` bytes each: bounds allocations by input size.
    fn count(&mut self, item_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_len) > self.data.len() {
            return Err(Error::malformed(self.what, "count exceeds index size"));
        }
        Ok(n)
    }
}

impl IndexFile {
    /// Serialises to the binary layout above.
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.entries.len()).sum();
        let mut out = Vec::with_capacity(
            9 + 32 * self.supersedes.len() + 68 * self.packs.len() + ENTRY_LEN * blobs,
        );
        out.push(INDEX_VERSION);
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(&id.0);
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for pack in &self.packs {
            out.extend_from_slice(&pack.id.0);
            out.extend_from_slice(&pack.salt);
            out.extend_from_slice(&(pack.entries.len() as u32).to_le_bytes());
            for e in &pack.entries {
                e.encode(&mut out);
            }
        }
        out
    }

    /// Parses the binary layout; `what` names the object in errors.
    pub fn decode(data: &[u8], what: &str) -> Result<IndexFile> {
        let mut c = Cursor { data, what };
        let version = c.take(1)?[0];
        if version != INDEX_VERSION {
            return Err(Error::UnsupportedVersion {
                what: what.to_string(),
                found: u32::from(version),
                supported: u32::from(INDEX_VERSION),
            });
        }
        let n = c.count(32)?;
        let supersedes = (0..n).map(|_| c.id()).collect::<Result<_>>()?;
        let n = c.count(68)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = c.id()?;
            let salt = c.take(SALT_LEN)?.try_into().expect("salt");
            let m = c.count(ENTRY_LEN)?;
            let mut entries = Vec::with_capacity(m);
            for _ in 0..m {
                entries.push(PackEntry::decode(c.take(ENTRY_LEN)?, what)?);
            }
            packs.push(PackRecord { id, salt, entries });
        }
        if !c.data.is_empty() {
            return Err(Error::malformed(what, "trailing bytes after index"));
        }
        Ok(IndexFile { supersedes, packs })
    }
}

/// Where a blob is, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of its pack in [`Index::packs`].
    pub pack: u32,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Data or tree.
    pub blob_type: BlobType,
    /// How the plaintext is stored.
    pub compression: Compression,
}

/// A pack known to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackInfo {
    /// Pack id.
    pub id: Id,
    /// Salt of its key.
    pub salt: [u8; SALT_LEN],
}

/// All blob locations of a repository, in memory.
#[derive(Debug, Default, Clone)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_positions: IdMap<u32>,
    blobs: IdMap<BlobLocation>,
    files: Vec<Id>,
    /// Positions of packs a prune plan dooms: readable until the sweep, never reused.
    doomed: std::collections::HashSet<u32>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Adds the packs of one index object named `name`.
    pub fn add_file(&mut self, name: Id, file: IndexFile) {
        self.files.push(name);
        let blobs: usize = file.packs.iter().map(|p| p.entries.len()).sum();
        self.blobs.reserve(blobs);
        for pack in file.packs {
            self.add_pack(pack);
        }
    }

    /// Adds one pack's blobs. A blob already known keeps its first location: duplicates appear
    /// when concurrent backups store the same new blob, and either copy serves.
    pub fn add_pack(&mut self, pack: PackRecord) {
        let position = *self.pack_positions.entry(pack.id).or_insert_with(|| {
            self.packs.push(PackInfo {
                id: pack.id,
                salt: pack.salt,
            });
            (self.packs.len() - 1) as u32
        });
        for e in pack.entries {
            self.blobs.entry(e.id).or_insert(BlobLocation {
                pack: position,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                blob_type: e.blob_type,
                compression: e.compression,
            });
        }
    }

    /// Position of a pack in [`Self::packs`], if the index has it.
    pub fn pack_position(&self, id: &Id) -> Option<u32> {
        self.pack_positions.get(id).copied()
    }

    /// An index of the packs in `files`, leaving out those in `leave_out`. A blob whose first
    /// copy is in a left-out pack is found at its next copy, if any.
    pub fn from_files(files: &[(Id, IndexFile)], leave_out: &IdSet) -> Index {
        let mut index = Index::new();
        for (name, file) in files {
            index.files.push(*name);
            for pack in file.packs.iter().filter(|p| !leave_out.contains(&p.id)) {
                index.add_pack(pack.clone());
            }
        }
        index
    }

    /// Like [`Self::from_files`] without leaving anything out: the packs in `last` are added
    /// after all others, so a blob they share with another pack is found in the other one.
    pub fn from_files_doomed_last(files: &[(Id, IndexFile)], last: &IdSet) -> Index {
        let mut index = Index::from_files(files, last);
        if !last.is_empty() {
            for (_, file) in files {
                for pack in file.packs.iter().filter(|p| last.contains(&p.id)) {
                    index.add_pack(pack.clone());
                }
            }
            index.doomed = last
                .iter()
                .filter_map(|id| index.pack_position(id))
                .collect();
        }
        index
    }

    /// True if the blob is stored in a pack that no prune plan dooms, so a writer may reuse it
    /// (a blob only doomed packs hold is stored again instead: the sweep will delete them).
    pub fn contains_reusable(&self, id: &Id) -> bool {
        self.blobs
            .get(id)
            .is_some_and(|l| !self.doomed.contains(&l.pack))
    }

    /// Location of a blob.
    pub fn get(&self, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }

    /// True if the blob is stored.
    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// The pack a location refers to.
    pub fn pack(&self, location: &BlobLocation) -> &PackInfo {
        &self.packs[location.pack as usize]
    }

    /// All packs.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// Names of the index objects loaded.
    pub fn files(&self) -> &[Id] {
        &self.files
    }

    /// Number of distinct blobs.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Iterates over all blobs.
    pub fn blobs(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter()
    }

    /// The entry a location describes, as in a pack header.
    pub fn entry(&self, id: Id, location: &BlobLocation) -> PackEntry {
        PackEntry {
            blob_type: location.blob_type,
            compression: location.compression,
            id,
            offset: location.offset,
            stored_len: location.stored_len,
            raw_len: location.raw_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> PackEntry {
        PackEntry {
            blob_type: if n.is_multiple_of(2) {
                BlobType::Data
            } else {
                BlobType::Tree
            },
            compression: Compression::Zstd,
            id: Id([n; 32]),
            offset: u32::from(n) * 100,
            stored_len: 90,
            raw_len: 200,
        }
    }

    #[test]
    fn encode_decode_roundtrip_and_truncation() {
        let file = IndexFile {
            supersedes: vec![Id([9; 32])],
            packs: vec![
                PackRecord {
                    id: Id([1; 32]),
                    salt: [2; 32],
                    entries: vec![entry(1), entry(2)],
                },
                PackRecord {
                    id: Id([3; 32]),
                    salt: [4; 32],
                    entries: vec![],
                },
            ],
        };
        let bytes = file.encode();
        assert_eq!(IndexFile::decode(&bytes, "i").unwrap(), file);
        for len in 0..bytes.len() {
            assert!(IndexFile::decode(&bytes[..len], "i").is_err(), "len {len}");
        }
        let mut huge_count = bytes.clone();
        huge_count[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(IndexFile::decode(&huge_count, "i").is_err());
    }

    #[test]
    fn first_location_wins_and_packs_are_shared() {
        let mut index = Index::new();
        index.add_pack(PackRecord {
            id: Id([1; 32]),
            salt: [0; 32],
            entries: vec![entry(5)],
        });
        index.add_pack(PackRecord {
            id: Id([2; 32]),
            salt: [0; 32],
            entries: vec![entry(5), entry(6)],
        });
        let loc = index.get(&Id([5; 32])).unwrap();
        assert_eq!(index.pack(loc).id, Id([1; 32]));
        assert_eq!(index.blob_count(), 2);
        assert_eq!(index.packs().len(), 2);
    }
}

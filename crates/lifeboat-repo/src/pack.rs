//! Pack files: many encrypted blobs in one storage object.
//!
//! ```text
//! blob 0 ciphertext+tag | blob 1 … | header ciphertext+tag | trailer (48 bytes)
//!
//! trailer: salt[32] | header_len u32 | key_mode u8 | version u8 | reserved[2] | magic "LIFEBOAT"
//! header plaintext: version u8 | count u32 | count × entry (46 bytes):
//!          blob type u8 | compression u8 | id[32] | offset u32 | stored_len u32 | raw_len u32
//! ```
//!
//! Every blob is sealed with the pack's key (derived from the salt) and nonce
//! (`Blob`, offset), with its type and id as associated data, so a blob cannot be moved,
//! relabelled or swapped for another without failing authentication. The header is sealed too
//! and lets `repair` rebuild the index from packs alone, reading only each pack's tail.
//! `key_mode` 0 means "key derived from the master key"; other values are reserved for
//! write-only clients whose pack keys will be wrapped to a repository public key.

use crate::crypto::{MasterKey, NonceDomain, SALT_LEN, TAG_LEN, random_salt};
use crate::{Error, Id, Result};

/// Length of the fixed trailer at the end of each pack.
pub const TRAILER_LEN: usize = 48;
const MAGIC: &[u8; 8] = b"LIFEBOAT";
/// Pack format version.
pub const PACK_VERSION: u8 = 1;
const KEY_MODE_DERIVED: u8 = 0;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobType {
    /// File content.
    Data = 0,
    /// A serialised directory tree.
    Tree = 1,
}

impl BlobType {
    fn from_u8(v: u8) -> Option<BlobType> {
        match v {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }
}

/// How a blob's plaintext was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is (it did not compress).
    None = 0,
    /// zstd frame.
    Zstd = 1,
}

impl Compression {
    fn from_u8(v: u8) -> Option<Compression> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Where a blob sits in its pack and how to decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Kind of blob.
    pub blob_type: BlobType,
    /// How its plaintext is stored.
    pub compression: Compression,
    /// The blob id.
    pub id: Id,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob (ciphertext and tag).
    pub stored_len: u32,
    /// Length of the plaintext after decompression.
    pub raw_len: u32,
}

/// Length of an encoded [`PackEntry`], in pack headers and index objects alike.
pub const ENTRY_LEN: usize = 46;

impl PackEntry {
    /// Appends the 46-byte encoding:
    /// `type u8 | compression u8 | id[32] | offset u32 | stored_len u32 | raw_len u32`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.blob_type as u8);
        out.push(self.compression as u8);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    /// Decodes [`ENTRY_LEN`] bytes; `what` names the containing object in errors.
    pub fn decode(raw: &[u8], what: &str) -> Result<PackEntry> {
        let raw: &[u8; ENTRY_LEN] = raw
            .try_into()
            .map_err(|_| Error::malformed(what, "truncated blob entry"))?;
        let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        Ok(PackEntry {
            blob_type: BlobType::from_u8(raw[0])
                .ok_or_else(|| Error::malformed(what, format!("unknown blob type {}", raw[0])))?,
            compression: Compression::from_u8(raw[1])
                .ok_or_else(|| Error::malformed(what, format!("unknown compression {}", raw[1])))?,
            id: Id(raw[2..34].try_into().expect("32 bytes")),
            offset: u32_at(34),
            stored_len: u32_at(38),
            raw_len: u32_at(42),
        })
    }
}

/// Associated data of a sealed blob: its type and id.
pub(crate) fn blob_aad(blob_type: BlobType, id: &Id) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = blob_type as u8;
    aad[1..].copy_from_slice(&id.0);
    aad
}

thread_local! {
    /// One zstd context per thread: creating a context per blob costs more than decompressing
    /// a small blob.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("just set").decompress(data, capacity)
    })
}

/// Decrypts, decompresses and verifies one sealed blob.
pub fn decode_blob(
    key: &MasterKey,
    salt: &[u8; SALT_LEN],
    entry: &PackEntry,
    sealed: &[u8],
    what: &str,
) -> Result<Vec<u8>> {
    let plain = key
        .object_cipher(salt)
        .open(
            NonceDomain::Blob,
            u64::from(entry.offset),
            &blob_aad(entry.blob_type, &entry.id),
            sealed,
        )
        .map_err(|_| Error::corrupt(what))?;
    let raw = match entry.compression {
        Compression::None => plain,
        Compression::Zstd => decompress(&plain, entry.raw_len as usize)
            .map_err(|e| Error::malformed(what, format!("zstd: {e}")))?,
    };
    if raw.len() != entry.raw_len as usize {
        return Err(Error::malformed(
            what,
            "decoded length differs from the index",
        ));
    }
    if key.blob_id(&raw) != entry.id {
        return Err(Error::corrupt(what));
    }
    Ok(raw)
}

/// Builds one pack in memory.
pub struct PackWriter {
    salt: [u8; SALT_LEN],
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to upload.
pub struct FinishedPack {
    /// Name of the pack: BLAKE3 of its bytes.
    pub id: Id,
    /// Salt its key derives from (recorded in the index so reads need no extra request).
    pub salt: [u8; SALT_LEN],
    /// The bytes to store.
    pub bytes: Vec<u8>,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// An empty pack with room for `capacity` bytes.
    pub fn new(capacity: usize) -> PackWriter {
        PackWriter {
            salt: random_salt(),
            buf: Vec::with_capacity(capacity),
            entries: Vec::new(),
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals and appends a blob whose stored form (`payload`) is already compressed if it
    /// is to be.
    pub fn add(
        &mut self,
        key: &MasterKey,
        blob_type: BlobType,
        id: Id,
        compression: Compression,
        raw_len: u32,
        payload: &[u8],
    ) {
        let offset = self.buf.len();
        let offset32 = u32::try_from(offset).expect("packs stay far below 4 GiB");
        self.buf.extend_from_slice(payload);
        key.object_cipher(&self.salt).seal_in_place(
            NonceDomain::Blob,
            u64::from(offset32),
            &blob_aad(blob_type, &id),
            &mut self.buf,
            offset,
        );
        self.entries.push(PackEntry {
            blob_type,
            compression,
            id,
            offset: offset32,
            stored_len: (self.buf.len() - offset) as u32,
            raw_len,
        });
    }

    /// Appends the sealed header and trailer.
    pub fn finish(mut self, key: &MasterKey) -> FinishedPack {
        let mut header = Vec::with_capacity(5 + self.entries.len() * ENTRY_LEN);
        header.push(PACK_VERSION);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.encode(&mut header);
        }
        let sealed =
            key.object_cipher(&self.salt)
                .seal(NonceDomain::PackHeader, 0, &trailer_aad(), &header);
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&self.salt);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&[KEY_MODE_DERIVED, PACK_VERSION, 0, 0]);
        self.buf.extend_from_slice(MAGIC);
        FinishedPack {
            id: Id::of_stored_bytes(&self.buf),
            salt: self.salt,
            bytes: self.buf,
            entries: self.entries,
        }
    }
}

fn trailer_aad() -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&[KEY_MODE_DERIVED, PACK_VERSION, 0, 0]);
    aad[4..].copy_from_slice(MAGIC);
    aad
}

/// The parsed trailer of a pack.
#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    /// Salt of the pack key.
    pub salt: [u8; SALT_LEN],
    /// Length of the sealed header just before the trailer.
    pub header_len: u32,
    /// The trailer's last 12 bytes (key mode, version, reserved, magic): the header's
    /// associated data.
    fixed: [u8; 12],
}

/// Parses the last [`TRAILER_LEN`] bytes of a pack.
pub fn parse_trailer(tail: &[u8], what: &str) -> Result<Trailer> {
    if tail.len() != TRAILER_LEN || &tail[40..] != MAGIC {
        return Err(Error::malformed(what, "not a Lifeboat pack (bad trailer)"));
    }
    if tail[37] > PACK_VERSION {
        return Err(Error::UnsupportedVersion {
            what: what.to_string(),
            found: u32::from(tail[37]),
            supported: u32::from(PACK_VERSION),
        });
    }
    if tail[38..40] != [0, 0] {
        return Err(Error::malformed(
            what,
            "reserved trailer bytes are not zero",
        ));
    }
    if tail[36] != KEY_MODE_DERIVED {
        return Err(Error::malformed(
            what,
            format!("unsupported key mode {}", tail[36]),
        ));
    }
    Ok(Trailer {
        salt: tail[..32].try_into().expect("salt"),
        header_len: u32::from_le_bytes(tail[32..36].try_into().expect("u32")),
        fixed: tail[36..].try_into().expect("12 bytes"),
    })
}

/// Decrypts and parses a pack header; `pack_len` is the size of the whole pack, used to check
/// that every entry lies inside the blob area.
pub fn parse_header(
    key: &MasterKey,
    trailer: &Trailer,
    sealed: &[u8],
    pack_len: u64,
    what: &str,
) -> Result<Vec<PackEntry>> {
    let header = key
        .object_cipher(&trailer.salt)
        .open(NonceDomain::PackHeader, 0, &trailer.fixed, sealed)
        .map_err(|_| Error::corrupt(format!("{what} header")))?;
    if header.len() < 5 {
        return Err(Error::malformed(what, "header too short"));
    }
    if header[0] > PACK_VERSION {
        return Err(Error::UnsupportedVersion {
            what: what.to_string(),
            found: u32::from(header[0]),
            supported: u32::from(PACK_VERSION),
        });
    }
    let count = u32::from_le_bytes(header[1..5].try_into().expect("u32")) as usize;
    if header.len() != 5 + count * ENTRY_LEN {
        return Err(Error::malformed(
            what,
            "header length does not match its entry count",
        ));
    }
    let blob_area = pack_len.saturating_sub(TRAILER_LEN as u64 + u64::from(trailer.header_len));
    let mut entries = Vec::with_capacity(count);
    for raw in header[5..].chunks_exact(ENTRY_LEN) {
        let entry = PackEntry::decode(raw, what)?;
        if u64::from(entry.offset) + u64::from(entry.stored_len) > blob_area
            || (entry.stored_len as usize) < TAG_LEN
        {
            return Err(Error::malformed(
                what,
                format!("blob {} lies outside the pack", entry.id),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads the header of a complete pack held in memory.
///
/// The header's associated data is the trailer's fixed part, so a changed version or key mode
/// fails authentication even where the parser would accept it.
pub fn read_header_from_bytes(
    key: &MasterKey,
    pack: &[u8],
    what: &str,
) -> Result<(Trailer, Vec<PackEntry>)> {
    if pack.len() < TRAILER_LEN {
        return Err(Error::malformed(what, "shorter than a pack trailer"));
    }
    let trailer = parse_trailer(&pack[pack.len() - TRAILER_LEN..], what)?;
    let header_end = pack.len() - TRAILER_LEN;
    let header_start = header_end
        .checked_sub(trailer.header_len as usize)
        .ok_or_else(|| Error::malformed(what, "header length exceeds pack"))?;
    let entries = parse_header(
        key,
        &trailer,
        &pack[header_start..header_end],
        pack.len() as u64,
        what,
    )?;
    Ok((trailer, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &MasterKey) -> FinishedPack {
        let mut w = PackWriter::new(1024);
        for (i, text) in [&b"first blob"[..], b"second", b""].iter().enumerate() {
            let ty = if i == 1 {
                BlobType::Tree
            } else {
                BlobType::Data
            };
            w.add(
                key,
                ty,
                key.blob_id(text),
                Compression::None,
                text.len() as u32,
                text,
            );
        }
        w.finish(key)
    }

    #[test]
    fn pack_roundtrip() {
        let key = MasterKey::generate();
        let pack = sample(&key);
        assert_eq!(pack.id, Id::of_stored_bytes(&pack.bytes));
        let (trailer, entries) = read_header_from_bytes(&key, &pack.bytes, "p").unwrap();
        assert_eq!(entries, pack.entries);
        assert_eq!(trailer.salt, pack.salt);
        for (e, text) in entries.iter().zip([&b"first blob"[..], b"second", b""]) {
            let sealed = &pack.bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            assert_eq!(decode_blob(&key, &pack.salt, e, sealed, "b").unwrap(), text);
        }
    }

    #[test]
    fn any_flipped_byte_is_detected_somewhere() {
        let key = MasterKey::generate();
        let pack = sample(&key);
        for i in 0..pack.bytes.len() {
            let mut bad = pack.bytes.clone();
            bad[i] ^= 0x01;
            let detected = match read_header_from_bytes(&key, &bad, "p") {
                Err(_) => true,
                Ok((_, entries)) => entries.iter().any(|e| {
                    let end = (e.offset + e.stored_len) as usize;
                    decode_blob(&key, &pack.salt, e, &bad[e.offset as usize..end], "b").is_err()
                }),
            };
            assert!(detected, "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn blobs_cannot_be_swapped_or_relabelled() {
        let key = MasterKey::generate();
        let pack = sample(&key);
        let e0 = pack.entries[0];
        let e1 = pack.entries[1];
        let sealed0 = &pack.bytes[e0.offset as usize..(e0.offset + e0.stored_len) as usize];
        // Claiming blob 0's bytes are blob 1 (other id, type and nonce) fails.
        assert!(decode_blob(&key, &pack.salt, &e1, sealed0, "b").is_err());
        let relabelled = PackEntry {
            blob_type: BlobType::Tree,
            ..e0
        };
        assert!(decode_blob(&key, &pack.salt, &relabelled, sealed0, "b").is_err());
        assert!(decode_blob(&MasterKey::generate(), &pack.salt, &e0, sealed0, "b").is_err());
    }
}

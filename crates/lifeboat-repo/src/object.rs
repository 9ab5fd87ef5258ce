//! Sealed standalone objects: config, index and snapshot files.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! 0..4   magic "LBOB"
//! 4      format version (1)
//! 5      kind (1 config, 2 index, 3 snapshot, 4 stream, 5 prune plan)
//! 6      compression of the plaintext (0 none, 1 zstd)
//! 7      reserved, 0
//! 8..40  salt: the object's AES-256-GCM key is derived from it
//! 40..   ciphertext and 16-byte tag; bytes 0..8 are the associated data
//! ```
//!
//! Binding the header as associated data means an attacker cannot pass off a snapshot as an
//! index, or flip the compression flag, without failing authentication.
//!
//! Stream objects (journal segments of database sources) are named by their position rather
//! than by their hash, so their storage key is bound too: the associated data is the header
//! followed by the key, and an object moved to another name fails authentication.

use std::io::Write;

use crate::crypto::{NonceDomain, ObjectKeys, SALT_LEN, TAG_LEN, random_salt};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"LBOB";
/// Newest object format version this build writes and reads.
pub const OBJECT_VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

/// What a standalone object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// Repository parameters.
    Config = 1,
    /// Blob locations for a set of packs.
    Index = 2,
    /// A snapshot description.
    Snapshot = 3,
    /// A segment of a source's journal (SQLite WAL frames, PostgreSQL WAL), named by position.
    Stream = 4,
    /// A prune plan: the packs a mark doomed, for its sweep.
    PrunePlan = 5,
}

impl ObjectKind {
    fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Stream => "stream",
            ObjectKind::PrunePlan => "prune plan",
        }
    }
}

/// Compresses (zstd) and encrypts `plain` as an object of `kind`.
pub fn seal(key: &ObjectKeys, kind: ObjectKind, plain: &[u8], zstd_level: i32) -> Vec<u8> {
    seal_bound(key, kind, plain, zstd_level, b"")
}

/// Like [`seal`], and also authenticates `name` (the storage key), which [`open_bound`] must be
/// given again.
pub fn seal_bound(
    key: &ObjectKeys,
    kind: ObjectKind,
    plain: &[u8],
    zstd_level: i32,
    name: &[u8],
) -> Vec<u8> {
    seal_parts_bound(key, kind, &[plain], zstd_level, name)
}

/// Like [`seal_bound`] for a plaintext given in parts, which are sealed as their
/// concatenation without being copied into one buffer first.
pub fn seal_parts_bound(
    key: &ObjectKeys,
    kind: ObjectKind,
    parts: &[&[u8]],
    zstd_level: i32,
    name: &[u8],
) -> Vec<u8> {
    let plain_len: usize = parts.iter().map(|part| part.len()).sum();
    let salt = random_salt();
    // Compressed in place after the header: a bulk compression would need the parts joined.
    let mut out = Vec::with_capacity(
        HEADER_LEN + SALT_LEN + zstd::zstd_safe::compress_bound(plain_len) + TAG_LEN,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[OBJECT_VERSION, kind as u8, 1, 0]);
    out.extend_from_slice(&salt);
    let start = out.len();
    let mut out = (|| {
        let mut encoder = zstd::stream::write::Encoder::new(out, zstd_level)?;
        encoder.set_pledged_src_size(Some(plain_len as u64))?;
        for part in parts {
            encoder.write_all(part)?;
        }
        encoder.finish()
    })()
    .expect("zstd into memory cannot fail");
    let mut aad = out[..HEADER_LEN].to_vec();
    aad.extend_from_slice(name);
    key.cipher(&salt)
        .seal_in_place(NonceDomain::Object, 0, &aad, &mut out, start);
    out
}

/// Checks, decrypts and decompresses an object that should be of `kind`. `what` names it in errors.
pub fn open(key: &ObjectKeys, kind: ObjectKind, stored: &[u8], what: &str) -> Result<Vec<u8>> {
    open_bound(key, kind, stored, what, b"")
}

/// Opens an object sealed by [`seal_bound`] under `name`.
pub fn open_bound(
    key: &ObjectKeys,
    kind: ObjectKind,
    stored: &[u8],
    what: &str,
    name: &[u8],
) -> Result<Vec<u8>> {
    if stored.len() < HEADER_LEN + SALT_LEN + TAG_LEN || &stored[..4] != MAGIC {
        return Err(Error::corrupt(what));
    }
    if stored[4] > OBJECT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: what.to_string(),
            found: u32::from(stored[4]),
            supported: u32::from(OBJECT_VERSION),
        });
    }
    if stored[5] != kind as u8 {
        return Err(Error::malformed(
            what,
            format!(
                "expected a {} object, found kind {}",
                kind.name(),
                stored[5]
            ),
        ));
    }
    let salt: [u8; SALT_LEN] = stored[HEADER_LEN..HEADER_LEN + SALT_LEN]
        .try_into()
        .expect("salt");
    let mut aad = stored[..HEADER_LEN].to_vec();
    aad.extend_from_slice(name);
    let plain = key
        .cipher(&salt)
        .open(
            NonceDomain::Object,
            0,
            &aad,
            &stored[HEADER_LEN + SALT_LEN..],
        )
        .map_err(|_| Error::corrupt(what))?;
    match stored[6] {
        0 => Ok(plain),
        1 => zstd::stream::decode_all(plain.as_slice())
            .map_err(|e| Error::malformed(what, format!("zstd: {e}"))),
        other => Err(Error::malformed(
            what,
            format!("unknown compression {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn roundtrip_and_every_single_byte_flip_is_detected() {
        let key = MasterKey::generate();
        let key = key.objects();
        let sealed = seal(key, ObjectKind::Snapshot, b"{\"a\":1}", 3);
        assert_eq!(
            open(key, ObjectKind::Snapshot, &sealed, "x").unwrap(),
            b"{\"a\":1}"
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            assert!(
                open(key, ObjectKind::Snapshot, &bad, "x").is_err(),
                "flip at {i}"
            );
        }
        for len in 0..sealed.len() {
            assert!(open(key, ObjectKind::Snapshot, &sealed[..len], "x").is_err());
        }
        assert!(matches!(
            open(key, ObjectKind::Index, &sealed, "x"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            open(
                MasterKey::generate().objects(),
                ObjectKind::Snapshot,
                &sealed,
                "x"
            ),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn a_bound_object_opens_only_under_its_own_name() {
        let key = MasterKey::generate();
        let key = key.objects();
        let sealed = seal_bound(key, ObjectKind::Stream, b"frames", 3, b"streams/a/0001");
        assert_eq!(
            open_bound(key, ObjectKind::Stream, &sealed, "x", b"streams/a/0001").unwrap(),
            b"frames"
        );
        assert!(open_bound(key, ObjectKind::Stream, &sealed, "x", b"streams/a/0002").is_err());
        assert!(open(key, ObjectKind::Stream, &sealed, "x").is_err());
    }

    #[test]
    fn an_object_sealed_in_parts_opens_as_their_concatenation() {
        let key = MasterKey::generate();
        let key = key.objects();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let parts: [&[u8]; 4] = [b"head", b"", &big, b"tail"];
        let sealed = seal_parts_bound(key, ObjectKind::Stream, &parts, 3, b"streams/a/0003");
        assert_eq!(
            open_bound(key, ObjectKind::Stream, &sealed, "x", b"streams/a/0003").unwrap(),
            parts.concat()
        );
        // Compressed: the repeating pattern takes far less than it holds.
        assert!(sealed.len() < big.len() / 10);
    }
}

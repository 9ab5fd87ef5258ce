//! 256-bit identifiers of blobs and stored objects, shown as lowercase hex.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte identifier.
///
/// Blob ids are keyed BLAKE3 hashes of the plaintext (so storage learns nothing from them);
/// object names (packs, indexes, snapshots, keys) are plain BLAKE3 hashes of the stored bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Ids are uniformly distributed hashes already: eight of their bytes make a good key.
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")));
    }
}

/// A hasher that passes an [`Id`]'s first eight bytes through: hashing ids again is wasted work.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A hash map keyed by ids.
pub type IdMap<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;
/// A hash set of ids.
pub type IdSet = HashSet<Id, BuildHasherDefault<IdHasher>>;

impl Id {
    /// Length of the id in bytes.
    pub const LEN: usize = 32;

    /// Plain BLAKE3 hash of stored bytes: the name of a content-addressed object.
    pub fn of_stored_bytes(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    /// Full lowercase hex form (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters, as shown in listings.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parses a full 64-character hex id.
    pub fn from_hex(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::from_hex(s).ok_or_else(|| format!("{s:?} is not a 64-character hex id"))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid id {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_serde() {
        let id = Id::of_stored_bytes(b"abc");
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short().len(), 8);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        assert!(Id::from_hex("zz").is_none());
        assert!(Id::from_hex(&"0".repeat(63)).is_none());
    }
}

//! Keys and authenticated encryption.
//!
//! # Scheme (see `docs/format.md` and `docs/security.md`)
//!
//! * A repository has one random 64-byte **master secret**. Every working key is derived from it
//!   with BLAKE3's key-derivation mode and a fixed context string, so the secret itself is only
//!   ever used as KDF input:
//!   - the *id key* keys BLAKE3 for blob ids (storage never sees plain content hashes);
//!   - the *object key* is the root of per-object encryption keys;
//!   - the *chunker seed* perturbs FastCDC's gear table so chunk boundaries do not
//!     fingerprint content.
//! * Every stored object (pack, index, snapshot, config) carries a random 32-byte **salt**; its
//!   AES-256-GCM key is `derive_key("… object", object_key || salt)`. Within one object, nonces
//!   are a 4-byte domain and an 8-byte counter (a blob's offset in its pack), so they never
//!   repeat under one key, and keys never repeat because salts are random 256-bit values. This
//!   stays safe for any number of blobs, unlike a single key with random 96-bit nonces.
//! * The master secret is stored only wrapped: each key file encrypts it under a key derived
//!   from a password with argon2id.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};

use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::Id;

/// Size of an AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Size of per-object salts.
pub const SALT_LEN: usize = 32;

const CONTEXT_OBJECT: &str = "lifeboat 2026-11 object encryption root key";
const CONTEXT_OBJECT_KEY: &str = "lifeboat 2026-11 per-object key";

/// Nonce domains keep different uses of one object key apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum NonceDomain {
    /// A blob in a pack; the counter is its offset in the pack.
    Blob = 0,
    /// The header of a pack; the counter is 0.
    PackHeader = 1,
    /// A standalone object (index, snapshot, config); the counter is 0.
    Object = 2,
    /// The master secret in a key file; the counter is 0.
    KeyFile = 3,
}

/// The root of the per-object encryption keys, derived from the master secret.
pub struct ObjectKeys {
    object_key: Zeroizing<[u8; 32]>,
}

impl ObjectKeys {
    /// Derives the object root key from the master secret.
    pub fn from_secret(secret: &[u8; 64]) -> ObjectKeys {
        ObjectKeys {
            object_key: Zeroizing::new(blake3::derive_key(CONTEXT_OBJECT, secret)),
        }
    }

    /// The cipher of one object, from its salt.
    pub fn cipher(&self, salt: &[u8; SALT_LEN]) -> ObjectCipher {
        let mut material = Zeroizing::new([0u8; 32 + SALT_LEN]);
        material[..32].copy_from_slice(&self.object_key[..]);
        material[32..].copy_from_slice(salt);
        let mut key = blake3::derive_key(CONTEXT_OBJECT_KEY, &material[..]);
        let cipher = Aes256Gcm::new(&key.into());
        key.zeroize();
        ObjectCipher { cipher }
    }
}

/// The keys that decide how content is cut and named: the blob-id key and the chunker seed.
///
/// They are random per repository and kept in its (encrypted) config rather than derived from
/// the master secret, so that a second repository can be created with the same ones: blob ids
/// then agree, and copying between the two moves only missing blobs, while each repository
/// keeps its own encryption keys. A write-only client will need these but not the secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContentKeys {
    #[serde(with = "base64_key")]
    id_key: Zeroizing<[u8; 32]>,
    chunker_seed: u64,
}

impl std::fmt::Debug for ContentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKeys(..)")
    }
}

impl ContentKeys {
    /// Fresh random keys.
    pub fn generate() -> ContentKeys {
        let mut id_key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut id_key[..]);
        ContentKeys {
            id_key,
            chunker_seed: rand::rng().next_u64(),
        }
    }
}

mod base64_key {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(key: &Zeroizing<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&key[..]))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<[u8; 32]>, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        let bytes = Zeroizing::new(
            B64.decode(text.as_bytes())
                .map_err(serde::de::Error::custom)?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("a content key has 32 bytes"))?;
        Ok(Zeroizing::new(key))
    }
}

/// All keys of an opened repository: the master secret, the object keys derived from it, and
/// the content keys from the config.
pub struct MasterKey {
    secret: Zeroizing<[u8; 64]>,
    objects: ObjectKeys,
    content: ContentKeys,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// A fresh random 64-byte master secret.
pub fn generate_secret() -> Zeroizing<[u8; 64]> {
    let mut secret = Zeroizing::new([0u8; 64]);
    rand::rng().fill_bytes(&mut secret[..]);
    secret
}

impl MasterKey {
    /// Fresh random keys (a new repository).
    pub fn generate() -> MasterKey {
        Self::new(&generate_secret(), ContentKeys::generate())
    }

    /// Keys from a master secret and the repository's content keys.
    pub fn new(secret: &[u8; 64], content: ContentKeys) -> MasterKey {
        MasterKey {
            secret: Zeroizing::new(*secret),
            objects: ObjectKeys::from_secret(secret),
            content,
        }
    }

    /// The secret, for wrapping into key files.
    pub(crate) fn secret(&self) -> &[u8; 64] {
        &self.secret
    }

    /// The object keys.
    pub fn objects(&self) -> &ObjectKeys {
        &self.objects
    }

    /// The content keys.
    pub fn content(&self) -> &ContentKeys {
        &self.content
    }

    /// The id of a blob: keyed BLAKE3 of its plaintext.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.content.id_key, data).as_bytes())
    }

    /// The secret seed of the content-defined chunker.
    pub fn chunker_seed(&self) -> u64 {
        self.content.chunker_seed
    }

    /// The cipher of one object, from its salt.
    pub fn object_cipher(&self, salt: &[u8; SALT_LEN]) -> ObjectCipher {
        self.objects.cipher(salt)
    }
}

/// A fresh random salt.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// AES-256-GCM under one object's key.
pub struct ObjectCipher {
    cipher: Aes256Gcm,
}

/// Authentication failed: wrong key, or modified or truncated bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

fn nonce(domain: NonceDomain, counter: u64) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(domain as u32).to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

impl ObjectCipher {
    /// A cipher from a raw 32-byte key (key files use argon2id output).
    pub(crate) fn from_key(key: &[u8; 32]) -> ObjectCipher {
        ObjectCipher {
            cipher: Aes256Gcm::new(&(*key).into()),
        }
    }

    /// Encrypts `buf[start..]` in place and appends the tag.
    pub fn seal_in_place(
        &self,
        domain: NonceDomain,
        counter: u64,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) {
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(domain, counter), aad, (&mut buf[start..]).into())
            .expect("AES-GCM encrypts any message shorter than 64 GiB");
        buf.extend_from_slice(tag.as_slice());
    }

    /// Encrypts `plain` into a new vector (ciphertext followed by tag).
    pub fn seal(&self, domain: NonceDomain, counter: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plain.len() + TAG_LEN);
        buf.extend_from_slice(plain);
        self.seal_in_place(domain, counter, aad, &mut buf, 0);
        buf
    }

    /// Decrypts ciphertext-with-tag into a new vector.
    pub fn open(
        &self,
        domain: NonceDomain,
        counter: u64,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < TAG_LEN {
            return Err(AuthError);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut out = ct.to_vec();
        let tag: &[u8; TAG_LEN] = tag.try_into().expect("tag length");
        self.cipher
            .decrypt_inout_detached(
                &nonce(domain, counter),
                aad,
                out.as_mut_slice().into(),
                &(*tag).into(),
            )
            .map_err(|_| AuthError)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let key = MasterKey::generate();
        let salt = random_salt();
        let cipher = key.object_cipher(&salt);
        let sealed = cipher.seal(NonceDomain::Blob, 42, b"aad", b"hello world");
        assert_eq!(sealed.len(), 11 + TAG_LEN);
        assert_eq!(
            cipher.open(NonceDomain::Blob, 42, b"aad", &sealed).unwrap(),
            b"hello world"
        );
        // Any change of counter, domain, aad, bytes or key fails.
        assert!(cipher.open(NonceDomain::Blob, 43, b"aad", &sealed).is_err());
        assert!(
            cipher
                .open(NonceDomain::Object, 42, b"aad", &sealed)
                .is_err()
        );
        assert!(cipher.open(NonceDomain::Blob, 42, b"aab", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert!(
            cipher
                .open(NonceDomain::Blob, 42, b"aad", &flipped)
                .is_err()
        );
        assert!(
            cipher
                .open(NonceDomain::Blob, 42, b"aad", &sealed[..sealed.len() - 1])
                .is_err()
        );
        assert!(
            cipher
                .open(NonceDomain::Blob, 42, b"aad", &sealed[..3])
                .is_err()
        );
        let other = MasterKey::generate().object_cipher(&salt);
        assert!(other.open(NonceDomain::Blob, 42, b"aad", &sealed).is_err());
        let other_salt = key.object_cipher(&random_salt());
        assert!(
            other_salt
                .open(NonceDomain::Blob, 42, b"aad", &sealed)
                .is_err()
        );
    }

    #[test]
    fn ids_follow_content_keys_and_encryption_follows_the_secret() {
        let key = MasterKey::generate();
        // Same content keys, another secret: same ids and chunking, other encryption.
        let sibling = MasterKey::new(&generate_secret(), key.content().clone());
        assert_eq!(key.blob_id(b"x"), sibling.blob_id(b"x"));
        assert_eq!(key.chunker_seed(), sibling.chunker_seed());
        let salt = random_salt();
        let sealed = key
            .object_cipher(&salt)
            .seal(NonceDomain::Object, 0, b"", b"data");
        assert!(
            sibling
                .object_cipher(&salt)
                .open(NonceDomain::Object, 0, b"", &sealed)
                .is_err()
        );
        let other = MasterKey::generate();
        assert_ne!(key.blob_id(b"x"), other.blob_id(b"x"));
        // Blob ids are keyed: they are not the plain hash of the content.
        assert_ne!(key.blob_id(b"x"), Id::of_stored_bytes(b"x"));
        // Content keys survive their JSON form.
        let json = serde_json::to_string(key.content()).unwrap();
        assert_eq!(
            &serde_json::from_str::<ContentKeys>(&json).unwrap(),
            key.content()
        );
    }
}

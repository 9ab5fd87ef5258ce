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

const CONTEXT_ID: &str = "lifeboat 2026-11 blob id key";
const CONTEXT_OBJECT: &str = "lifeboat 2026-11 object encryption root key";
const CONTEXT_OBJECT_KEY: &str = "lifeboat 2026-11 per-object key";
const CONTEXT_CHUNKER: &str = "lifeboat 2026-11 chunker seed";

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

/// The repository's master secret and the keys derived from it.
pub struct MasterKey {
    secret: Zeroizing<[u8; 64]>,
    id_key: Zeroizing<[u8; 32]>,
    object_key: Zeroizing<[u8; 32]>,
    chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> MasterKey {
        let mut secret = Zeroizing::new([0u8; 64]);
        rand::rng().fill_bytes(&mut secret[..]);
        Self::from_secret(&secret)
    }

    /// Rebuilds the derived keys from a master secret.
    pub fn from_secret(secret: &[u8; 64]) -> MasterKey {
        let chunker = blake3::derive_key(CONTEXT_CHUNKER, secret);
        MasterKey {
            secret: Zeroizing::new(*secret),
            id_key: Zeroizing::new(blake3::derive_key(CONTEXT_ID, secret)),
            object_key: Zeroizing::new(blake3::derive_key(CONTEXT_OBJECT, secret)),
            chunker_seed: u64::from_le_bytes(chunker[..8].try_into().expect("8 bytes")),
        }
    }

    /// The secret, for wrapping into key files.
    pub(crate) fn secret(&self) -> &[u8; 64] {
        &self.secret
    }

    /// The id of a blob: keyed BLAKE3 of its plaintext.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The secret seed of the content-defined chunker.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// The cipher of one object, from its salt.
    pub fn object_cipher(&self, salt: &[u8; SALT_LEN]) -> ObjectCipher {
        let mut material = Zeroizing::new([0u8; 32 + SALT_LEN]);
        material[..32].copy_from_slice(&self.object_key[..]);
        material[32..].copy_from_slice(salt);
        let mut key = blake3::derive_key(CONTEXT_OBJECT_KEY, &material[..]);
        let cipher = Aes256Gcm::new(&key.into());
        key.zeroize();
        ObjectCipher { cipher }
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
    fn derived_values_depend_on_secret_only() {
        let key = MasterKey::generate();
        let again = MasterKey::from_secret(key.secret());
        assert_eq!(key.blob_id(b"x"), again.blob_id(b"x"));
        assert_eq!(key.chunker_seed(), again.chunker_seed());
        let other = MasterKey::generate();
        assert_ne!(key.blob_id(b"x"), other.blob_id(b"x"));
        // Blob ids are keyed: they are not the plain hash of the content.
        assert_ne!(key.blob_id(b"x"), Id::of_stored_bytes(b"x"));
    }
}

//! Key files: the master secret wrapped under a password.
//!
//! A key file is JSON, named by the BLAKE3 hash of its bytes under `keys/`. It holds the argon2id
//! parameters and salt, who created it and when, and the master secret encrypted with
//! AES-256-GCM under the 32-byte argon2id output. Several key files may wrap the same secret, so a
//! repository can have several passwords, and changing a password rewrites one small file, never
//! the data.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{MasterKey, NonceDomain, ObjectCipher, random_salt};
use crate::{Error, Result};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: above OWASP's minimum for argon2id (19 MiB, 2 passes), about
    /// 0.2 s on the reference machine.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only: never use them for a real repository.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn derive(&self, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password, salt, &mut out[..])
            .map_err(|e| Error::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// Key-file format version.
pub const KEY_FILE_VERSION: u32 = 1;
const KEY_AAD: &[u8] = b"lifeboat key file v1";

/// The stored form of a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version.
    pub version: u32,
    /// Always "argon2id" in version 1.
    pub kdf: String,
    /// argon2id costs.
    pub params: KdfParams,
    /// argon2id salt, base64.
    pub salt: String,
    /// Encrypted master secret with tag, base64.
    pub wrapped: String,
    /// When the key was made (RFC 3339).
    pub created: String,
    /// Host that made it.
    pub hostname: String,
    /// User that made it.
    pub username: String,
}

impl KeyFile {
    /// Wraps `key` under `password`.
    pub fn wrap(
        key: &MasterKey,
        password: &[u8],
        params: KdfParams,
        hostname: &str,
        username: &str,
    ) -> Result<KeyFile> {
        let salt = random_salt();
        let kek = params.derive(password, &salt)?;
        let wrapped =
            ObjectCipher::from_key(&kek).seal(NonceDomain::KeyFile, 0, KEY_AAD, key.secret());
        Ok(KeyFile {
            version: KEY_FILE_VERSION,
            kdf: "argon2id".to_string(),
            params,
            salt: B64.encode(salt),
            wrapped: B64.encode(wrapped),
            created: jiff::Timestamp::now().to_string(),
            hostname: hostname.to_string(),
            username: username.to_string(),
        })
    }

    /// Unwraps the master secret; `None` if the password does not open this key file.
    pub fn unwrap_secret(
        &self,
        password: &[u8],
        what: &str,
    ) -> Result<Option<Zeroizing<[u8; 64]>>> {
        if self.version > KEY_FILE_VERSION {
            return Err(Error::UnsupportedVersion {
                what: what.to_string(),
                found: self.version,
                supported: KEY_FILE_VERSION,
            });
        }
        if self.kdf != "argon2id" {
            return Err(Error::malformed(
                what,
                format!("unknown kdf {:?}", self.kdf),
            ));
        }
        let salt = B64
            .decode(&self.salt)
            .map_err(|e| Error::malformed(what, format!("salt: {e}")))?;
        let wrapped = B64
            .decode(&self.wrapped)
            .map_err(|e| Error::malformed(what, format!("wrapped key: {e}")))?;
        let kek = self.params.derive(password, &salt)?;
        let Ok(secret) =
            ObjectCipher::from_key(&kek).open(NonceDomain::KeyFile, 0, KEY_AAD, &wrapped)
        else {
            return Ok(None);
        };
        let secret = Zeroizing::new(secret);
        let secret: [u8; 64] = secret
            .as_slice()
            .try_into()
            .map_err(|_| Error::malformed(what, "master secret is not 64 bytes"))?;
        Ok(Some(Zeroizing::new(secret)))
    }

    /// Serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serialises")
    }

    /// Parses a stored key file.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<KeyFile> {
        serde_json::from_slice(bytes).map_err(|e| Error::malformed(what, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let key = MasterKey::generate();
        let file = KeyFile::wrap(
            &key,
            b"correct horse",
            KdfParams::insecure_for_tests(),
            "h",
            "u",
        )
        .unwrap();
        let parsed = KeyFile::from_bytes(&file.to_bytes(), "k").unwrap();
        let opened = parsed
            .unwrap_secret(b"correct horse", "k")
            .unwrap()
            .unwrap();
        assert_eq!(&opened[..], &key.secret()[..]);
        assert!(parsed.unwrap_secret(b"wrong", "k").unwrap().is_none());
        let mut tampered = parsed.clone();
        tampered.params.iterations += 1;
        assert!(
            tampered
                .unwrap_secret(b"correct horse", "k")
                .unwrap()
                .is_none()
        );
    }
}

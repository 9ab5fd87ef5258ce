//! Key files: the master secret wrapped under a password.
//!
//! A key file is JSON, named by the BLAKE3 hash of its bytes under `keys/`. It holds the argon2id
//! parameters and salt, who created it and when, and the master secret encrypted with
//! AES-256-GCM under the 32-byte argon2id output. Several key files may wrap the same secret, so a
//! repository can have several passwords, and changing a password rewrites one small file, never
//! the data.
//!
//! A *machine key* is a key file whose password Lifeboat generates: a token of 32 random bytes
//! (`lbk1_…`). A password a person chooses must be stretched by argon2id so that guessing it
//! from a stolen key file is slow; a 256-bit random token cannot be guessed, so stretching it
//! adds nothing but the 0.2 s that every process pays to open the repository. Machine keys are
//! for programs that start often and unattended, like PostgreSQL's `archive_command` and
//! `restore_command`, which run once per WAL file.

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
/// The `kdf` of password key files.
pub const KDF_ARGON2ID: &str = "argon2id";
/// The `kdf` of machine key files.
pub const KDF_MACHINE: &str = "machine-key";
/// What every machine-key token starts with.
pub const MACHINE_TOKEN_PREFIX: &str = "lbk1_";
const MACHINE_KEY_CONTEXT: &str = "lifeboat 2026-11 machine key v1";

/// A new machine-key token: the prefix and 32 random bytes in unpadded URL-safe base64.
pub fn generate_machine_token() -> Zeroizing<String> {
    let secret = Zeroizing::new(random_salt());
    Zeroizing::new(format!(
        "{MACHINE_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret[..])
    ))
}

/// The 32 secret bytes of a machine-key token, or `None` if `password` is not one.
pub fn parse_machine_token(password: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(password).ok()?.trim();
    let encoded = text.strip_prefix(MACHINE_TOKEN_PREFIX)?;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()?,
    );
    (bytes.len() == 32).then_some(bytes)
}

fn machine_kek(secret: &[u8], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut hasher = blake3::Hasher::new_derive_key(MACHINE_KEY_CONTEXT);
    hasher.update(secret);
    hasher.update(salt);
    Zeroizing::new(*hasher.finalize().as_bytes())
}

/// The stored form of a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version.
    pub version: u32,
    /// [`KDF_ARGON2ID`] for a password, [`KDF_MACHINE`] for a machine-key token.
    pub kdf: String,
    /// argon2id costs (zero for a machine key).
    pub params: KdfParams,
    /// Salt of the key derivation, base64.
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

    /// Wraps `key` under a machine-key `token` (see [`generate_machine_token`]).
    pub fn wrap_machine(
        key: &MasterKey,
        token: &str,
        hostname: &str,
        username: &str,
    ) -> Result<KeyFile> {
        let secret = parse_machine_token(token.as_bytes())
            .ok_or_else(|| Error::Kdf("not a machine-key token".to_string()))?;
        let salt = random_salt();
        let kek = machine_kek(&secret, &salt);
        let wrapped =
            ObjectCipher::from_key(&kek).seal(NonceDomain::KeyFile, 0, KEY_AAD, key.secret());
        Ok(KeyFile {
            version: KEY_FILE_VERSION,
            kdf: KDF_MACHINE.to_string(),
            params: KdfParams {
                memory_kib: 0,
                iterations: 0,
                parallelism: 0,
            },
            salt: B64.encode(salt),
            wrapped: B64.encode(wrapped),
            created: jiff::Timestamp::now().to_string(),
            hostname: hostname.to_string(),
            username: username.to_string(),
        })
    }

    /// Whether this is a machine key.
    pub fn is_machine(&self) -> bool {
        self.kdf == KDF_MACHINE
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
        let salt = B64
            .decode(&self.salt)
            .map_err(|e| Error::malformed(what, format!("salt: {e}")))?;
        let wrapped = B64
            .decode(&self.wrapped)
            .map_err(|e| Error::malformed(what, format!("wrapped key: {e}")))?;
        let kek = match self.kdf.as_str() {
            KDF_ARGON2ID => self.params.derive(password, &salt)?,
            // Only a token opens a machine key; anything else cannot, so is not even tried.
            KDF_MACHINE => match parse_machine_token(password) {
                Some(secret) => machine_kek(&secret, &salt),
                None => return Ok(None),
            },
            other => {
                return Err(Error::malformed(
                    what,
                    format!("unknown kdf {other:?} (written by a newer Lifeboat?)"),
                ));
            }
        };
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

    #[test]
    fn machine_keys_open_with_their_token_only() {
        let key = MasterKey::generate();
        let token = generate_machine_token();
        assert!(token.starts_with(MACHINE_TOKEN_PREFIX));
        let file = KeyFile::wrap_machine(&key, &token, "h", "u").unwrap();
        assert!(file.is_machine());
        let parsed = KeyFile::from_bytes(&file.to_bytes(), "k").unwrap();
        // A password file's trailing newline does not matter.
        let with_newline = format!("{}\n", token.as_str());
        let opened = parsed
            .unwrap_secret(with_newline.as_bytes(), "k")
            .unwrap()
            .unwrap();
        assert_eq!(&opened[..], &key.secret()[..]);

        let other = generate_machine_token();
        assert_ne!(other.as_str(), token.as_str());
        assert!(
            parsed
                .unwrap_secret(other.as_bytes(), "k")
                .unwrap()
                .is_none()
        );
        assert!(
            parsed
                .unwrap_secret(b"correct horse", "k")
                .unwrap()
                .is_none()
        );
        let mut tampered = parsed.clone();
        tampered.salt = B64.encode([7u8; 32]);
        assert!(
            tampered
                .unwrap_secret(token.as_bytes(), "k")
                .unwrap()
                .is_none()
        );
        // Made-up passwords are not tokens, so they cannot make a machine key.
        assert!(KeyFile::wrap_machine(&key, "lbk1_short", "h", "u").is_err());
        assert!(KeyFile::wrap_machine(&key, "correct horse battery", "h", "u").is_err());
    }
}

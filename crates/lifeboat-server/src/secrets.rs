//! Sealing secrets the server must be able to read back (repository passwords, TOTP secrets)
//! with AES-256-GCM under the server key.
//!
//! Format: `v1:` + base64(nonce(12) ‖ ciphertext ‖ tag). The nonce is random: the number of
//! sealed values is tiny (one per repository or user), far below the 2^32 bound for random
//! 96-bit nonces. The associated data names what the value is and which row it belongs to, so
//! a sealed value copied into another row does not open.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The server key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer from the 32-byte server key.
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer {
            cipher: Aes256Gcm::new(&(*key).into()),
        }
    }

    /// Seals `plaintext`, bound to `context` (what and which row).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::<Aes256Gcm>::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a small value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!("v1:{}", STANDARD.encode(out))
    }

    /// Opens a value sealed with [`Sealer::seal`] under the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>> {
        let bad = || Error::Unseal(context.to_owned());
        let body = sealed.strip_prefix("v1:").ok_or_else(bad)?;
        let bytes = STANDARD.decode(body).map_err(|_| bad())?;
        if bytes.len() < 12 + 16 {
            return Err(bad());
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
        self.cipher
            .decrypt(
                &Nonce::<Aes256Gcm>::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_context_and_under_their_key() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal("repository r1", b"hunter2");
        assert_eq!(&*sealer.open("repository r1", &sealed).unwrap(), b"hunter2");
        assert!(sealer.open("repository r2", &sealed).is_err());
        assert!(
            Sealer::new(&[8; 32])
                .open("repository r1", &sealed)
                .is_err()
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            sealer
                .open("repository r1", std::str::from_utf8(&tampered).unwrap())
                .is_err()
        );
    }
}
